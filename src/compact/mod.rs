//! The compactor (issue 5): decides which entries of an archive a restore within the retention
//! window can still need (`plan`), read-only, and reports what would be dropped and why. The
//! rewrite that applies a plan is not written yet; `mailpack compact` runs only with `--dry-run`.

mod plan;

pub use plan::{plan, threshold_percent, CompactPlan, Dropped, PlanOptions};
