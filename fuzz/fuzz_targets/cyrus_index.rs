//! Any bytes as a cyrus.index file: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mailpack::spool::index::parse(data);
});
