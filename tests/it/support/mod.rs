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
