//! Any bytes as a find index file, and any bytes as the JSON lines inside a well-framed one
//! (magic, version, zlib: so the record checks behind the framing are reached): decoding must
//! refuse or give an index whose every copy names a folder it has, never panic or allocate
//! beyond its caps; an accepted index encodes and decodes to itself. Any bytes as a message:
//! reading its header fields must give bounded fields, never panic.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mailpack::find::fields::{fields_of, FIELD_MAX};
use mailpack::find::file::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.find");
    let mut framed = b"MPFINDX\n\x01\x00\x00\x00".to_vec();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    framed.extend(z.finish().unwrap());
    for input in [data, &framed[..]] {
        if let Ok(index) = decode(input, path) {
            for m in &index.messages {
                for c in &m.seen {
                    assert!((c.folder as usize) < index.folders.len());
                }
            }
            assert_eq!(decode(&encode(&index)[..], path).unwrap(), index);
        }
    }
    let f = fields_of(data);
    for field in [&f.from, &f.to, &f.subject, &f.message_id].into_iter().flatten() {
        assert!(field.len() <= FIELD_MAX);
    }
});
