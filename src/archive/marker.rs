//! The commit marker `runs/<n>` of formats/archive.md section 4: its name, the `key=value` lines
//! of its body, and the entry that carries them, written and read in this one file. The writer
//! decides when a run is committed and the scanner decides whether a marker stands alone in its
//! member; what the bytes say is settled here.

use super::pax::PaxMeta;
use super::tar::{encode_headers, padded, HeaderSpec};
use super::{EntryKind, MAX_MARKER, RUNS_DIR};
use crate::error::{Error, ParseError, Result};

/// The first line of every marker; a reader refuses any other.
pub const MARKER_FORMAT: &str = "mailpack-archive 1";

/// What the commit marker records besides the run bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub time: i64,
    pub host: String,
    /// Written as `count.<name>=<value>`; names are `[a-z0-9.-]+`.
    pub counts: Vec<(String, u64)>,
    /// The `tool` line; `None` writes this build's. A compaction keeps the original writer's.
    pub tool: Option<String>,
    /// When a compaction wrote this marker (the `compacted` key).
    pub compacted: Option<i64>,
    /// Further `key=value` lines, kept as they are: a compaction carries over keys it does not
    /// know, so a newer writer's facts survive an older compactor.
    pub extra: Vec<(String, String)>,
}

impl RunSummary {
    /// The summary that writes a marker again as it was (a compaction's or a repair's copy of
    /// a run): the original writer's host, tool, counters and unknown keys, and `compacted`.
    pub fn from_marker(
        time: i64,
        fields: &[(String, String)],
        compacted: Option<i64>,
    ) -> RunSummary {
        let mut summary = RunSummary {
            time,
            compacted,
            ..Default::default()
        };
        for (k, v) in fields {
            match k.as_str() {
                "format" | "archive-id" | "run" | "time" | "entries" | "start" | "compacted" => {}
                "host" => summary.host = v.clone(),
                "tool" => summary.tool = Some(v.clone()),
                _ => match (k.strip_prefix("count."), v.parse::<u64>()) {
                    (Some(name), Ok(n)) => summary.counts.push((name.to_string(), n)),
                    _ => summary.extra.push((k.clone(), v.clone())),
                },
            }
        }
        summary
    }
}

/// A marker as a reader finds it: the bookkeeping it is checked by, and every line in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub run: u64,
    pub archive_id: String,
    pub time: i64,
    pub start: u64,
    pub entries: u64,
    pub fields: Vec<(String, String)>,
}

/// The entry name of run `run`'s marker.
pub fn marker_name(run: u64) -> String {
    format!("{RUNS_DIR}{run}")
}

/// The run number of a commit marker entry name, if it is one.
pub fn marker_run(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(RUNS_DIR)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The tar bytes of run `run`'s marker entry (headers, body, padding): the whole of the member
/// the writer closes the run with. `entries` and `start` are the run's; the rest is `summary`.
pub fn encode(
    run: u64,
    archive_id: &str,
    entries: u64,
    start: u64,
    summary: &RunSummary,
) -> Result<Vec<u8>> {
    let body = encode_body(run, archive_id, entries, start, summary)?;
    let mut raw = Vec::new();
    encode_headers(
        &HeaderSpec {
            name: &marker_name(run),
            kind: EntryKind::File,
            target: "",
            size: body.len() as u64,
            mtime: summary.time.max(0) as u64,
            pax: PaxMeta::for_marker(run).encode(),
        },
        &mut raw,
    );
    raw.extend_from_slice(body.as_bytes());
    raw.resize(padded(raw.len() as u64) as usize, 0);
    Ok(raw)
}

fn encode_body(
    run: u64,
    archive_id: &str,
    entries: u64,
    start: u64,
    summary: &RunSummary,
) -> Result<String> {
    let mut body = String::new();
    body.push_str(&format!("format={MARKER_FORMAT}\n"));
    body.push_str(&format!("archive-id={archive_id}\n"));
    body.push_str(&format!("run={run}\n"));
    body.push_str(&format!("time={}\n", summary.time));
    body.push_str(&format!("host={}\n", summary.host.replace('\n', " ")));
    match &summary.tool {
        Some(tool) => body.push_str(&format!("tool={}\n", tool.replace('\n', " "))),
        None => body.push_str(&format!("tool=mailpack {}\n", env!("CARGO_PKG_VERSION"))),
    }
    body.push_str(&format!("entries={entries}\n"));
    body.push_str(&format!("start={start}\n"));
    for (k, v) in &summary.counts {
        if !key_ok(k) {
            return Err(Error::refused(format!(
                "counter name {k:?} is not [a-z0-9.-]+"
            )));
        }
        body.push_str(&format!("count.{k}={v}\n"));
    }
    if let Some(t) = summary.compacted {
        body.push_str(&format!("compacted={t}\n"));
    }
    for (k, v) in &summary.extra {
        if !key_ok(k) || v.contains('\n') {
            return Err(Error::refused(format!(
                "marker line {k:?}={v:?} is not key=value"
            )));
        }
        body.push_str(&format!("{k}={v}\n"));
    }
    Ok(body)
}

/// Marker keys are `[a-z0-9.-]+` (formats/archive.md section 4).
fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

/// Reads the body of the marker named for run `name_run`, `size` bytes long by its header (the
/// scanner keeps at most `MAX_MARKER` of it). Offsets in the error count from the body's start:
/// the line at fault, or the end of the body for a key that is missing.
pub fn decode(name_run: u64, size: u64, body: &[u8]) -> Result<Marker, ParseError> {
    if size as usize > MAX_MARKER {
        return Err(ParseError::new(0, format!("commit marker of {size} bytes")));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| ParseError::new(e.valid_up_to() as u64, "commit marker is not UTF-8"))?;
    let mut fields = Vec::new();
    let mut line_at = Vec::new();
    for line in text.lines() {
        // `lines` hands out slices of `text`, so the distance between the starts is the offset.
        let here = (line.as_ptr() as usize - text.as_ptr() as usize) as u64;
        let (k, v) = line.split_once('=').ok_or_else(|| {
            ParseError::new(here, format!("commit marker line {line:?} has no '='"))
        })?;
        fields.push((k.to_string(), v.to_string()));
        line_at.push(here);
    }
    let end = body.len() as u64;
    let get = |key: &str| {
        fields
            .iter()
            .zip(&line_at)
            .find(|((k, _), _)| k == key)
            .map(|((_, v), &at)| (v.as_str(), at))
            .ok_or_else(|| ParseError::new(end, format!("commit marker lacks {key}")))
    };
    let (format, at) = get("format")?;
    if format != MARKER_FORMAT {
        return Err(ParseError::new(
            at,
            format!("commit marker format {format:?} is not {MARKER_FORMAT:?}"),
        ));
    }
    let num = |key: &str| -> Result<u64, ParseError> {
        let (v, at) = get(key)?;
        v.parse()
            .map_err(|_| ParseError::new(at, format!("commit marker {key} is not a number")))
    };
    let run = num("run")?;
    if run != name_run {
        let (_, at) = get("run")?;
        return Err(ParseError::new(
            at,
            format!("commit marker runs/{name_run} says run={run}"),
        ));
    }
    let (archive_id, at) = get("archive-id")?;
    if archive_id.len() != 32 || !archive_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ParseError::new(at, "commit marker archive-id is malformed"));
    }
    let archive_id = archive_id.to_string();
    let (time, at) = get("time")?;
    let time: i64 = time
        .parse()
        .map_err(|_| ParseError::new(at, "commit marker time is not a number"))?;
    let start = num("start")?;
    let entries = num("entries")?;
    Ok(Marker {
        run,
        archive_id,
        time,
        start,
        entries,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tar::{decode_block, decode_pax, Block, RawHeader, BLOCK};

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn summary() -> RunSummary {
        RunSummary {
            time: 1_700_000_000,
            host: "imap1.example.org".into(),
            counts: vec![("messages".into(), 12), ("mailboxes.new".into(), 3)],
            tool: Some("mailpack 0.9.0".into()),
            compacted: Some(1_700_100_000),
            extra: vec![("future-key".into(), "a value = with equals".into())],
        }
    }

    /// The entry header, the body and the pax records of an encoded marker entry.
    fn split(raw: &[u8]) -> (RawHeader, Vec<u8>, Vec<(String, String)>) {
        let Ok(Block::Header(pax)) = decode_block(raw[..BLOCK].try_into().expect("a block")) else {
            panic!("no pax header")
        };
        let records = decode_pax(&raw[BLOCK..BLOCK + pax.size as usize]).expect("pax records");
        let at = BLOCK + padded(pax.size) as usize;
        let Ok(Block::Header(h)) = decode_block(raw[at..at + BLOCK].try_into().expect("a block"))
        else {
            panic!("no entry header")
        };
        let body = raw[at + BLOCK..at + BLOCK + h.size as usize].to_vec();
        (h, body, records)
    }

    #[test]
    fn markers_round_trip() {
        let raw = encode(7, ID, 42, 8192, &summary()).unwrap();
        assert_eq!(raw.len() % BLOCK, 0);
        let (header, body, records) = split(&raw);
        assert_eq!(
            (header.name.as_str(), header.mtime),
            ("runs/7", 1_700_000_000)
        );
        assert_eq!(
            PaxMeta::decode(&records),
            Ok(PaxMeta::for_marker(7)),
            "{records:?}"
        );
        let marker = decode(7, body.len() as u64, &body).unwrap();
        assert_eq!(
            (
                marker.run,
                marker.archive_id.as_str(),
                marker.time,
                marker.entries,
                marker.start
            ),
            (7, ID, 1_700_000_000, 42, 8192)
        );
        assert_eq!(marker.fields[0], ("format".into(), MARKER_FORMAT.into()));
        let again = RunSummary::from_marker(marker.time, &marker.fields, summary().compacted);
        assert_eq!(again, summary());
    }

    #[test]
    fn this_builds_tool_is_written_when_none_is_given() {
        let raw = encode(7, ID, 0, 0, &RunSummary::default()).unwrap();
        let (_, body, _) = split(&raw);
        let marker = decode(7, body.len() as u64, &body).unwrap();
        let tool = format!("mailpack {}", env!("CARGO_PKG_VERSION"));
        assert!(marker.fields.contains(&("tool".into(), tool)));
    }

    #[test]
    fn keys_outside_the_alphabet_are_refused() {
        let mut bad = RunSummary::default();
        bad.counts.push(("Messages".into(), 1));
        assert!(encode(1, ID, 0, 0, &bad).is_err());
        let mut bad = RunSummary::default();
        bad.extra.push(("note".into(), "two\nlines".into()));
        assert!(encode(1, ID, 0, 0, &bad).is_err());
    }

    #[test]
    fn damaged_bodies_name_the_line() {
        let body = encode_body(3, ID, 0, 0, &RunSummary::default()).unwrap();
        let run_at = body.find("run=").unwrap() as u64;
        let cases: [(String, u64, u64, &str); 5] = [
            (body.clone(), 2, run_at, "commit marker runs/2 says run=3"),
            (
                body.replace("format=mailpack-archive 1", "format=other"),
                3,
                0,
                "commit marker format \"other\" is not \"mailpack-archive 1\"",
            ),
            (
                body.replace("start=0\n", ""),
                3,
                body.len() as u64 - 8,
                "commit marker lacks start",
            ),
            (
                body.replace("run=3", "run3"),
                3,
                run_at,
                "commit marker line \"run3\" has no '='",
            ),
            (
                body.replace(ID, "xyz"),
                3,
                body.find("archive-id").unwrap() as u64,
                "commit marker archive-id is malformed",
            ),
        ];
        for (text, name_run, offset, detail) in cases {
            let e = decode(name_run, text.len() as u64, text.as_bytes()).unwrap_err();
            assert_eq!(e, ParseError::new(offset, detail), "{text}");
        }
        let e = decode(3, MAX_MARKER as u64 + 1, b"").unwrap_err();
        assert_eq!(
            e.detail,
            format!("commit marker of {} bytes", MAX_MARKER + 1)
        );
        let e = decode(3, 3, b"a=\xff").unwrap_err();
        assert_eq!(e, ParseError::new(2, "commit marker is not UTF-8"));
    }

    #[test]
    fn marker_names() {
        assert_eq!(marker_name(17), "runs/17");
        assert_eq!(marker_run(&marker_name(17)), Some(17));
        assert_eq!(marker_run("runs/017"), None);
        assert_eq!(marker_run("runs/"), None);
        assert_eq!(marker_run("runs/1x"), None);
        assert_eq!(marker_run("files/1"), None);
    }
}
