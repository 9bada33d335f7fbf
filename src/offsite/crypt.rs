//! age encryption of pushed objects (formats/offsite.md section 5): X25519 recipients for the
//! backup host, which never needs the identity; identities for readers. Reading one member of
//! an encrypted object goes through age's seekable stream reader over ranged GETs
//! (`remote.rs`), which authenticates every 64 KiB chunk it decrypts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The most recipients one push encrypts to: each adds a stanza to every object's header.
const MAX_RECIPIENTS: usize = 64;
/// The largest recipients or identity file read.
const MAX_KEY_FILE: u64 = 1 << 20;

/// Who pushed objects are encrypted to.
pub struct Recipients {
    list: Vec<Box<dyn age::Recipient + Send + Sync>>,
    /// SHA-256 (hex) of the sorted recipient strings: a change of recipients starts a new
    /// generation, so no generation mixes objects readable by different identities.
    fingerprint: String,
}

impl Recipients {
    /// From `--recipient` values and `--recipients-file` files (one recipient per line, `#`
    /// comments and blank lines ignored). `None` when neither names any.
    pub fn parse(values: &[String], files: &[PathBuf]) -> Result<Option<Recipients>> {
        let mut texts: Vec<String> = values.iter().map(|v| v.trim().to_string()).collect();
        for file in files {
            let text = read_small(file)?;
            texts.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
            if texts.is_empty() {
                return Err(Error::config(file, "names no age recipient"));
            }
        }
        if texts.is_empty() {
            return Ok(None);
        }
        if texts.len() > MAX_RECIPIENTS {
            return Err(Error::usage(format!(
                "{} recipients; at most {MAX_RECIPIENTS}",
                texts.len()
            )));
        }
        let mut list = Vec::with_capacity(texts.len());
        for t in &texts {
            list.push(parse_recipient(t)?);
        }
        texts.sort();
        texts.dedup();
        let fingerprint = hex(&Sha256::digest(texts.join("\n").as_bytes()));
        Ok(Some(Recipients { list, fingerprint }))
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A writer that encrypts what it is given into `out`; `finish` writes the last chunk.
    pub fn encrypt_into<W: Write>(&self, out: W) -> Result<age::stream::StreamWriter<W>> {
        let encryptor = age::Encryptor::with_recipients(
            self.list.iter().map(|r| r.as_ref() as &dyn age::Recipient),
        )
        .map_err(|e| Error::refused(format!("age encryption: {e}")))?;
        encryptor
            .wrap_output(out)
            .map_err(|e| Error::refused(format!("age encryption: {e}")))
    }
}

/// An X25519 recipient (`age1…`, what the issue asks for and what every age tool reads), or a
/// post-quantum one (`age1pq1…`) for sites that already use them.
fn parse_recipient(text: &str) -> Result<Box<dyn age::Recipient + Send + Sync>> {
    // age 0.13 marks X25519 deprecated in favour of its post-quantum recipients; they remain
    // the format's standard recipient and the only kind the Debian `age` tool decrypts.
    #[allow(deprecated)]
    if let Ok(r) = age::x25519::Recipient::from_str(text) {
        return Ok(Box::new(r));
    }
    if let Ok(r) = age::pq::Recipient::from_str(text) {
        return Ok(Box::new(r));
    }
    Err(Error::usage(format!(
        "{text:?} is not an age recipient (age1…); ssh and plugin recipients are not supported"
    )))
}

/// What decrypts pushed objects: the identities of an age identity file.
pub struct Identities {
    list: Vec<Box<dyn age::Identity + Send + Sync>>,
    path: PathBuf,
}

impl Identities {
    pub fn load(path: &Path) -> Result<Identities> {
        let text = read_small(path)?;
        let file = age::IdentityFile::from_buffer(text.as_bytes())
            .map_err(|e| Error::config(path, format!("not an age identity file: {e}")))?;
        let list = file
            .into_identities()
            .map_err(|e| Error::config(path, format!("unusable age identity: {e}")))?;
        if list.is_empty() {
            return Err(Error::config(path, "holds no age identity"));
        }
        Ok(Identities {
            list,
            path: path.to_path_buf(),
        })
    }

    /// A reader of the plaintext of the age file `input`. With a seekable input the reader
    /// seeks too, fetching only the chunks it needs.
    pub fn decrypt<R: Read>(
        &self,
        input: R,
        location: &str,
    ) -> Result<age::stream::StreamReader<R>> {
        let decryptor = age::Decryptor::new(input)
            .map_err(|e| Error::corrupt(location, 0, format!("not a readable age file: {e}")))?;
        decryptor
            .decrypt(self.list.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => Error::refused(format!(
                    "{location}: none of the identities in {} can decrypt it",
                    self.path.display()
                )),
                e => Error::corrupt(location, 0, format!("age header: {e}")),
            })
    }
}

fn read_small(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io("read", path, e))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(Error::config(path, "larger than a key file may be (1 MiB)"));
    }
    Ok(text)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_one_recipient_encrypts_only_its_identity_decrypts() {
        let dir = std::env::temp_dir().join(format!("mp-crypt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        #[allow(deprecated)] // X25519 is what the issue asks for
        let secret = age::x25519::Identity::generate();
        #[allow(deprecated)]
        let other = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let id_file = dir.join("id");
        std::fs::write(&id_file, secret.to_string().expose_secret()).unwrap();
        let other_file = dir.join("other");
        std::fs::write(&other_file, other.to_string().expose_secret()).unwrap();
        let recipients = Recipients::parse(&[secret.to_public().to_string()], &[])
            .unwrap()
            .unwrap();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut sealed = Vec::new();
        let mut w = recipients.encrypt_into(&mut sealed).unwrap();
        w.write_all(&plain).unwrap();
        w.finish().unwrap();
        assert!(!sealed.windows(64).any(|w| w == &plain[1000..1064]));

        let ids = Identities::load(&id_file).unwrap();
        let mut back = Vec::new();
        ids.decrypt(&sealed[..], "x")
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, plain);
        let wrong = Identities::load(&other_file).unwrap();
        assert!(matches!(
            wrong.decrypt(&sealed[..], "x"),
            Err(Error::Refused(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[allow(deprecated)] // X25519 recipients are what the issue asks for
    fn recipients_are_checked_and_fingerprinted_in_any_order() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = age::x25519::Identity::generate().to_public().to_string();
        let ab = Recipients::parse(&[a.clone(), b.clone()], &[])
            .unwrap()
            .unwrap();
        let ba = Recipients::parse(&[b, a], &[]).unwrap().unwrap();
        assert_eq!(ab.fingerprint(), ba.fingerprint());
        assert!(Recipients::parse(&["ssh-ed25519 AAAA".into()], &[]).is_err());
        assert!(Recipients::parse(&[], &[]).unwrap().is_none());
    }
}
