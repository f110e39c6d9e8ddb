//! The client side of the control socket: one request, one response.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use crate::protocol::{Reply, Request, Response, MAX_REQUEST_BYTES};

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
    #[error("the request is {size} bytes, more than the daemon accepts ({limit} bytes); nothing was changed: split the prefixes into several requests")]
    TooLarge { size: usize, limit: usize },
}

/// How long a client waits for the daemon (a bulk load of 1M rules takes seconds).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

pub fn call(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    // The daemon would refuse it after reading 64 MiB; say so before sending.
    if line.len() > MAX_REQUEST_BYTES {
        return Err(ClientError::TooLarge {
            size: line.len(),
            limit: MAX_REQUEST_BYTES,
        });
    }
    let mut stream = UnixStream::connect(socket).map_err(|e| ClientError::Connect {
        path: socket.display().to_string(),
        reason: e.to_string(),
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    let written = stream.write_all(&line);
    let mut reply = String::new();
    let read = BufReader::new(&stream).read_line(&mut reply);
    // A daemon that refuses early (permission, size) may answer and hang up
    // before taking the whole request: its answer beats our write error.
    if reply.is_empty() {
        written?;
        read?;
        return Err(ClientError::BadReply(
            "empty reply (the daemon closed the connection)".into(),
        ));
    }
    match serde_json::from_str::<Response>(&reply) {
        Ok(Response::Ok(r)) => Ok(r),
        Ok(Response::Error(msg)) => Err(ClientError::Refused(msg)),
        Err(e) => Err(ClientError::BadReply(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::rules::RuleKind;

    fn add(prefixes: Vec<String>) -> Request {
        Request::Add {
            kind: RuleKind::Block,
            prefixes,
            ttl_secs: None,
            reason: String::new(),
        }
    }

    #[test]
    fn an_oversize_request_is_refused_before_connecting() {
        let prefixes = vec!["255.255.255.255/32".to_string(); MAX_REQUEST_BYTES / 20];
        let err = call(Path::new("/nonexistent/sock"), &add(prefixes)).unwrap_err();
        let ClientError::TooLarge { size, limit } = err else {
            panic!("{err}");
        };
        assert!(size > limit);
        assert_eq!(limit, MAX_REQUEST_BYTES);
    }

    #[test]
    fn an_early_refusal_is_reported_even_if_the_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // Answer without reading the request, then hang up.
            conn.write_all(b"{\"error\":\"permission denied: test\"}\n")
                .unwrap();
        });
        // Far more than the socket buffers hold, so the write cannot finish.
        let prefixes = vec!["10.0.0.0/8".to_string(); 1_000_000];
        let err = call(&path, &add(prefixes)).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.to_string(), "permission denied: test");
    }
}
