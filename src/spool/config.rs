//! `imapd.conf`: the settings mailpack needs to find a Cyrus server's files (formats/cyrus.md,
//! "Configuration"). Parsed as Cyrus's libconfig does: `key: value` lines, `#` comments,
//! `@include: file`, relative paths resolved against the including file's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const DEFAULT_CONFIG: &str = "/etc/imapd.conf";
/// imapd.conf files larger than this are refused rather than read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// `@include` nesting allowed before assuming a loop.
const MAX_INCLUDE_DEPTH: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtDomains {
    Off,
    UserId,
    On,
}

/// The server settings mailpack reads; everything else stays in `raw`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Config {
    pub path: PathBuf,
    pub configdirectory: PathBuf,
    /// `partition-<name>`: where each partition's mailbox directories live.
    pub partitions: BTreeMap<String, PathBuf>,
    /// `metapartition-<name>`: where the metadata files listed in `metapartition_files` live.
    pub metapartitions: BTreeMap<String, PathBuf>,
    /// `archivepartition-<name>`: where archived message files live.
    pub archivepartitions: BTreeMap<String, PathBuf>,
    pub metapartition_files: Vec<String>,
    pub mboxname_lockpath: PathBuf,
    pub sievedir: PathBuf,
    pub hashimapspool: bool,
    pub fulldirhash: bool,
    pub virtdomains: VirtDomains,
    pub defaultdomain: Option<String>,
    pub unixhierarchysep: bool,
    pub altnamespace: bool,
    pub mailbox_legacy_dirs: bool,
    pub deletedprefix: String,
    /// Every key as written (after includes), lower-cased keys.
    pub raw: BTreeMap<String, String>,
}

impl Config {
    pub fn read(path: &Path) -> Result<Config> {
        let mut raw = BTreeMap::new();
        read_into(path, &mut raw, 0)?;
        Config::from_raw(path, raw)
    }

    /// Builds the settings from parsed keys; relative paths resolve against `path`'s folder.
    pub fn from_raw(path: &Path, raw: BTreeMap<String, String>) -> Result<Config> {
        let base = crate::io::parent_dir(path);
        let resolve = |v: &str| -> PathBuf {
            let p = Path::new(v);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                normalize(&base.join(p))
            }
        };
        let get = |k: &str| raw.get(k).map(|s| s.as_str());
        let flag = |k: &str, default: bool| -> Result<bool> {
            match get(k) {
                None => Ok(default),
                Some(v) => parse_bool(v).ok_or_else(|| {
                    Error::config(path, format!("{k}: {v:?} is not a yes/no value"))
                }),
            }
        };
        let configdirectory = get("configdirectory")
            .map(resolve)
            .ok_or_else(|| Error::config(path, "configdirectory is not set"))?;
        let prefixed = |prefix: &str| -> BTreeMap<String, PathBuf> {
            raw.iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), resolve(v))))
                .filter(|(name, _)| !name.is_empty())
                .collect()
        };
        let partitions = prefixed("partition-");
        if partitions.is_empty() {
            return Err(Error::config(path, "no partition-<name> is set"));
        }
        let virtdomains = match get("virtdomains").map(|v| v.to_ascii_lowercase()) {
            None => VirtDomains::Off,
            Some(v) if v == "userid" => VirtDomains::UserId,
            Some(v) => match parse_bool(&v) {
                Some(true) => VirtDomains::On,
                Some(false) => VirtDomains::Off,
                None => {
                    return Err(Error::config(
                        path,
                        format!("virtdomains: {v:?} is not off, userid or on"),
                    ))
                }
            },
        };
        Ok(Config {
            path: path.to_path_buf(),
            mboxname_lockpath: get("mboxname_lockpath")
                .map(resolve)
                .unwrap_or_else(|| configdirectory.join("lock")),
            sievedir: get("sievedir")
                .map(resolve)
                .unwrap_or_else(|| PathBuf::from("/usr/sieve")),
            configdirectory,
            metapartitions: prefixed("metapartition-"),
            archivepartitions: prefixed("archivepartition-"),
            partitions,
            metapartition_files: get("metapartition_files")
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            // 3.6's built-in defaults; Debian's shipped imapd.conf overrides several.
            hashimapspool: flag("hashimapspool", false)?,
            fulldirhash: flag("fulldirhash", false)?,
            virtdomains,
            defaultdomain: get("defaultdomain")
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            unixhierarchysep: flag("unixhierarchysep", true)?,
            altnamespace: flag("altnamespace", true)?,
            mailbox_legacy_dirs: flag("mailbox_legacy_dirs", false)?,
            deletedprefix: get("deletedprefix").unwrap_or("DELETED").to_string(),
            raw,
        })
    }

    /// The directory a metadata file of `kind` (`header`, `index`, `annotations`, ...) lives
    /// under for `partition`: the metapartition if that kind is listed in
    /// `metapartition_files`, else the data partition.
    pub fn meta_root(&self, partition: &str, kind: &str) -> Option<&Path> {
        if self.metapartition_files.iter().any(|f| f == kind) {
            if let Some(p) = self.metapartitions.get(partition) {
                return Some(p);
            }
        }
        self.partitions.get(partition).map(PathBuf::as_path)
    }
}

/// Removes `.` and `..` components without touching the disk (the paths need not exist yet).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Cyrus's boolean spellings (libconfig `config_parsebool`-compatible).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "on" | "true" | "t" => Some(true),
        "0" | "no" | "n" | "off" | "false" | "f" => Some(false),
        _ => None,
    }
}

fn read_into(path: &Path, raw: &mut BTreeMap<String, String>, depth: usize) -> Result<()> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(Error::config(path, "@include nested too deeply"));
    }
    // Without blocking and regular files only: a FIFO given as --config must not hang the run.
    let (file, meta) =
        super::file::open(path, false, super::file::Follow::Yes)?.ok_or_else(|| {
            Error::io(
                "open",
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(Error::config(
            path,
            format!("{} bytes is too large for imapd.conf", meta.len()),
        ));
    }
    let cap = super::file::Cap {
        name: "MAX_CONFIG_BYTES",
        bytes: MAX_CONFIG_BYTES,
    };
    let bytes = super::file::read_capped(&file, path, meta.len(), cap)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut offset = 0u64;
    for line in text.split_inclusive('\n') {
        let at = offset;
        offset += line.len() as u64;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(Error::corrupt(
                path,
                at,
                format!("line {line:?} has no ':'"),
            ));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().to_string();
        if key == "@include" {
            let included = {
                let p = Path::new(&value);
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    crate::io::parent_dir(path).join(p)
                }
            };
            read_into(&included, raw, depth + 1)?;
            continue;
        }
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::corrupt(
                path,
                at,
                format!("{key:?} is not an option name"),
            ));
        }
        raw.insert(key, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let dir = std::env::temp_dir().join(format!(
            "mailpack-conf-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("imapd.conf");
        std::fs::write(&path, text).unwrap();
        std::fs::write(
            dir.join("extra.conf"),
            "partition-second: spool2\nhashimapspool: yes\n",
        )
        .unwrap();
        let c = Config::read(&path);
        let _ = std::fs::remove_dir_all(&dir);
        c
    }

    #[test]
    fn keys_defaults_includes_and_relative_paths() {
        let c = parse(
            "# test\nconfigdirectory: /var/lib/cyrus\npartition-default: /var/spool/cyrus/mail\n\
             MetaPartition-default: meta\nmetapartition_files: header index\n@include: extra.conf\n\
             virtdomains: userid\nunixhierarchysep: no\n",
        )
        .unwrap();
        assert_eq!(c.configdirectory, PathBuf::from("/var/lib/cyrus"));
        assert_eq!(c.mboxname_lockpath, PathBuf::from("/var/lib/cyrus/lock"));
        assert_eq!(c.partitions.len(), 2);
        assert!(c.partitions["second"].ends_with("spool2") && c.partitions["second"].is_absolute());
        assert!(c.metapartitions["default"].ends_with("meta"));
        assert!(c.hashimapspool && !c.unixhierarchysep && c.altnamespace);
        assert_eq!(c.virtdomains, VirtDomains::UserId);
        assert_eq!(
            c.meta_root("default", "index").unwrap(),
            c.metapartitions["default"]
        );
        assert_eq!(
            c.meta_root("default", "annotations").unwrap(),
            Path::new("/var/spool/cyrus/mail")
        );
        assert_eq!(c.sievedir, PathBuf::from("/usr/sieve"));
    }

    #[test]
    fn bad_files_are_named_with_their_offset() {
        let e = parse("configdirectory: /x\npartition-default: /y\nnot a setting\n").unwrap_err();
        assert!(e.to_string().contains("at byte 42"), "{e}");
        assert!(parse("partition-default: /y\n")
            .unwrap_err()
            .to_string()
            .contains("configdirectory"));
        assert!(parse("configdirectory: /x\n")
            .unwrap_err()
            .to_string()
            .contains("partition"));
        assert!(parse("configdirectory: /x\npartition-a: /y\nhashimapspool: maybe\n").is_err());
    }
}
