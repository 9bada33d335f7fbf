//! Support code for the tests that is more than a helper: the Cyrus harness, private
//! Dovecot and Garage servers.

pub mod cyrus;
pub mod dovecot;
pub mod garage;
pub mod moto;
pub mod tls;

/// The directories `<temp>/<prefix><pid>-<n>` that a server fixture made for a test process no
/// longer alive (killed, so no Drop ran): each fixture stops its own servers in them and removes
/// them. Directories of this process and of live ones are left alone.
pub fn dirs_of_dead_test_processes(prefix: &str) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            match owner {
                Some(owner) => {
                    owner != std::process::id()
                        && !std::path::Path::new(&format!("/proc/{owner}")).exists()
                }
                None => false,
            }
        })
        .map(|e| e.path())
        .collect()
}

/// `n` distinct free loopback ports in `range`, none in `taken`. Servers that must be told their
/// ports (Cyrus, Dovecot, Garage) cannot take port 0; ranges below the kernel's ephemeral range
/// (32768+) keep an outgoing connection elsewhere in the test run from grabbing one between
/// this check and the server's bind. Spread by pid, a sequence and the clock, so parallel
/// fixtures rarely try the same port twice.
pub fn pick_free_ports(n: usize, range: std::ops::Range<u16>, taken: &[u16]) -> Vec<u16> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let span = u64::from(range.end - range.start);
    let mut chosen: Vec<u16> = Vec::new();
    while chosen.len() < n {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        let mut x = (std::process::id() as u64) << 32
            ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ nanos.wrapping_mul(0xD1B5_4A32_D192_ED03);
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        let port = range.start + (x % span) as u16;
        if !chosen.contains(&port) && !taken.contains(&port) && port_free(port) {
            chosen.push(port);
        }
    }
    chosen
}

/// Whether a loopback port can be bound now.
pub fn port_free(port: u16) -> bool {
    port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}
