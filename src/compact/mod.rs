//! The compactor (issue 5): decides which entries of an archive a restore within the retention
//! window can still need (`plan`, read-only, also the `--dry-run` report), then rewrites the
//! archive keeping only those (`compact`), copying untouched members without recompressing.

mod execute;
mod plan;

pub use execute::{compact, compact_counted, CompactOptions, CompactOutcome};
pub use plan::{plan, threshold_percent, CompactPlan, Dropped, Gfs, PlanOptions, RunDecision};
