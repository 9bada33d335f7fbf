//! Support code for the tests that is more than a helper: the Cyrus harness, private
//! Dovecot and Garage servers.

pub mod cyrus;
pub mod dovecot;
pub mod garage;
pub mod moto;
