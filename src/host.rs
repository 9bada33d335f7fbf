//! Facts about the machine mailpack runs on, recorded in commit markers and agent replies.

/// This machine's host name, as the kernel has it; "unknown" where there is no /proc.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
