//! The demo's own traffic, all in-process on threads that joined a lab
//! namespace: two real services on the host (a UDP echo and a tiny HTTP
//! responder), a client that keeps using both and counts its answers, and
//! a UDP flood from several attacker addresses. Every loop stops on the
//! shared stop flag, at its own deadline, and at [`HARD_LIMIT`] at most.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::net;

/// UDP echo service on the host.
pub const ECHO_PORT: u16 = 7;
/// HTTP-ish request/response service on the host.
pub const WEB_PORT: u16 = 80;
/// No loop of the demo's traffic runs longer than this, whatever happens.
pub const HARD_LIMIT: Duration = Duration::from_secs(120);
/// The client's pace: one UDP request per 50 ms, one TCP request per 100 ms.
const UDP_EVERY: Duration = Duration::from_millis(50);
const TCP_EVERY: Duration = Duration::from_millis(100);
const UDP_TIMEOUT: Duration = Duration::from_millis(300);
const TCP_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nvote counted\n";

/// What the client saw, counted as requests complete.
#[derive(Default)]
pub struct ClientCounts {
    pub udp_ok: AtomicU64,
    pub udp_failed: AtomicU64,
    pub tcp_ok: AtomicU64,
    pub tcp_failed: AtomicU64,
}

/// A snapshot of [`ClientCounts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub udp_ok: u64,
    pub udp_failed: u64,
    pub tcp_ok: u64,
    pub tcp_failed: u64,
}

impl Served {
    pub fn since(&self, earlier: &Served) -> Served {
        Served {
            udp_ok: self.udp_ok - earlier.udp_ok,
            udp_failed: self.udp_failed - earlier.udp_failed,
            tcp_ok: self.tcp_ok - earlier.tcp_ok,
            tcp_failed: self.tcp_failed - earlier.tcp_failed,
        }
    }
}

impl ClientCounts {
    pub fn snapshot(&self) -> Served {
        Served {
            udp_ok: self.udp_ok.load(Ordering::Relaxed),
            udp_failed: self.udp_failed.load(Ordering::Relaxed),
            tcp_ok: self.tcp_ok.load(Ordering::Relaxed),
            tcp_failed: self.tcp_failed.load(Ordering::Relaxed),
        }
    }
}

/// The services and the client. Dropping it stops and joins every thread.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    pub client: Arc<ClientCounts>,
}

impl Traffic {
    /// Starts both services in `host_ns` and the client in `client_ns`.
    pub fn start(host_ns: &str, client_ns: &str, host_ip: Ipv4Addr) -> Result<Traffic> {
        let mut t = Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            client: Arc::new(ClientCounts::default()),
        };
        // Bound here, so the client never races the servers.
        let echo = net::run_in(host_ns, || {
            UdpSocket::bind(("0.0.0.0", ECHO_PORT)).context("binding the UDP echo service")
        })?;
        let web = net::run_in(host_ns, || {
            TcpListener::bind(("0.0.0.0", WEB_PORT)).context("binding the TCP service")
        })?;
        let stop = t.stop.clone();
        t.threads.push(
            thread::Builder::new()
                .name("demo-echo".into())
                .spawn(move || serve_echo(&echo, &stop))?,
        );
        let stop = t.stop.clone();
        t.threads.push(
            thread::Builder::new()
                .name("demo-web".into())
                .spawn(move || serve_web(&web, &stop))?,
        );
        let (stop, counts) = (t.stop.clone(), t.client.clone());
        let echo_to = SocketAddr::new(IpAddr::V4(host_ip), ECHO_PORT);
        t.threads
            .push(net::spawn_in(client_ns, "demo-client-udp", move || {
                client_udp(echo_to, &stop, &counts)
            })?);
        let (stop, counts) = (t.stop.clone(), t.client.clone());
        let web_to = SocketAddr::new(IpAddr::V4(host_ip), WEB_PORT);
        t.threads
            .push(net::spawn_in(client_ns, "demo-client-tcp", move || {
                client_tcp(web_to, &stop, &counts)
            })?);
        Ok(t)
    }

    /// Stops everything; returns the first error a thread reported.
    pub fn stop(mut self) -> Result<()> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let mut first = Ok(());
        for h in self.threads.drain(..) {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a traffic thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

fn running(stop: &AtomicBool, start: Instant) -> bool {
    !stop.load(Ordering::Relaxed) && start.elapsed() < HARD_LIMIT
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Echoes every datagram back to its sender.
fn serve_echo(socket: &UdpSocket, stop: &AtomicBool) -> Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while running(stop, start) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = socket.send_to(&buf[..n], from);
            }
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e).context("UDP echo service"),
        }
    }
    Ok(())
}

/// Answers each connection's request with a fixed response, one at a time.
fn serve_web(listener: &TcpListener, stop: &AtomicBool) -> Result<()> {
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    while running(stop, start) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = conn.set_write_timeout(Some(Duration::from_millis(500)));
                let mut req = [0u8; 256];
                if matches!(conn.read(&mut req), Ok(n) if n > 0) {
                    let _ = conn.write_all(RESPONSE);
                }
            }
            Err(e) if timed_out(&e) => thread::sleep(Duration::from_millis(2)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => return Err(e).context("TCP service"),
        }
    }
    Ok(())
}

/// Waits until `start + every * i`, or returns false when told to stop.
fn pace(stop: &AtomicBool, start: Instant, every: Duration, i: u32) -> bool {
    let due = start + every * i;
    loop {
        if !running(stop, start) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        thread::sleep((due - now).min(Duration::from_millis(50)));
    }
}

/// One echo request every [`UDP_EVERY`]; a reply within [`UDP_TIMEOUT`] is a success.
fn client_udp(to: SocketAddr, stop: &AtomicBool, counts: &ClientCounts) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding the client's UDP socket")?;
    socket.connect(to)?;
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let mut i = 0u32;
    while pace(stop, start, UDP_EVERY, i) {
        // Skip the slots a slow request used up instead of bursting.
        let behind = (start.elapsed().as_nanos() / UDP_EVERY.as_nanos()) as u32;
        i = i.max(behind) + 1;
        let seq = u64::from(i).to_be_bytes();
        let asked = Instant::now();
        let ok = socket.send(&seq).is_ok() && {
            let mut got = false;
            while let Some(left) = UDP_TIMEOUT.checked_sub(asked.elapsed()) {
                if left.is_zero() {
                    break;
                }
                socket.set_read_timeout(Some(left))?;
                match socket.recv(&mut buf) {
                    Ok(8) if buf[..8] == seq => {
                        got = true;
                        break;
                    }
                    // A late reply to an earlier request.
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            got
        };
        let counter = if ok {
            &counts.udp_ok
        } else {
            &counts.udp_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// One request per connection every [`TCP_EVERY`]: connect, ask, read the
/// whole response; all within [`TCP_TIMEOUT`] is a success.
fn client_tcp(to: SocketAddr, stop: &AtomicBool, counts: &ClientCounts) -> Result<()> {
    let start = Instant::now();
    let mut i = 0u32;
    while pace(stop, start, TCP_EVERY, i) {
        let behind = (start.elapsed().as_nanos() / TCP_EVERY.as_nanos()) as u32;
        i = i.max(behind) + 1;
        let ok = one_request(to).unwrap_or(false);
        let counter = if ok {
            &counts.tcp_ok
        } else {
            &counts.tcp_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn one_request(to: SocketAddr) -> io::Result<bool> {
    let asked = Instant::now();
    let mut conn = TcpStream::connect_timeout(&to, TCP_TIMEOUT)?;
    let left = TCP_TIMEOUT
        .saturating_sub(asked.elapsed())
        .max(Duration::from_millis(1));
    conn.set_read_timeout(Some(left))?;
    conn.set_write_timeout(Some(left))?;
    conn.write_all(b"GET /vote HTTP/1.0\r\n\r\n")?;
    let mut response = Vec::with_capacity(RESPONSE.len());
    conn.take(1024).read_to_end(&mut response)?;
    Ok(response == RESPONSE && asked.elapsed() <= TCP_TIMEOUT)
}

/// A bounded UDP flood: `pps` datagrams per second from each of `sources`
/// (addresses of `ns`) to `to`, for `duration`. Returns the thread, which
/// yields the number of datagrams sent.
pub fn udp_flood(
    ns: &str,
    sources: Vec<Ipv4Addr>,
    to: SocketAddr,
    pps: u32,
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Result<u64>>> {
    let duration = duration.min(HARD_LIMIT);
    net::spawn_in(ns, "demo-flood", move || {
        let mut sockets = Vec::new();
        for src in &sources {
            let s = UdpSocket::bind((*src, 0)).with_context(|| format!("binding {src}"))?;
            s.set_nonblocking(true)?;
            s.connect(to)?;
            sockets.push(s);
        }
        let payload = [0x66u8; 64];
        let start = Instant::now();
        let mut sent_each = 0u64;
        let mut total = 0u64;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * f64::from(pps)) as u64;
            // A stall is forgotten beyond 50 ms worth, not caught up with.
            let most = u64::from(pps / 20).max(1);
            sent_each = sent_each.max(due.saturating_sub(most));
            let n = due - sent_each.min(due);
            for _ in 0..n {
                for s in &sockets {
                    if s.send(&payload).is_ok() {
                        total += 1;
                    }
                }
            }
            sent_each += n;
            thread::sleep(Duration::from_millis(2));
        }
        Ok(total)
    })
}
