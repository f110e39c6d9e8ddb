//! Real packets between the lab's namespaces: a UDP listener that counts
//! datagrams per source, and a bounded sender bound to a chosen source
//! address. Each runs on its own thread moved into a namespace with setns,
//! so the test process needs no helper binaries.

use std::{
    collections::HashMap,
    fs::File,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::lab::Lab;

/// Moves the calling thread into the named network namespace.
pub fn enter_netns(ns: &str) -> Result<()> {
    let f = File::open(Lab::netns_path(ns)).with_context(|| format!("open netns {ns}"))?;
    setns(f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {ns}"))?;
    Ok(())
}

/// Runs `f` on a fresh thread inside namespace `ns` and returns its result.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// Counts UDP datagrams per source address until stopped (at most `limit`).
pub struct UdpCounter {
    counts: Arc<Mutex<HashMap<IpAddr, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpCounter {
    /// Listens on `bind` inside `ns`; stops by itself after `limit`.
    pub fn start(ns: &str, bind: SocketAddr, limit: Duration) -> Result<Self> {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        let (c, s) = (counts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let sock = enter_netns(&ns).and_then(|_| {
                let sock = UdpSocket::bind(bind).context("bind listener")?;
                sock.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(sock)
            });
            let sock = match sock {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let deadline = Instant::now() + limit;
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    *c.lock().unwrap().entry(from.ip()).or_default() += 1;
                }
            }
        });
        ready_rx.recv().context("listener thread died")??;
        Ok(Self {
            counts,
            stop,
            thread: Some(thread),
        })
    }

    pub fn count_from(&self, src: IpAddr) -> u64 {
        self.counts.lock().unwrap().get(&src).copied().unwrap_or(0)
    }

    /// Polls until `src` has delivered `want` datagrams or the deadline passes.
    pub fn wait_for(&self, src: IpAddr, want: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let got = self.count_from(src);
            if got >= want || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for UdpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `count` datagrams from `src` to `dst` inside `ns`, paced so the
/// receiver's socket buffer never overflows (this measures filtering, not load).
pub fn send_udp(ns: &str, src: IpAddr, dst: SocketAddr, count: u32) -> Result<()> {
    in_netns(ns, move || {
        let sock = UdpSocket::bind(SocketAddr::new(src, 0)).context("bind sender")?;
        for i in 0..count {
            sock.send_to(&i.to_be_bytes(), dst).context("send")?;
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })
}

/// A TCP echo-ish server in a namespace: every accepted connection reads up
/// to 4 bytes and answers "pong". Stops when dropped (or after `limit`).
pub struct TcpServer {
    accepted: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    pub fn start(ns: &str, bind: SocketAddr, limit: Duration) -> Result<Self> {
        let accepted = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let listener = enter_netns(&ns).and_then(|_| {
                let l = std::net::TcpListener::bind(bind).context("bind tcp server")?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let deadline = Instant::now() + limit;
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        use std::io::{Read, Write};
                        *a.lock().unwrap() += 1;
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 4];
                        if conn.read_exact(&mut buf).is_ok() {
                            let _ = conn.write_all(b"pong");
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        ready_rx.recv().context("server thread died")??;
        Ok(Self {
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    pub fn accepted(&self) -> u64 {
        *self.accepted.lock().unwrap()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Outcome of sequential client connections.
#[derive(Debug, Default)]
pub struct ClientRun {
    pub attempts: u32,
    /// Connected, sent "ping" and read "pong", all within the per-try limit.
    pub completed: u32,
    pub slowest: Duration,
}

/// `count` sequential connections from `ns` to `dst`, each a full
/// request/response that must finish within `per_try`.
pub fn tcp_clients(ns: &str, dst: SocketAddr, count: u32, per_try: Duration) -> Result<ClientRun> {
    in_netns(ns, move || {
        use std::io::{Read, Write};
        let mut run = ClientRun::default();
        for _ in 0..count {
            run.attempts += 1;
            let start = Instant::now();
            let ok = (|| -> std::io::Result<bool> {
                let mut s = std::net::TcpStream::connect_timeout(&dst, per_try)?;
                s.set_read_timeout(Some(
                    per_try
                        .saturating_sub(start.elapsed())
                        .max(Duration::from_millis(1)),
                ))?;
                s.write_all(b"ping")?;
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf)?;
                Ok(&buf == b"pong")
            })()
            .unwrap_or(false);
            let took = start.elapsed();
            run.slowest = run.slowest.max(took);
            if ok && took < per_try {
                run.completed += 1;
            }
        }
        Ok(run)
    })
}

/// A TcpExt/Tcp counter of the namespace's kernel stack (as `nstat` shows it).
pub fn netstat(ns: &str, name: &str) -> Result<u64> {
    let ns = ns.to_string();
    let name = name.to_string();
    in_netns(&ns, move || {
        let mut out = None;
        for file in [
            "/proc/thread-self/net/netstat",
            "/proc/thread-self/net/snmp",
        ] {
            let text = std::fs::read_to_string(file)?;
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                if let [head, values] = pair {
                    let (prefix, keys) = head.split_once(':').unwrap_or(("", ""));
                    let vals = values.split_once(':').map(|v| v.1).unwrap_or("");
                    for (k, v) in keys.split_whitespace().zip(vals.split_whitespace()) {
                        if format!("{prefix}{k}") == name {
                            out = v.parse().ok();
                        }
                    }
                }
            }
        }
        out.with_context(|| format!("no kernel counter {name}"))
    })
}

/// A bounded spoofed-source SYN flood from `ns` with hping3 (random source
/// addresses; the packets only cross the lab's veth). `timeout` bounds it
/// in time; on drop it gets SIGTERM, which it passes on to hping3, and if
/// the test process dies first the kernel sends it SIGTERM (PDEATHSIG).
pub struct SynFlood {
    child: Option<std::process::Child>,
}

impl SynFlood {
    pub fn start(ns: &str, dst: std::net::Ipv4Addr, port: u16, max: Duration) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", Lab::netns_path(ns)))
            .args(["timeout", "-k", "1", &max.as_secs().max(1).to_string()])
            .args(["hping3", "--flood", "--rand-source", "-S", "-q", "-p"])
            .arg(port.to_string())
            .arg(dst.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context("start hping3 (installed by `cargo xtask setup`)")?;
        Ok(Self { child: Some(child) })
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Like `send_udp` but from a fixed source port (amplification tests).
pub fn send_udp_from_port(ns: &str, src: SocketAddr, dst: SocketAddr, count: u32) -> Result<()> {
    in_netns(ns, move || {
        let sock = UdpSocket::bind(src).context("bind sender")?;
        for i in 0..count {
            sock.send_to(&i.to_be_bytes(), dst).context("send")?;
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })
}

/// A continuous, paced UDP sender on its own thread: sends from `src` to
/// `dst` inside `ns` until stopped, at most `max` datagrams and at most
/// `limit` long. Datagrams carry their sequence number.
pub struct UdpStream {
    sent: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl UdpStream {
    /// Starts sending about `per_ms` datagrams every millisecond.
    pub fn start(
        ns: &str,
        src: IpAddr,
        dst: SocketAddr,
        per_ms: u32,
        max: u64,
        limit: Duration,
    ) -> Result<Self> {
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        let (n, s) = (sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || -> Result<()> {
            let sock = enter_netns(&ns)
                .and_then(|_| UdpSocket::bind(SocketAddr::new(src, 0)).context("bind sender"));
            let sock = match sock {
                Ok(sock) => {
                    let _ = ready_tx.send(Ok(()));
                    sock
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let deadline = Instant::now() + limit;
            let mut i: u64 = 0;
            while i < max && !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                sock.send_to(&i.to_be_bytes(), dst).context("send")?;
                i += 1;
                n.store(i, Ordering::Relaxed);
                if i.is_multiple_of(per_ms.max(1) as u64) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        });
        ready_rx.recv().context("sender thread died")??;
        Ok(Self {
            sent,
            stop,
            thread: Some(thread),
        })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the sender and returns how many datagrams it sent.
    pub fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
        }
        Ok(self.sent())
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A paced UDP flood from several source addresses at once, on one
/// background thread inside `ns`: each source sends at its own fixed rate
/// (datagrams per second) to `dst` until the flood is stopped or dropped,
/// `limit` passes, or every source has sent `rate × limit` datagrams.
/// Datagrams carry a sequence number per source.
pub struct UdpFlood {
    sent: Arc<Vec<std::sync::atomic::AtomicU64>>,
    sources: Vec<IpAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl UdpFlood {
    /// `sources`: (address, datagrams per second) pairs; every address must
    /// be configured in `ns` (see `Lab::add_peer_addr`).
    pub fn start(
        ns: &str,
        sources: &[(IpAddr, u32)],
        dst: SocketAddr,
        limit: Duration,
    ) -> Result<Self> {
        use std::sync::atomic::AtomicU64;
        let sent: Arc<Vec<AtomicU64>> =
            Arc::new(sources.iter().map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        let plan: Vec<(IpAddr, u32)> = sources.to_vec();
        let (n, s) = (sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || -> Result<()> {
            let socks = enter_netns(&ns).and_then(|_| {
                plan.iter()
                    .map(|(src, _)| {
                        UdpSocket::bind(SocketAddr::new(*src, 0))
                            .with_context(|| format!("bind sender {src}"))
                    })
                    .collect::<Result<Vec<_>>>()
            });
            let socks = match socks {
                Ok(socks) => {
                    let _ = ready_tx.send(Ok(()));
                    socks
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let start = Instant::now();
            let deadline = start + limit;
            let max: Vec<u64> = plan
                .iter()
                .map(|(_, pps)| (*pps as f64 * limit.as_secs_f64()).ceil() as u64)
                .collect();
            let mut done = vec![0u64; plan.len()];
            let mut ok = vec![0u64; plan.len()];
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t = start.elapsed().as_secs_f64();
                let mut all_done = true;
                for (i, ((_, pps), sock)) in plan.iter().zip(&socks).enumerate() {
                    // Due by now, never more than one millisecond's catch-up
                    // burst beyond the schedule, never past the bound.
                    let due = ((t * *pps as f64) as u64 + 1).min(max[i]);
                    while done[i] < due {
                        // A datagram the stack refuses (no buffer) is not
                        // counted as sent; the schedule goes on.
                        if sock.send_to(&done[i].to_be_bytes(), dst).is_ok() {
                            ok[i] += 1;
                        }
                        done[i] += 1;
                    }
                    n[i].store(ok[i], Ordering::Relaxed);
                    all_done &= done[i] >= max[i];
                }
                if all_done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        });
        ready_rx.recv().context("flood thread died")??;
        Ok(Self {
            sent,
            sources: sources.iter().map(|(a, _)| *a).collect(),
            stop,
            thread: Some(thread),
        })
    }

    /// Datagrams sent from `src` so far (0 for an address not in the flood).
    pub fn sent_from(&self, src: IpAddr) -> u64 {
        self.sources
            .iter()
            .position(|a| *a == src)
            .map_or(0, |i| self.sent[i].load(Ordering::Relaxed))
    }

    /// Datagrams sent from all sources so far.
    pub fn sent(&self) -> u64 {
        self.sent.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Stops the flood and returns how many datagrams it sent in all.
    pub fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        }
        Ok(self.sent())
    }
}

impl Drop for UdpFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
