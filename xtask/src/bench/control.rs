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
    fn start(binary: &Path, ns: &Netns, iface: &str, dir: &Path, pin_root: &str) -> Result<Self> {
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
        let daemon = Daemon::start(binary, &ns, &a, &dir, &pin_root)?;
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

    let help = util::capture(Command::new(binary).args(["run", "--help"]))
        .map(|o| String::from_utf8_lossy(&o.stdout).to_lowercase())
        .unwrap_or_default();
    let escalation = if help.contains("escalat") {
        "the daemon mentions escalation, but the bench does not drive it yet".to_string()
    } else {
        "not available yet (the daemon has no automatic escalation at this commit)".to_string()
    };
    drop(ns);
    Ok(Results {
        idle_rss_kib: idle_rss,
        applies,
        escalation,
    })
}
