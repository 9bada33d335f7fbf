//! `--metrics-file PATH`: one command's figures as a Prometheus text-format file, written
//! atomically for node_exporter's textfile collector (formats/metrics.md). Encoded here only,
//! through the `prometheus` crate's text encoder.

use std::path::Path;

use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};

use crate::error::{Error, Result};

/// What one run of a command did. Figures a command does not have stay `None` and are left
/// out of the file.
#[derive(Clone, Debug, Default)]
pub struct RunMetrics {
    /// `backup`, `compact`, `drill`, `verify`, `push`.
    pub command: String,
    pub started: i64,
    pub seconds: f64,
    pub owners_ok: u64,
    pub owners_failed: u64,
    pub bytes_read: Option<u64>,
    pub bytes_written: Option<u64>,
    pub messages_added: Option<u64>,
    pub archive_bytes: Option<u64>,
    /// Live share of the archives, 0 to 1 (compaction: the lowest one seen).
    pub live_share: Option<f64>,
    pub drill_differences: Option<u64>,
}

const LAST_SUCCESS: &str = "mailpack_last_success_timestamp_seconds";

/// Writes `m` to `path` atomically. The last success time is carried over from the file being
/// replaced when this run did not succeed, so an alert on its age sees the real last success.
pub fn write_file(path: &Path, m: &RunMetrics) -> Result<()> {
    let succeeded = m.owners_failed == 0;
    let last_success = if succeeded {
        Some(m.started as f64 + m.seconds)
    } else {
        previous_value(path, LAST_SUCCESS, &m.command)
    };
    let text = encode(m, last_success)?;
    crate::io::write_atomic(path, text.as_bytes(), &crate::io::Faults::none())
}

fn encode(m: &RunMetrics, last_success: Option<f64>) -> Result<String> {
    let registry = Registry::new();
    let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec> {
        let g = GaugeVec::new(Opts::new(name, help), labels)
            .map_err(|e| Error::usage(format!("metric {name}: {e}")))?;
        registry
            .register(Box::new(g.clone()))
            .map_err(|e| Error::usage(format!("metric {name}: {e}")))?;
        Ok(g)
    };
    let cmd = m.command.as_str();
    gauge(
        "mailpack_last_run_timestamp_seconds",
        "When the last run of the command ended (Unix seconds).",
        &["command"],
    )?
    .with_label_values(&[cmd])
    .set(m.started as f64 + m.seconds);
    if let Some(t) = last_success {
        gauge(
            LAST_SUCCESS,
            "When the command last ended with no owner failed (Unix seconds).",
            &["command"],
        )?
        .with_label_values(&[cmd])
        .set(t);
    }
    gauge(
        "mailpack_last_run_success",
        "1 when the last run ended with no owner failed, else 0.",
        &["command"],
    )?
    .with_label_values(&[cmd])
    .set(if m.owners_failed == 0 { 1.0 } else { 0.0 });
    gauge(
        "mailpack_last_run_duration_seconds",
        "How long the last run took.",
        &["command"],
    )?
    .with_label_values(&[cmd])
    .set(m.seconds);
    let owners = gauge(
        "mailpack_last_run_owners",
        "Owners (users, shared trees, the server) the last run handled, by result.",
        &["command", "result"],
    )?;
    owners
        .with_label_values(&[cmd, "ok"])
        .set(m.owners_ok as f64);
    owners
        .with_label_values(&[cmd, "failed"])
        .set(m.owners_failed as f64);
    for (name, help, value) in [
        (
            "mailpack_last_run_read_bytes",
            "Bytes the last run read from the spool or the archives.",
            m.bytes_read.map(|v| v as f64),
        ),
        (
            "mailpack_last_run_written_bytes",
            "Bytes the last run wrote (archives, or the bucket for push).",
            m.bytes_written.map(|v| v as f64),
        ),
        (
            "mailpack_last_run_messages_added",
            "Messages the last run added to the archives.",
            m.messages_added.map(|v| v as f64),
        ),
        (
            "mailpack_archive_bytes",
            "Bytes of the archives the last run looked at.",
            m.archive_bytes.map(|v| v as f64),
        ),
        (
            "mailpack_archive_live_ratio",
            "Live share of the archives the last run looked at (lowest), 0 to 1.",
            m.live_share,
        ),
        (
            "mailpack_drill_differences",
            "Differences the last drill found between restored and live mailboxes.",
            m.drill_differences.map(|v| v as f64),
        ),
    ] {
        if let Some(v) = value {
            gauge(name, help, &["command"])?
                .with_label_values(&[cmd])
                .set(v);
        }
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .map_err(|e| Error::usage(format!("encoding metrics: {e}")))?;
    String::from_utf8(out).map_err(|e| Error::usage(format!("encoding metrics: {e}")))
}

/// The value of `name{command="…"}` in the file at `path`, if it is there and reads.
fn previous_value(path: &Path, name: &str, command: &str) -> Option<f64> {
    let bytes = crate::io::read_own_small(path, 1 << 20).ok()??;
    let text = String::from_utf8(bytes).ok()?;
    let want = format!("{name}{{command=\"{command}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_keeps_the_last_success_time() {
        let dir = std::env::temp_dir().join(format!("mp-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.prom");
        let mut m = RunMetrics {
            command: "backup".into(),
            started: 1000,
            seconds: 5.0,
            owners_ok: 3,
            bytes_read: Some(10),
            ..RunMetrics::default()
        };
        write_file(&path, &m).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("mailpack_last_success_timestamp_seconds{command=\"backup\"} 1005"));
        m.started = 2000;
        m.owners_failed = 1;
        write_file(&path, &m).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("mailpack_last_success_timestamp_seconds{command=\"backup\"} 1005"),
            "{text}"
        );
        assert!(
            text.contains("mailpack_last_run_success{command=\"backup\"} 0"),
            "{text}"
        );
        assert!(!text.contains("mailpack_drill_differences"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
