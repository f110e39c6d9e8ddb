//! Part 3: the control plane. A real daemon on a veth in a namespace of
//! its own; rules applied through the CLI (`mitigator block --from-file`)
//! and timed end to end (read and validate the file, send, insert into the
//! tries, persist, reply); the daemon's resident memory idle and after.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    prefixes,
    sys::{self, Netns},
};
use crate::util;

pub struct Apply {
    pub prefixes: usize,
    pub seconds: Option<f64>,
    pub output: String,
    pub rss_after_kib: Option<u64>,
}

pub struct Results {
    pub idle_rss_kib: Option<u64>,
    pub applies: Vec<Apply>,
    pub escalation: String,
}

/// A daemon we started; SIGTERM on drop (then SIGKILL after 10 s).
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(
        binary: &Path,
        ns: &Netns,
        iface: &str,
        dir: &Path,
        pin_root: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let socket = dir.join("mitigator.sock");
        let state = dir.join("state");
        fs::create_dir_all(&state)?;
        let log = fs::File::create(dir.join("daemon.log"))?;
        let child = ns
            .cmd(&binary.to_string_lossy())
            .args(["run", "--iface", iface, "--socket"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .args(["--pin-root", pin_root, "--detach-on-exit"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the daemon")?;
        let mut d = Self { child, socket };
        let up = sys::wait_for(Duration::from_secs(30), || {
            d.socket.exists()
                && util::capture(
                    Command::new(binary)
                        .arg("status")
                        .arg("--socket")
                        .arg(&d.socket),
                )
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        if !up || d.child.try_wait()?.is_some() {
            let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            bail!(
                "the daemon did not come up: {}",
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            );
        }
        Ok(d)
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the scratch directory on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn run(binary: &Path, sizes: &[usize], id: &str) -> Result<Results> {
    let ns = Netns::new(&format!("mbcp{id}"))?;
    let (a, b) = (format!("mbc{id}a"), format!("mbc{id}b"));
    ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
    ns.ip(&["link", "set", &a, "up"])?;
    ns.ip(&["link", "set", &b, "up"])?;
    let scratch = Scratch(std::env::temp_dir().join(format!("mitigator-bench-{id}")));
    fs::create_dir_all(&scratch.0)?;
    let pin_root = format!("/sys/fs/bpf/mitigator-bench-{id}");

    let mut idle_rss = None;
    let mut applies = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        util::check_interrupted()?;
        let file = scratch.0.join(format!("prefixes-{n}.txt"));
        fs::write(&file, prefixes::v4_text(&prefixes::v4(n, 10 + i as u64)))?;
        // A fresh daemon for every size, so each load goes into empty tries.
        let dir = scratch.0.join(format!("daemon-{i}"));
        fs::create_dir_all(&dir)?;
        let daemon = Daemon::start(binary, &ns, &a, &dir, &pin_root, &[])?;
        if idle_rss.is_none() {
            std::thread::sleep(Duration::from_secs(1));
            idle_rss = daemon.rss_kib();
        }
        let start = Instant::now();
        let out = util::capture(
            Command::new(binary)
                .args(["block", "--reason", "bench", "--from-file"])
                .arg(&file)
                .arg("--socket")
                .arg(&daemon.socket),
        )?;
        let secs = start.elapsed().as_secs_f64();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let ok = out.status.success();
        println!(
            "  {n} prefixes: {} ({})",
            if ok {
                format!("{secs:.2} s")
            } else {
                "failed".into()
            },
            text.lines().last().unwrap_or("")
        );
        std::thread::sleep(Duration::from_millis(500));
        applies.push(Apply {
            prefixes: n,
            seconds: ok.then_some(secs),
            output: text.lines().last().unwrap_or("").to_string(),
            rss_after_kib: daemon.rss_kib(),
        });
        drop(daemon);
    }

    drop(ns);
    let escalation = match time_to_escalation(binary, id, &scratch.0) {
        Ok(s) => s,
        Err(e) => format!("not measured: {e:#}"),
    };
    println!("  escalation: {escalation}");
    Ok(Results {
        idle_rss_kib: idle_rss,
        applies,
        escalation,
    })
}

/// Longest the escalation flood runs.
const ESCALATION_FLOOD_SECS: f64 = 30.0;
const METRICS_ADDR: &str = "127.0.0.1:19947";

/// GET /metrics from the daemon, inside its namespace.
fn scrape(ns: &Netns) -> Result<String> {
    let path = ns.path();
    std::thread::spawn(move || -> Result<String> {
        sys::join_netns(&path)?;
        let addr: std::net::SocketAddr = METRICS_ADDR.parse()?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        use std::io::{Read, Write};
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("metrics scrape thread panicked"))?
}

/// Every packet the daemon's datapath counted (`mitigator_packets_total`).
fn packets_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("mitigator_packets_total{"))
        .filter_map(|l| {
            l.split_whitespace()
                .last()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .sum()
}

/// `mitigator_escalation_level{class="syn"}`, if the daemon exports it.
fn syn_level(metrics: &str) -> Option<u32> {
    metrics
        .lines()
        .find(|l| l.starts_with("mitigator_escalation_level{") && l.contains("class=\"syn\""))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u32)
}

/// A real daemon (default configuration, escalation included) on the
/// receiving veth of a fresh flood topology; a SYN flood from random
/// sources starts, and the daemon's `mitigator_escalation_level` gauge for
/// `syn` is polled every 100 ms: the time to each new level is reported.
fn time_to_escalation(binary: &Path, id: &str, scratch: &Path) -> Result<String> {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{
        elf::Tiny,
        live::{self, Topology},
        mitigator::COOKIE_PORT,
        pkt::{linux_syn_options, Frame, L3, L4, TCP_SYN},
    };

    let topo = Topology::new(&format!("e{id}"))?;
    let mut spoofer = Tiny::spoofer()?;
    let idle = live::attach(spoofer.prog_mut(), &topo.gen, &topo.idle)?;
    let dir = scratch.join("daemon-escalation");
    fs::create_dir_all(&dir)?;
    let daemon = Daemon::start(
        binary,
        &topo.rx,
        &topo.r,
        &dir,
        &format!("/sys/fs/bpf/mitigator-bench-esc-{id}"),
        &["--metrics-addr", METRICS_ADDR],
    )?;
    // Quiet seconds first, so detection has a baseline.
    std::thread::sleep(Duration::from_secs(3));
    let before = scrape(&topo.rx).context("reading the daemon's metrics")?;
    let Some(level0) = syn_level(&before) else {
        bail!("not available yet: the daemon's metrics have no mitigator_escalation_level for syn");
    };

    let mut f = Frame::new(
        L3::V4(
            std::net::Ipv4Addr::new(10, 99, 0, 5),
            std::net::Ipv4Addr::new(10, 201, 0, 2),
        ),
        L4::Tcp {
            sport: 41000,
            dport: COOKIE_PORT,
            flags: TCP_SYN,
            seq: 1,
            ack: 0,
            options: linux_syn_options(),
        },
    )
    .spoofable();
    f.dst_mac = topo.rx.mac(&topo.r)?;
    f.src_mac = topo.gen.mac(&topo.g)?;
    let frame = f.build();
    let ifindex = topo.gen.ifindex(&topo.g)?;

    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut steps: Vec<(u32, f64)> = Vec::new();
    let mut sent = 0u64;
    std::thread::scope(|s| -> Result<()> {
        let gen = s.spawn(|| -> Result<u64> {
            sys::join_netns(&topo.gen.path())?;
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let mut sent = 0u64;
            use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
            while !stop.load(Ordering::Relaxed)
                && start.elapsed().as_secs_f64() < ESCALATION_FLOOD_SECS
            {
                spoofer
                    .prog()
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        ctx_in: Some(&ctx),
                        repeat: 50_000,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..Default::default()
                    })
                    .context("live-frame BPF_PROG_TEST_RUN")?;
                sent += 50_000;
            }
            Ok(sent)
        });
        let mut level = level0;
        while start.elapsed().as_secs_f64() < ESCALATION_FLOOD_SECS && !gen.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            if let Some(l) = scrape(&topo.rx).ok().as_deref().and_then(syn_level) {
                if l > level {
                    steps.push((l, start.elapsed().as_secs_f64()));
                    level = l;
                }
                if l >= 2 {
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        sent = gen
            .join()
            .map_err(|_| anyhow::anyhow!("generator panicked"))??;
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let counted = scrape(&topo.rx)
        .map(|m| packets_total(&m) - packets_total(&before))
        .unwrap_or(f64::NAN);
    drop(daemon);
    live::detach(spoofer.prog_mut(), idle);
    drop(topo);
    let offered = format!(
        "SYN flood from random sources: {:.2} Mpps offered, {:.2} M packets counted by the daemon's datapath in {secs:.0} s",
        sent as f64 / secs / 1e6,
        counted / 1e6
    );
    Ok(if steps.is_empty() {
        format!("no escalation within {ESCALATION_FLOOD_SECS:.0} s ({offered}; syn level stayed {level0})")
    } else {
        let s: Vec<String> = steps
            .iter()
            .map(|(l, t)| format!("level {l} after {t:.1} s"))
            .collect();
        format!("{} ({offered})", s.join(", "))
    })
}
