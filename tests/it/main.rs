//! The one integration-test binary: library-level archive tests and CLI tests.

mod agent;
mod archive;
mod backup;
mod bench_big_mailbox;
mod bench_spool;
mod cli;
mod compact;
mod cyrus_smoke;
mod dovecot;
mod drill;
mod find;
mod fixtures;
mod index_delta;
mod offsite;
mod offsite_garage;
mod progress;
mod repair;
mod restore;
mod restore_imap_tls;
mod shared;
mod spool_db;
mod spool_index;
mod spool_lock;
mod spool_view;
mod status;
mod support;
mod trust_archive;
mod trust_heal;
mod trust_restore;
mod trust_spool;
mod util;

// Test modules name the Cyrus harness `crate::cyrus`.
use support::cyrus;
