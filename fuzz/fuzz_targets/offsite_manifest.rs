//! Any bytes as the content of an authentic manifest (sealed with the key, so the checks behind
//! the authentication are reached): opening must refuse or give a manifest whose generations
//! cover their archive and index in order, never panic or allocate beyond the input; and any
//! bytes as a sealed manifest must fail to open unless they are one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpack::offsite::manifest::{open, seal_bytes, OffsiteKey};
use mailpack::spool::Owner;

fuzz_target!(|data: &[u8]| {
    let key = OffsiteKey::from_bytes([7; 32]);
    let owner = Owner::User("alice".into());
    let name = "users/alice/m/00000000000000000003-00000000000000000000000000000000.mpm";
    if let Ok(sealed) = seal_bytes(data, name, &key) {
        if let Ok(m) = open(&sealed, name, "fuzz", &owner, 3, &key) {
            for g in std::iter::once(&m.current).chain(&m.retired) {
                let mut at = 0;
                for p in &g.data {
                    assert_eq!(p.start, at);
                    assert!(p.end > p.start);
                    at = p.end;
                }
                assert_eq!(at, g.archive_len);
            }
        }
    }
    // Raw bytes are never taken for a sealed manifest.
    assert!(open(data, name, "fuzz", &owner, 3, &key).is_err());
});
