//! Maps a Cyrus userid to the file names of its archive, index and lock (formats/archive.md
//! section 2). The mapping is one-to-one: every userid has exactly one encoding and every valid
//! encoding decodes to exactly one userid.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const ARCHIVE_SUFFIX: &str = ".tar.gz";
pub const INDEX_SUFFIX: &str = ".idx";
pub const LOCK_SUFFIX: &str = ".lock";
pub const MAX_ENCODED: usize = 200;
/// The directory below the archive directory that holds shared trees' archives.
pub const SHARED_DIR: &str = "shared";

fn kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'@')
}

pub fn encode_user(user: &str) -> Result<String> {
    if user.is_empty() {
        return Err(Error::usage("user name is empty"));
    }
    let mut out = String::with_capacity(user.len());
    for (i, &b) in user.as_bytes().iter().enumerate() {
        if kept(b) && !(i == 0 && b == b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_ENCODED {
        return Err(Error::usage(format!(
            "user name {user:?} encodes to {} bytes, more than {MAX_ENCODED}",
            out.len()
        )));
    }
    Ok(out)
}

pub fn decode_user(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex
                .iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
            {
                return None;
            }
            let b = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            // An encoded byte that did not need encoding would give a second spelling.
            if kept(b) && !(out.is_empty() && b == b'.') {
                return None;
            }
            out.push(b);
            i += 3;
        } else if kept(bytes[i]) && !(i == 0 && bytes[i] == b'.') {
            out.push(bytes[i]);
            i += 1;
        } else {
            return None;
        }
    }
    let user = String::from_utf8(out).ok()?;
    (!user.is_empty()).then_some(user)
}

/// The three files of one user's archive.
#[derive(Clone, Debug)]
pub struct ArchivePaths {
    pub archive: PathBuf,
    pub index: PathBuf,
    pub lock: PathBuf,
    /// The userid, when the archive's file name decodes to one.
    pub user: Option<String>,
}

impl ArchivePaths {
    pub fn for_user(dir: &Path, user: &str) -> Result<ArchivePaths> {
        Ok(ArchivePaths::named(
            dir,
            &encode_user(user)?,
            Some(user.to_string()),
        ))
    }

    /// The three files named `<stem>.tar.gz`, `<stem>.idx` and `<stem>.lock` in `dir`.
    fn named(dir: &Path, stem: &str, user: Option<String>) -> ArchivePaths {
        ArchivePaths {
            archive: dir.join(format!("{stem}{ARCHIVE_SUFFIX}")),
            index: dir.join(format!("{stem}{INDEX_SUFFIX}")),
            lock: dir.join(format!("{stem}{LOCK_SUFFIX}")),
            user,
        }
    }

    /// The three files of a shared tree's archive, in the `shared/` directory below `dir`
    /// (formats/backup-entries.md, "Shared mailboxes"): apart from every user's, whatever the
    /// names. `user` stays `None`: the archive is no user's.
    pub fn for_shared(dir: &Path, tree: &str) -> Result<ArchivePaths> {
        Ok(ArchivePaths::named(
            &dir.join(SHARED_DIR),
            &encode_user(tree)?,
            None,
        ))
    }

    /// The archive of a user or of a shared tree.
    pub fn for_owner(dir: &Path, owner: &crate::spool::Owner) -> Result<ArchivePaths> {
        match owner {
            crate::spool::Owner::User(user) => ArchivePaths::for_user(dir, user),
            crate::spool::Owner::Shared(tree) => ArchivePaths::for_shared(dir, tree),
            // Named as is, not encoded: no user's or tree's name encodes to it.
            crate::spool::Owner::Server => Ok(ArchivePaths::named(
                &dir.join(SHARED_DIR),
                crate::spool::SERVER_OWNER,
                None,
            )),
        }
    }

    /// The paths for an archive file named directly on the command line.
    pub fn for_archive_file(path: &Path) -> Result<ArchivePaths> {
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            Error::usage(format!("{} is not an archive file name", path.display()))
        })?;
        let stem = name.strip_suffix(ARCHIVE_SUFFIX).ok_or_else(|| {
            Error::usage(format!(
                "{} does not end in {ARCHIVE_SUFFIX}",
                path.display()
            ))
        })?;
        Ok(ArchivePaths::named(
            &crate::io::parent_dir(path),
            stem,
            decode_user(stem),
        ))
    }

    pub fn dir(&self) -> PathBuf {
        crate::io::parent_dir(&self.archive)
    }
}

/// Every archive in `dir`, sorted by file name.
pub fn list_archives(dir: &Path) -> Result<Vec<ArchivePaths>> {
    let mut out = Vec::new();
    let read = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in read {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(ARCHIVE_SUFFIX) {
            out.push(ArchivePaths::for_archive_file(&entry.path())?);
        }
    }
    out.sort_by(|a, b| a.archive.cmp(&b.archive));
    Ok(out)
}

/// An archive and who it belongs to (`None`: a name that decodes to no userid).
pub type OwnedArchive = (Option<crate::spool::Owner>, ArchivePaths);

/// Every archive of the archive directory `dir` with its owner: the users' in `dir`, the shared
/// trees' and the server's in `dir/shared/` (formats/backup-entries.md, "Shared mailboxes"),
/// each group sorted by file name; and a notice for each `*.tar.gz` that is not mailpack's. The
/// owner is `None` for an archive in `dir` whose name decodes to no userid (named by hand).
pub fn list_owner_archives(dir: &Path) -> Result<(Vec<OwnedArchive>, Vec<String>)> {
    list_owner_archives_checking(dir, &|_| true)
}

/// As `list_owner_archives`, opening to check only the archives of the owners `check` picks
/// (and those named by hand): a backup opens the archive of each owner it backs up anyway, and
/// reports a foreign file there as that owner's failure, so it checks only the others instead
/// of opening 20,000 files twice.
pub fn list_owner_archives_checking(
    dir: &Path,
    check: &dyn Fn(&crate::spool::Owner) -> bool,
) -> Result<(Vec<OwnedArchive>, Vec<String>)> {
    use crate::spool::Owner;
    let (users, mut skipped) = list_own_archives_checking(dir, &|p| {
        p.user.clone().is_none_or(|u| check(&Owner::User(u)))
    })?;
    let mut out: Vec<OwnedArchive> = users
        .into_iter()
        .map(|p| (p.user.clone().map(Owner::User), p))
        .collect();
    let shared = dir.join(SHARED_DIR);
    if shared.is_dir() {
        let server_stem = format!("{}{ARCHIVE_SUFFIX}", crate::spool::SERVER_OWNER);
        let (trees, more) = list_own_archives_checking(&shared, &|p| {
            let stem = p.archive.file_name().and_then(|n| n.to_str());
            match (&p.user, stem) {
                (_, Some(stem)) if stem == server_stem => check(&Owner::Server),
                (Some(tree), _) => check(&Owner::Shared(tree.clone())),
                (None, _) => true,
            }
        })?;
        skipped.extend(more);
        for p in trees {
            let stem = p
                .archive
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            // A tree's file name decodes as a userid's would, to the tree's name; the server's
            // is no encoding at all.
            let owner = if stem == format!("{}{ARCHIVE_SUFFIX}", crate::spool::SERVER_OWNER) {
                Owner::Server
            } else {
                match p.user.clone() {
                    Some(tree) => Owner::Shared(tree),
                    None => continue,
                }
            };
            out.push((Some(owner), ArchivePaths { user: None, ..p }));
        }
    }
    Ok((out, skipped))
}

/// Every archive in `dir` that begins as a mailpack archive does (or is empty), sorted by file
/// name, and a notice for each `*.tar.gz` that does not: another program's file, a symlink, or
/// anything but a regular file is skipped, never opened as an archive.
pub fn list_own_archives(dir: &Path) -> Result<(Vec<ArchivePaths>, Vec<String>)> {
    list_own_archives_checking(dir, &|_| true)
}

fn list_own_archives_checking(
    dir: &Path,
    check: &dyn Fn(&ArchivePaths) -> bool,
) -> Result<(Vec<ArchivePaths>, Vec<String>)> {
    let mut own = Vec::new();
    let mut skipped = Vec::new();
    for paths in list_archives(dir)? {
        if !check(&paths) {
            own.push(paths);
            continue;
        }
        let opened = super::ArchiveHandle::open(&paths.archive)
            .and_then(|source| super::open::check_signature(&source, source.len()?));
        match opened {
            Ok(()) => own.push(paths),
            Err(e @ (Error::Foreign { .. } | Error::NotFound(_))) => {
                skipped.push(format!("skipped: {e}"))
            }
            // Damage is the archive's to report: keep it in the list.
            Err(_) => own.push(paths),
        }
    }
    Ok((own, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_tree_never_shares_a_file_with_a_user_of_the_same_name() {
        let dir = Path::new("/a");
        for name in ["support", "shared", "Announcements@example.com"] {
            let user = ArchivePaths::for_user(dir, name).unwrap();
            let tree = ArchivePaths::for_shared(dir, name).unwrap();
            for (u, t) in [
                (&user.archive, &tree.archive),
                (&user.index, &tree.index),
                (&user.lock, &tree.lock),
            ] {
                assert_ne!(u, t);
                assert_eq!(t.parent().unwrap(), dir.join(SHARED_DIR));
            }
            assert_eq!(tree.user, None);
        }
        // The user named like the directory has a file beside it, not inside it.
        let shared_user = ArchivePaths::for_user(dir, SHARED_DIR).unwrap();
        assert_eq!(shared_user.archive, dir.join("shared.tar.gz"));
    }

    #[test]
    fn examples_from_the_spec() {
        for (user, enc) in [
            ("jane.doe@example.com", "jane.doe@example.com"),
            ("josé", "jos%C3%A9"),
            (".x", "%2Ex"),
            ("a/b", "a%2Fb"),
            ("100%", "100%25"),
            ("..", "%2E."),
        ] {
            assert_eq!(encode_user(user).unwrap(), enc);
            assert_eq!(decode_user(enc).as_deref(), Some(user));
        }
    }

    #[test]
    fn every_userid_has_one_spelling() {
        for bad in ["", "%61", "%2e", "%2", "a%zz", "/", "%C3", ".x", "a b"] {
            assert_eq!(decode_user(bad), None, "{bad:?} decoded");
        }
        assert!(encode_user("").is_err());
        assert!(encode_user(&"é".repeat(40)).is_err());
    }

    #[test]
    fn round_trip_of_awkward_names() {
        for user in [
            "user^with^carets",
            "über.müller@exämple.org",
            "%%",
            "tab\there",
            "日本",
        ] {
            let enc = encode_user(user).unwrap();
            assert!(enc.bytes().all(|b| kept(b) || b == b'%'));
            assert_eq!(decode_user(&enc).as_deref(), Some(user));
        }
    }
}
