//! mailpack's own pax records, the `MAILPACK.*` keys of formats/archive.md section 3.2: which
//! ones an entry carries, how each value is written, and how a reader takes them back. The
//! writer and the scanner both go through this file, so a key or a value format changes here
//! only. The generic pax record framing (`<len> <key>=<value>\n`) and the standard keys
//! (`path`, `linkpath`, `size`) are tar.rs's.

use super::FILES_DIR;
use crate::guid::Guid;
use crate::io::SourceStat;

/// The prefix every mailpack key carries; readers ignore keys under it that they do not know.
pub const PAX_PREFIX: &str = "MAILPACK.";

/// What mailpack's pax records say about an entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PaxMeta {
    /// The run that wrote the entry (`MAILPACK.run`).
    pub run: Option<u64>,
    /// The SHA-1 of the data (`MAILPACK.sha1`), on files outside `files/`.
    pub sha1: Option<Guid>,
    /// The source file's stat at copy time (the five stat keys, all or none).
    pub stat: Option<SourceStat>,
}

impl PaxMeta {
    /// The records an entry named `name` gets when run `run` writes it (section 3.2). A message
    /// file is named by its SHA-1, so it carries none, and without a stat it carries no pax
    /// header at all; every other entry records its run, and a file its SHA-1.
    pub fn for_entry(name: &str, run: u64, sha1: Option<Guid>, stat: Option<SourceStat>) -> Self {
        let is_message = name.starts_with(FILES_DIR);
        if is_message && stat.is_none() {
            return PaxMeta::default();
        }
        PaxMeta {
            run: Some(run),
            sha1: if is_message { None } else { sha1 },
            stat,
        }
    }

    /// The records of a commit marker: its run only (section 4).
    pub fn for_marker(run: u64) -> Self {
        PaxMeta {
            run: Some(run),
            ..PaxMeta::default()
        }
    }

    /// The records in the order the writer has always put them.
    pub fn encode(&self) -> Vec<(String, String)> {
        let mut records = Vec::new();
        let mut push =
            |key: &str, value: String| records.push((format!("{PAX_PREFIX}{key}"), value));
        if let Some(run) = self.run {
            push("run", run.to_string());
        }
        if let Some(sha1) = self.sha1 {
            push("sha1", sha1.to_string());
        }
        if let Some(s) = self.stat {
            push("dev", s.dev.to_string());
            push("ino", s.ino.to_string());
            push("size", s.size.to_string());
            push("mtime", encode_time(s.mtime_ns));
            push("ctime", encode_time(s.ctime_ns));
        }
        records
    }

    /// Takes mailpack's keys out of an entry's pax records, ignoring every other key. The error
    /// is the damage detail: the records are already split, so there is no byte offset to give.
    pub fn decode(records: &[(String, String)]) -> Result<PaxMeta, String> {
        let mut meta = PaxMeta::default();
        let mut stat = SourceStat::default();
        let mut stat_fields = 0;
        for (k, v) in records {
            let Some(key) = k.strip_prefix(PAX_PREFIX) else {
                continue;
            };
            let bad = || format!("pax record {k}={v:?} is malformed");
            match key {
                "run" => meta.run = Some(v.parse().map_err(|_| bad())?),
                "sha1" => meta.sha1 = Some(v.parse().map_err(|_| bad())?),
                "dev" => (stat.dev, stat_fields) = (v.parse().map_err(|_| bad())?, stat_fields + 1),
                "ino" => (stat.ino, stat_fields) = (v.parse().map_err(|_| bad())?, stat_fields + 1),
                "size" => {
                    (stat.size, stat_fields) = (v.parse().map_err(|_| bad())?, stat_fields + 1)
                }
                "mtime" => {
                    (stat.mtime_ns, stat_fields) =
                        (decode_time(v).ok_or_else(bad)?, stat_fields + 1)
                }
                "ctime" => {
                    (stat.ctime_ns, stat_fields) =
                        (decode_time(v).ok_or_else(bad)?, stat_fields + 1)
                }
                _ => {}
            }
        }
        match stat_fields {
            0 => {}
            5 => meta.stat = Some(stat),
            _ => return Err("incomplete MAILPACK source stat records".into()),
        }
        Ok(meta)
    }
}

/// Nanoseconds since the epoch as `<seconds>.<9 digits>`, negative times with a leading `-`.
fn encode_time(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let abs = ns.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// The inverse of `encode_time`; anything else (fewer digits, no point) is `None`.
fn decode_time(v: &str) -> Option<i64> {
    let (secs, nanos) = v.split_once('.')?;
    if nanos.len() != 9 {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let nanos: i64 = nanos.parse().ok()?;
    secs.checked_mul(1_000_000_000)?
        .checked_add(if secs < 0 { -nanos } else { nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for ns in [0, 1, 1_700_000_000_123_456_789, -5_000_000_001] {
            assert_eq!(decode_time(&encode_time(ns)), Some(ns));
        }
        assert_eq!(decode_time("12.5"), None);
    }

    #[test]
    fn records_round_trip() {
        let stat = SourceStat {
            dev: 2049,
            ino: 1_234_567,
            size: 4096,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: -5_000_000_001,
        };
        let sha1 = Guid::of(b"cyrus.index bytes");
        for meta in [
            PaxMeta::for_entry("folders/abc/cyrus.index", 7, Some(sha1), Some(stat)),
            PaxMeta::for_entry("folders/abc/cyrus.index", 7, Some(sha1), None),
            PaxMeta::for_entry("imap/INBOX", 3, None, None),
            PaxMeta::for_entry(&format!("{FILES_DIR}{sha1}"), 9, Some(sha1), Some(stat)),
            PaxMeta::for_marker(12),
            PaxMeta::default(),
        ] {
            assert_eq!(PaxMeta::decode(&meta.encode()), Ok(meta));
        }
    }

    #[test]
    fn records_are_written_as_the_spec_says() {
        let stat = SourceStat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4_000_000_005,
            ctime_ns: 6,
        };
        let sha1 = Guid::of(b"x");
        let message = format!("{FILES_DIR}{sha1}");
        assert!(PaxMeta::for_entry(&message, 1, Some(sha1), None)
            .encode()
            .is_empty());
        let written: Vec<(String, String)> =
            PaxMeta::for_entry(&message, 5, Some(sha1), Some(stat)).encode();
        let expected = [
            ("MAILPACK.run", "5"),
            ("MAILPACK.dev", "1"),
            ("MAILPACK.ino", "2"),
            ("MAILPACK.size", "3"),
            ("MAILPACK.mtime", "4.000000005"),
            ("MAILPACK.ctime", "0.000000006"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(written, expected);
        assert_eq!(
            PaxMeta::for_entry("meta/seen", 5, Some(sha1), None).encode(),
            vec![
                ("MAILPACK.run".to_string(), "5".to_string()),
                ("MAILPACK.sha1".to_string(), sha1.to_string()),
            ]
        );
    }

    #[test]
    fn malformed_records_are_named_and_unknown_keys_ignored() {
        let records = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            PaxMeta::decode(&records(&[("MAILPACK.run", "x")])),
            Err("pax record MAILPACK.run=\"x\" is malformed".to_string())
        );
        assert_eq!(
            PaxMeta::decode(&records(&[("MAILPACK.mtime", "12.5")])),
            Err("pax record MAILPACK.mtime=\"12.5\" is malformed".to_string())
        );
        assert_eq!(
            PaxMeta::decode(&records(&[("MAILPACK.dev", "1")])),
            Err("incomplete MAILPACK source stat records".to_string())
        );
        assert_eq!(
            PaxMeta::decode(&records(&[("path", "a"), ("MAILPACK.future", "?")])),
            Ok(PaxMeta::default())
        );
    }
}
