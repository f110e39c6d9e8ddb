//! The client side of the control socket: one request, one response.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use crate::protocol::{Reply, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the mitigator daemon at {path}: {reason} (is `mitigator run` running? set --socket or MITIGATOR_SOCKET)")]
    Connect { path: String, reason: String },
    #[error("lost the connection to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent a reply this client does not understand: {0}")]
    BadReply(String),
    /// The daemon refused the request; its message is shown as is.
    #[error("{0}")]
    Refused(String),
}

/// How long a client waits for the daemon (a bulk load of 1M rules takes seconds).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

pub fn call(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| ClientError::Connect {
        path: socket.display().to_string(),
        reason: e.to_string(),
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(ClientError::BadReply("empty reply (the daemon closed the connection)".into()));
    }
    match serde_json::from_str::<Response>(&reply) {
        Ok(Response::Ok(r)) => Ok(r),
        Ok(Response::Error(msg)) => Err(ClientError::Refused(msg)),
        Err(e) => Err(ClientError::BadReply(e.to_string())),
    }
}
