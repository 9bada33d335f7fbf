//! Object names in a bucket (formats/offsite.md section 2): one directory per owner, and in it
//! manifests (`m/`), data objects (`d/<generation>/`) and index objects (`i/<generation>/`).
//! Every name carries a random push id, so an upload never replaces an object a manifest names.

use crate::error::Result;
use crate::spool::Owner;
use crate::store::{decode_user, encode_user};

const USERS: &str = "users/";
const SHARED: &str = "shared/";
const SERVER: &str = "server";
pub const AGE_SUFFIX: &str = ".age";
const MANIFEST_SUFFIX: &str = ".mpm";

/// The owner's directory below the target's prefix, without a trailing `/`.
pub fn owner_dir(owner: &Owner) -> Result<String> {
    // `%` is reserved by object stores; `=` never appears in the file-name encoding.
    let enc = |name: &str| encode_user(name).map(|e| e.replace('%', "="));
    Ok(match owner {
        Owner::User(user) => format!("{USERS}{}", enc(user)?),
        Owner::Shared(tree) => format!("{SHARED}{}", enc(tree)?),
        Owner::Server => SERVER.to_string(),
    })
}

/// The owner whose directory `dir` is, if it is one.
pub fn owner_of_dir(dir: &str) -> Option<Owner> {
    let dec = |enc: &str| {
        if enc.contains('%') {
            return None;
        }
        decode_user(&enc.replace('=', "%"))
    };
    if dir == SERVER {
        Some(Owner::Server)
    } else if let Some(enc) = dir.strip_prefix(USERS) {
        dec(enc).map(Owner::User)
    } else if let Some(enc) = dir.strip_prefix(SHARED) {
        dec(enc).map(Owner::Shared)
    } else {
        None
    }
}

pub fn manifest_dir(owner_dir: &str) -> String {
    format!("{owner_dir}/m/")
}

/// The manifest of push number `seq`, relative to the owner's directory.
pub fn manifest_name(seq: u64, push: &str) -> String {
    format!("m/{seq:020}-{push}{MANIFEST_SUFFIX}")
}

/// The push number of a manifest's name (relative to the owner's directory).
pub fn manifest_seq(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("m/")?.strip_suffix(MANIFEST_SUFFIX)?;
    let (seq, push) = rest.split_once('-')?;
    (seq.len() == 20 && is_id(push)).then_some(())?;
    seq.parse().ok()
}

/// A data (`d`) or index (`i`) object of a generation, relative to the owner's directory.
pub fn piece_name(
    kind: char,
    generation: &str,
    range: std::ops::Range<u64>,
    push: &str,
    encrypted: bool,
) -> String {
    let suffix = if encrypted { AGE_SUFFIX } else { "" };
    format!(
        "{kind}/{generation}/{:016x}-{:016x}-{push}{suffix}",
        range.start, range.end
    )
}

/// 32 hex digits from the kernel's random source: generation and push ids.
pub fn new_id() -> Result<String> {
    let id = crate::io::random_id()?;
    Ok(id.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_directories_round_trip() {
        for owner in [
            Owner::User("jane.doe@example.com".into()),
            Owner::User("josé".into()),
            Owner::User("100%".into()),
            Owner::Shared("support".into()),
            Owner::Server,
        ] {
            let dir = owner_dir(&owner).unwrap();
            assert!(!dir.contains('%'), "{dir}");
            assert_eq!(owner_of_dir(&dir), Some(owner.clone()));
        }
        assert_eq!(owner_of_dir("users/a%41"), None);
        assert_eq!(owner_of_dir("elsewhere/a"), None);
    }

    #[test]
    fn manifest_names_carry_their_number() {
        let push = "0123456789abcdef0123456789abcdef";
        let name = manifest_name(42, push);
        assert_eq!(manifest_seq(&name), Some(42));
        assert_eq!(manifest_seq("m/42-x.mpm"), None);
        assert_eq!(manifest_seq(&name.replace(".mpm", "")), None);
    }
}
