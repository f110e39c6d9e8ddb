//! Kernel settings the defences depend on, set while the daemon runs and
//! restored when it stops.
//!
//! XDP SYN cookies use the kernel's own cookie code. Asked from XDP
//! (`bpf_tcp_gen_syncookie`), it issues a cookie only when
//! `net.ipv4.tcp_syncookies` is 2 ("always"), or when the listener's queue is
//! already full — too late. The setting also governs IPv6 and is per network
//! namespace: the daemon changes the one it runs in, for as long as the
//! defence is on, and puts the old value back afterwards.

use std::{io, path::PathBuf};

use tracing::{info, warn};

const TCP_SYNCOOKIES: &str = "/proc/sys/net/ipv4/tcp_syncookies";

/// A sysctl we changed, put back on `restore` (or drop).
pub struct SysctlGuard {
    path: PathBuf,
    original: Option<String>,
}

impl SysctlGuard {
    /// Sets `net.ipv4.tcp_syncookies` to 2 (always use cookies).
    pub fn enable_syncookies() -> io::Result<Self> {
        Self::ensure_at_least(PathBuf::from(TCP_SYNCOOKIES), 2)
    }

    fn ensure_at_least(path: PathBuf, min: u32) -> io::Result<Self> {
        let current = std::fs::read_to_string(&path)?;
        let value: u32 = current.trim().parse().unwrap_or(0);
        if value >= min {
            return Ok(Self {
                path,
                original: None,
            });
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
                Ok(()) => {
                    info!(sysctl = %self.path.display(), to = %original, "restored kernel setting")
                }
                Err(e) => {
                    warn!(sysctl = %self.path.display(), error = %e, "cannot restore kernel setting")
                }
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
