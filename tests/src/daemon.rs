//! The real `mitigator` binary: start the daemon in a lab namespace, wait
//! until it answers, run CLI commands against its socket, stop it on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::lab::Lab;

/// The binary under test: $MITIGATOR_BIN, else the workspace's release build.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MITIGATOR_BIN") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let object = root.join("target/ebpf/bpfel-unknown-none/release/mitigator");
    let bin = root.join("target/release/mitigator");
    (bin.exists() && object.exists()).then_some(bin)
}

/// Result of one CLI call.
#[derive(Debug)]
pub struct CliResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CliResult {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl CliResult {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub pin_root: PathBuf,
    pub log: PathBuf,
    namespace: String,
    iface: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `mitigator run` on the lab's protected interface.
    pub fn start(lab: &Lab, extra: &[&str]) -> Result<Self> {
        let mut d = Self::unstarted(lab)?;
        d.spawn(extra)?;
        Ok(d)
    }

    /// (Re)starts the daemon process with the same socket, state and pins.
    pub fn spawn(&mut self, extra: &[&str]) -> Result<()> {
        self.spawn_within(extra, Duration::from_secs(10))
    }

    fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.cli(&["status", "--json"]).code == 0 {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "daemon exited with {status} before it was ready:\n{}",
                        self.log_text()
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!("daemon not ready within {within:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `mitigator ARGS --socket <ours>` and returns exit code and output.
    pub fn cli(&self, args: &[&str]) -> CliResult {
        let bin = binary().expect("binary checked by require_privileges");
        Command::new(bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run mitigator CLI")
            .into()
    }

    /// `cli` that must succeed.
    pub fn ok(&self, args: &[&str]) -> CliResult {
        let r = self.cli(args);
        assert_eq!(
            r.code, 0,
            "mitigator {args:?} failed: {}{}",
            r.stdout, r.stderr
        );
        r
    }

    /// Sends a signal and waits for the process (bounded).
    pub fn stop_with(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("daemon not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                bail!("daemon did not stop within 10s after {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// All packets of one traffic class, whatever the verdict.
    pub fn counter_class(&self, class: &str) -> u64 {
        let stats = self.ok(&["stats", "--json"]).json();
        stats["classes"][class]["packets"].as_u64().unwrap_or(0)
    }

    /// The counter of one (reason, class) cell from `stats --json`.
    pub fn counter(&self, reason: &str, class: &str) -> u64 {
        let stats = self.ok(&["stats", "--json"]).json();
        stats["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["reason"] == reason && c["class"] == class)
            .map_or(0, |c| c["packets"].as_u64().unwrap())
    }
}

/// Helpers added for the contract, fail-static and concurrency tests.
impl Daemon {
    /// A daemon's directories and paths for `lab`, without starting it (to
    /// plant a state file first, or to run it in the foreground).
    pub fn unstarted(lab: &Lab) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/mitigator-test-{}", lab.protected));
        Ok(Self {
            child: None,
            socket: dir.path().join("mitigator.sock"),
            state_dir: dir.path().join("state"),
            pin_root,
            log: dir.path().join("daemon.log"),
            namespace: lab.protected.clone(),
            iface: lab.iface.clone(),
            _dir: dir,
        })
    }

    /// `spawn`, allowing `within` to become ready (a million rules to restore).
    pub fn spawn_within(&mut self, extra: &[&str], within: Duration) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .run_command(extra)?
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn mitigator run")?;
        self.child = Some(child);
        self.wait_ready(within)
    }

    /// The daemon's log without terminal colour codes.
    pub fn log_plain(&self) -> String {
        let log = self.log_text();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // CSI: ESC [ parameters final-byte
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The rule store file the daemon writes.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("rules.json")
    }

    /// The directory holding this daemon's pinned link and maps.
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(&self.iface)
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the daemon process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `mitigator run` on the lab interface with this daemon's socket, state
    /// and pins, inside the protected namespace.
    fn run_command(&self, extra: &[&str]) -> Result<Command> {
        let bin = binary().context("mitigator binary not found")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", Lab::netns_path(&self.namespace)))
            .arg(&bin)
            .args(["run", "--iface", &self.iface, "--socket"])
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--pin-root")
            .arg(&self.pin_root)
            .args(extra);
        Ok(cmd)
    }

    /// Runs `mitigator run` in the foreground with this daemon's paths and
    /// returns how it ended; for runs that must refuse to start. A run still
    /// going after `within` is killed and reported as an error.
    pub fn run_to_exit(&self, extra: &[&str], within: Duration) -> Result<CliResult> {
        let mut child = self
            .run_command(extra)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn mitigator run")?;
        let deadline = Instant::now() + within;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(child.wait_with_output()?.into());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let out: CliResult = child.wait_with_output()?.into();
                bail!(
                    "mitigator run still running after {within:?}: {}",
                    out.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the CLI as another user (uid and gid, no supplementary groups),
    /// e.g. 65534 for nobody.
    pub fn cli_as(&self, uid: u32, gid: u32, args: &[&str]) -> CliResult {
        use std::os::unix::process::CommandExt;
        let bin = binary().expect("binary checked by require_privileges");
        Command::new(bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .uid(uid)
            .gid(gid) // std drops root's supplementary groups with setuid
            .output()
            .expect("run mitigator CLI as another user")
            .into()
    }

    /// Writes raw bytes to the control socket (from a second thread, so a
    /// daemon that answers before reading everything cannot deadlock us)
    /// and returns the reply line (empty if the daemon sent none).
    pub fn raw_request(&self, bytes: Vec<u8>) -> Result<String> {
        use std::io::{BufRead, BufReader, Write};
        let stream = std::os::unix::net::UnixStream::connect(&self.socket)
            .with_context(|| format!("connect {}", self.socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut writer = stream.try_clone()?;
        let sender = std::thread::spawn(move || {
            // The daemon may hang up before taking it all: that is fine.
            let _ = writer.write_all(&bytes);
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let _ = stream.shutdown(std::net::Shutdown::Both);
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
        Ok(line)
    }

    /// The rules from `list --json`.
    pub fn rules(&self) -> Vec<serde_json::Value> {
        self.ok(&["list", "--json"]).json()["rules"]
            .as_array()
            .expect("list --json has a rules array")
            .clone()
    }

    /// `kind prefix` for every rule from `list --json`, sorted.
    pub fn rule_set(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .rules()
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["kind"].as_str().unwrap(),
                    r["prefix"].as_str().unwrap()
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Polls `f` every 20 ms until it returns true or `within` passes.
    pub fn poll(within: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if f() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_with(nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}
