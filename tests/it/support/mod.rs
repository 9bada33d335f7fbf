//! Support code for the tests that is more than a helper: the Cyrus harness.

pub mod cyrus;
pub mod garage;
pub mod moto;
pub mod tls;
