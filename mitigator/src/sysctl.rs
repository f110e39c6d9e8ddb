//! Kernel settings the defences depend on, set while the daemon runs and
//! restored when it stops.
//!
//! XDP SYN cookies use the kernel's own cookie code, which answers only
//! while `net.ipv4.tcp_syncookies` is non-zero (it also governs IPv6). The
//! setting is per network namespace: the daemon changes the one it runs in.

use std::{io, path::PathBuf};

use tracing::{info, warn};

const TCP_SYNCOOKIES: &str = "/proc/sys/net/ipv4/tcp_syncookies";

/// A sysctl we changed, put back on `restore` (or drop).
pub struct SysctlGuard {
    path: PathBuf,
    original: Option<String>,
}

impl SysctlGuard {
    /// Makes sure `net.ipv4.tcp_syncookies` is at least 1.
    pub fn enable_syncookies() -> io::Result<Self> {
        Self::ensure_at_least(PathBuf::from(TCP_SYNCOOKIES), 1)
    }

    fn ensure_at_least(path: PathBuf, min: u32) -> io::Result<Self> {
        let current = std::fs::read_to_string(&path)?;
        let value: u32 = current.trim().parse().unwrap_or(0);
        if value >= min {
            return Ok(Self { path, original: None });
        }
        std::fs::write(&path, min.to_string())?;
        info!(sysctl = %path.display(), from = value, to = min, "changed kernel setting for the defences");
        Ok(Self {
            path,
            original: Some(current.trim().to_string()),
        })
    }

    /// Puts the original value back, if we changed it.
    pub fn restore(&mut self) {
        if let Some(original) = self.original.take() {
            match std::fs::write(&self.path, &original) {
                Ok(()) => info!(sysctl = %self.path.display(), to = %original, "restored kernel setting"),
                Err(e) => warn!(sysctl = %self.path.display(), error = %e, "cannot restore kernel setting"),
            }
        }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_and_restores_a_low_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knob");
        std::fs::write(&path, "0\n").unwrap();
        let guard = SysctlGuard::ensure_at_least(path.clone(), 1).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1");
        drop(guard);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0");
    }

    #[test]
    fn leaves_a_sufficient_value_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knob");
        std::fs::write(&path, "2\n").unwrap();
        drop(SysctlGuard::ensure_at_least(path.clone(), 1).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n");
    }
}
