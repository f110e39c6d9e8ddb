//! The control socket: accepts clients, checks who they are, reads one
//! request line, hands it to the engine and writes one response line.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, info, warn};

use super::{
    engine::{now_secs, Caller, Engine},
    escalator::Escalator,
};
use crate::protocol::{Reply, Request, Response, MAX_REQUEST_BYTES};

/// Who may use the socket besides root and the daemon's own user.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessPolicy {
    pub group: Option<u32>,
}

/// Fails when a daemon answers on `path`: checked before anything is
/// touched, so a second `mitigator run` changes nothing.
pub fn check_not_running(path: &Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another daemon is already listening on {} (stop it first)",
            path.display()
        );
    }
    Ok(())
}

/// Binds the socket (replacing a stale one), mode 0660, group per policy.
/// A missing parent directory is created 0755 (an existing one is left as
/// it is): the socket's own mode is what keeps others out.
pub fn bind(path: &Path, policy: AccessPolicy) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
            // The umask may have taken bits away.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot set mode 0755 on {}", dir.display()))?;
        }
    }
    if path.exists() {
        check_not_running(path)?;
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set mode 0660 on {}", path.display()))?;
    if let Some(gid) = policy.group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .with_context(|| format!("cannot set group {gid} on {}", path.display()))?;
    }
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    engine: Arc<Mutex<Engine>>,
    escalator: Arc<Mutex<Escalator>>,
    policy: AccessPolicy,
    socket_path: PathBuf,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let engine = engine.clone();
                let escalator = escalator.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_client(stream, engine, escalator, policy).await {
                        debug!(error = %e, "client connection ended with an error");
                    }
                });
            }
            Err(e) => {
                warn!(socket = %socket_path.display(), error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_client(
    stream: UnixStream,
    engine: Arc<Mutex<Engine>>,
    escalator: Arc<Mutex<Escalator>>,
    policy: AccessPolicy,
) -> anyhow::Result<()> {
    let cred = stream.peer_cred()?;
    let caller = Caller {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    let (read, mut write) = stream.into_split();
    let response = if !permitted(cred.uid(), cred.gid(), cred.pid(), policy) {
        warn!(
            uid = cred.uid(),
            pid = cred.pid(),
            "refused a client without permission"
        );
        // Take the request off the socket (unread, discarded) before
        // answering: closing a Unix socket the client is still writing to
        // makes its write fail with EPIPE, and it would never see why.
        discard_request(read).await;
        Response::Error(format!(
            "permission denied: uid {} may not control mitigator (root or the socket's group only)",
            cred.uid()
        ))
    } else {
        let request = tokio::time::timeout(REQUEST_TIMEOUT, read_request(read))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "malformed request: no complete request line within {}s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            });
        match request {
            Ok(request) => {
                let engine = engine.clone();
                tokio::task::spawn_blocking(move || {
                    match dispatch(&engine, &escalator, request, caller) {
                        Ok(reply) => Response::Ok(reply),
                        Err(msg) => Response::Error(msg),
                    }
                })
                .await?
            }
            Err(msg) => Response::Error(msg),
        }
    };
    let mut line = serde_json::to_vec(&response)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    Ok(())
}

/// Rule and stats requests go to the engine; escalation requests to the
/// escalation controller (lock order: escalator, then engine).
fn dispatch(
    engine: &Arc<Mutex<Engine>>,
    escalator: &Arc<Mutex<Escalator>>,
    request: Request,
    caller: Caller,
) -> Result<Reply, String> {
    match request {
        Request::Escalate { class, level } => {
            let mut esc = escalator.lock().unwrap_or_else(|p| p.into_inner());
            let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
            info!(uid = caller.uid, pid = caller.pid, class = %class, level = level.as_deref().unwrap_or("auto"), "escalation requested by operator");
            esc.escalate(&mut engine, &class, level.as_deref())
                .map(|s| Reply::Escalation(Box::new(s)))
        }
        Request::Top { n } => {
            let esc = escalator.lock().unwrap_or_else(|p| p.into_inner());
            Ok(Reply::Top(Box::new(
                esc.controller.top_report(n.clamp(1, 1000), now_secs()),
            )))
        }
        Request::Status {} => {
            let esc = escalator.lock().unwrap_or_else(|p| p.into_inner());
            let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
            let mut reply = engine.handle(Request::Status {}, caller)?;
            if let Reply::Status(status) = &mut reply {
                status.escalation = Some(Box::new(esc.controller.status()));
            }
            Ok(reply)
        }
        other => {
            let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
            engine.handle(other, caller)
        }
    }
}

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads and drops a refused client's request: up to its newline, EOF,
/// `MAX_REQUEST_BYTES` or `REQUEST_TIMEOUT`, through a fixed buffer.
async fn discard_request(mut read: tokio::net::unix::OwnedReadHalf) {
    let drain = async {
        let mut buf = [0u8; 8192];
        let mut total = 0usize;
        while total <= MAX_REQUEST_BYTES {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    total += n;
                    if buf[..n].contains(&b'\n') {
                        return;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, drain).await;
}

/// Reads one newline-terminated request, refusing oversize or malformed ones.
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<Request, String> {
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut buf = Vec::new();
    reader
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| format!("cannot read request: {e}"))?;
    if buf.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "request too large (limit {} bytes)",
            MAX_REQUEST_BYTES
        ));
    }
    if buf.last() != Some(&b'\n') {
        return Err("malformed request: no newline-terminated JSON line received".into());
    }
    serde_json::from_slice(&buf).map_err(|e| format!("malformed request: {e}"))
}

fn permitted(uid: u32, gid: u32, pid: Option<i32>, policy: AccessPolicy) -> bool {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return true;
    }
    let Some(group) = policy.group else {
        return false;
    };
    gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group))
}

/// The peer's supplementary groups, from /proc (SO_PEERCRED has only the primary).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[tokio::test]
    async fn socket_is_0660_with_the_group_in_a_0755_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/mitigator/mitigator.sock");
        let gid = nix::unistd::getegid().as_raw();
        let _listener = bind(&path, AccessPolicy { group: Some(gid) }).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
        for dir in [
            path.parent().unwrap(),
            path.parent().unwrap().parent().unwrap(),
        ] {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o755, "{}", dir.display());
        }
        // A second daemon on the same socket is refused.
        let err = bind(&path, AccessPolicy::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("another daemon is already listening on"),
            "{err}"
        );
    }

    #[test]
    fn who_is_permitted() {
        let me = nix::unistd::geteuid().as_raw();
        assert!(permitted(0, 0, None, AccessPolicy::default()));
        assert!(permitted(me, 12345, None, AccessPolicy::default()));
        let stranger = if me == 4242 { 4243 } else { 4242 };
        assert!(!permitted(stranger, 4242, None, AccessPolicy::default()));
        assert!(permitted(
            stranger,
            777,
            None,
            AccessPolicy { group: Some(777) }
        ));
        assert!(!permitted(
            stranger,
            778,
            None,
            AccessPolicy { group: Some(777) }
        ));
    }
}
