//! `cargo xtask demo`: a narrated lab in network namespaces.
//!
//! ```text
//!  client ns              bridge ns (br0)                 host ns
//!  eth0 10.77.0.10 ─veth─ to-client ──┐
//!                                     br0 ─ to-host ─veth─ mtg0 10.77.0.1  <- XDP (mitigator run)
//!  eth0 10.77.0.66 ─veth─ to-attacker ┘   (XDP_PASS)       UDP listener :9000 (step 3)
//!       10.77.1.1-4 (UDP flood sources)                    UDP echo :7, HTTP :80 (steps 4-7)
//!  attacker ns
//! ```
//!
//! Everything reaches the host through one interface, `mtg0`, which is the
//! one the daemon protects. The story, in two parts:
//!
//! 1. By hand (step 3): client and attacker both get through; the operator
//!    blocks the attacker's address; only the client gets through; the
//!    operator unblocks.
//! 2. On its own (steps 4-7, [`escalation`]): a client uses real services;
//!    a UDP flood and a spoofed SYN flood start; the ladders climb
//!    (auto-blocks, SYN cookies) while the client keeps being served; the
//!    floods stop and the ladders step down after the quiet period; a
//!    second burst re-arms at once. A live table shows it, a row a second.
//!
//! SYN cookies from XDP leave `mtg0` with XDP_TX, and a veth only delivers
//! such frames when its peer runs an XDP program too: the bridge side,
//! `to-host`, gets a two-instruction XDP_PASS program ([`net::XdpPass`]).
//!
//! All traffic stays between namespaces this lab creates, and every
//! traffic loop is bounded in time. A guard tears everything down on
//! success, on error and on Ctrl-C; leftovers of a crashed earlier run are
//! removed at start.

mod escalation;
mod net;
mod traffic;

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{build, util};

const PREFIX: &str = "mtg-demo-";
const PORT: u16 = 9000;
const HOST_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.10";
const ATTACKER_IP: &str = "10.77.0.66";
const BPFFS: &str = "/sys/fs/bpf";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Args {
    /// Use the existing target/release/mitigator instead of building first.
    #[arg(long)]
    no_build: bool,
    /// Datagrams each sender sends per round (at most 10000).
    #[arg(long, default_value_t = 200)]
    count: u32,
    /// Datagrams per second per sender (at most 100000).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
}

/// The lab's namespace names, unique to this run.
struct Names {
    host: String,
    net: String,
    client: String,
    attacker: String,
}

impl Names {
    fn new(tag: u32) -> Self {
        Names {
            host: format!("{PREFIX}host-{tag}"),
            net: format!("{PREFIX}net-{tag}"),
            client: format!("{PREFIX}client-{tag}"),
            attacker: format!("{PREFIX}attacker-{tag}"),
        }
    }
}

/// Everything the lab created. Dropping it tears the lab down.
struct Lab {
    names: Names,
    dir: PathBuf,
    bin: PathBuf,
    socket: PathBuf,
    /// bpffs directory for the daemon's pins, so they cannot clash with a
    /// real daemon's (under /sys/fs/bpf/mitigator) or another demo's.
    pin_root: PathBuf,
    namespaces: Vec<String>,
    daemon: Option<Child>,
    /// The XDP_PASS program on the bridge side of the host's veth.
    xdp_pass: Option<net::XdpPass>,
}

impl Lab {
    fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// `mitigator SUB --socket S ARGS...`
    fn client(&self, sub: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(sub).arg("--socket").arg(&self.socket).args(args);
        cmd
    }

    /// Show and run a mitigator client command; its output goes to the terminal.
    fn show(&self, sub: &str, args: &[&str]) -> Result<()> {
        let mut cmd = self.client(sub, args);
        println!("$ {}", self.render(&cmd));
        util::run_quiet(&mut cmd)
    }

    /// Like `show`, but a failure (say, a subcommand not written yet) is only noted.
    fn show_optional(&self, sub: &str, args: &[&str]) {
        if let Err(e) = self.show(sub, args) {
            println!("  (not available yet in this build: {e:#})");
        }
    }

    fn render(&self, cmd: &Command) -> String {
        let line = util::render(cmd);
        line.replacen(&self.bin.display().to_string(), "mitigator", 1)
    }

    fn tail_log(&self, lines: usize) {
        let Ok(text) = fs::read_to_string(self.log_path()) else {
            return;
        };
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        eprintln!(
            "--- last lines of the daemon log ({}) ---",
            self.log_path().display()
        );
        for line in &all[start..] {
            eprintln!("  {}", strip_ansi(line));
        }
        eprintln!("---");
    }

    fn stop_daemon(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            println!("daemon had already exited ({status})");
            return;
        }
        println!(
            "$ kill -TERM {}   # stop the daemon; --detach-on-exit removes the XDP program",
            child.id()
        );
        // SAFETY: kill on a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => {
                    println!("daemon stopped ({status})");
                    return;
                }
                Ok(None) => thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        eprintln!("daemon did not stop within {STOP_TIMEOUT:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    fn cleanup(&mut self) {
        util::heading("Cleaning up");
        self.stop_daemon();
        self.xdp_pass = None;
        for ns in std::mem::take(&mut self.namespaces).iter().rev() {
            delete_namespace(ns, true);
        }
        let _ = fs::remove_dir_all(&self.dir);
        // Only left behind if the daemon had to be killed.
        let _ = fs::remove_dir_all(&self.pin_root);
        println!("lab removed");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Drop terminal colour sequences (ESC [ ... letter) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
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

/// A child process that is killed if it is still running when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `ip netns del NAME`, immune to a second Ctrl-C.
fn delete_namespace(ns: &str, show: bool) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "del", ns])
        .process_group(0)
        .stderr(Stdio::null());
    if show {
        println!("$ {}", util::render(&cmd));
    }
    let _ = cmd.status();
}

/// Ask the kernel to send `signal` to the child when we die, so nothing
/// outlives a crashed or killed xtask.
fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `nsenter --net=/run/netns/NS PROGRAM`: only the network namespace
/// changes. (`ip netns exec` would also remount /sys, which hides bpffs.)
fn in_namespace(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg(program);
    die_with_parent(&mut cmd, libc::SIGKILL);
    cmd
}

/// `ip ARGS`, quietly (the diagram says what is built); fails with ip's message.
fn ip(args: &[&str]) -> Result<()> {
    util::output(Command::new("ip").args(args)).map(|_| ())
}

/// Remove namespaces and directories of earlier runs whose xtask is gone.
fn remove_leftovers() -> Result<()> {
    let own = std::process::id().to_string();
    let alive = |tag: &str| tag == own || Path::new("/proc").join(tag).exists();
    let list = util::output(Command::new("ip").args(["netns", "list"]))?;
    let stale: Vec<&str> = list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .filter(|name| !alive(name.rsplit('-').next().unwrap_or_default()))
        .collect();
    if !stale.is_empty() {
        println!("removing namespaces left over by an earlier run that did not finish:");
        for ns in stale {
            delete_namespace(ns, true);
        }
    }
    for parent in [std::env::temp_dir(), PathBuf::from(BPFFS)] {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(tag) = name.strip_prefix(PREFIX) {
                if !alive(tag) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    Ok(())
}

fn preflight() -> Result<()> {
    if !util::is_root() {
        bail!(
            "the demo needs root: it creates network namespaces and attaches an XDP program. \
             Run `cargo xtask demo` as root."
        );
    }
    let problems = util::kernel_problems();
    if !problems.is_empty() {
        bail!(
            "the demo needs Linux >= 5.15 with BTF: {}",
            problems.join("; ")
        );
    }
    for tool in ["ip", "nsenter"] {
        if !util::on_path(tool) {
            bail!("`{tool}` is not installed (packages iproute2, util-linux; see `cargo xtask setup`)");
        }
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    if args.count == 0 || args.count > 10_000 || args.rate == 0 || args.rate > 100_000 {
        bail!("--count must be 1..=10000 and --rate 1..=100000");
    }
    preflight()?;
    util::catch_interrupts();

    println!("mitigator demo lab");
    println!("==================");
    println!(
        "This lab builds a tiny network in namespaces and starts the mitigator daemon on the\n\
         host's interface. An operator blocks an attacker by hand; then floods start and the\n\
         daemon defends on its own while a client keeps being served, and stands down after.\n\
         About a minute; Ctrl-C at any time cleans everything up."
    );

    let bin = if args.no_build {
        let bin = build::binary_path();
        if !bin.is_file() {
            bail!("{} does not exist: run without --no-build", bin.display());
        }
        bin
    } else {
        util::heading("Step 0: build the XDP program and the mitigator binary");
        build::build_all()?.binary
    };
    util::check_interrupted()?;

    remove_leftovers()?;
    let tag = std::process::id();
    let dir = std::env::temp_dir().join(format!("{PREFIX}{tag}"));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut lab = Lab {
        names: Names::new(tag),
        socket: dir.join("mitigator.sock"),
        pin_root: Path::new(BPFFS).join(format!("{PREFIX}{tag}")),
        dir,
        bin,
        namespaces: Vec::new(),
        daemon: None,
        xdp_pass: None,
    };
    let result = story(&mut lab, args);
    if let Err(e) = &result {
        eprintln!("\nthe demo stopped: {e:#}");
        lab.tail_log(30);
    }
    drop(lab);
    result
}

fn story(lab: &mut Lab, args: &Args) -> Result<()> {
    build_network(lab)?;
    util::check_interrupted()?;
    start_daemon(lab)?;
    util::check_interrupted()?;
    by_hand(lab, args)?;
    util::check_interrupted()?;
    escalation::story(lab)?;
    println!(
        "\nAll as expected. Next: README.md, sections \"Operating\" (also `mitigator top` for the\n\
         heaviest sources live, `mitigator escalate CLASS LEVEL|auto` to pin a ladder) and \"Escalation\"."
    );
    Ok(())
}

/// Step 3: the operator blocks and unblocks an address with the CLI.
fn by_hand(lab: &Lab, args: &Args) -> Result<()> {
    util::heading("Step 3: by hand: the operator blocks an address, then lifts the block");
    println!(
        "The client ({CLIENT_IP}) and the attacker ({ATTACKER_IP}) each send {} UDP datagrams to a\n\
         listener on {HOST_IP}:{PORT} that counts them per source: once before the block, once\n\
         while blocked, once after. A block goes into the XDP program's blocklist (an LPM\n\
         trie) and into the rule store on disk.",
        args.count
    );
    let before = round(lab, args)?;
    let min = args.count * 9 / 10;
    if before.client < min || before.attacker < min {
        bail!("baseline traffic did not get through, so the lab network is not working");
    }
    lab.show(
        "block",
        &[&format!("{ATTACKER_IP}/32"), "--reason", "demo attacker"],
    )?;
    lab.show_optional("list", &[]);
    let blocked = round(lab, args)?;
    let dropped = drop_blocklist(lab);
    lab.show("unblock", &[&format!("{ATTACKER_IP}/32")])?;
    let after = round(lab, args)?;

    println!(
        "\n                      client  attacker   (received of {} sent each)",
        args.count
    );
    println!(
        "  before the block  {:>8}  {:>8}",
        before.client, before.attacker
    );
    println!(
        "  while blocked     {:>8}  {:>8}   dropped in XDP (drop_blocklist): {}",
        blocked.client,
        blocked.attacker,
        dropped.map_or("?".into(), |n| n.to_string())
    );
    println!(
        "  after unblock     {:>8}  {:>8}",
        after.client, after.attacker
    );
    let mut failures = Vec::new();
    if blocked.attacker != 0 {
        failures.push(format!(
            "{} attacker datagrams got through the block",
            blocked.attacker
        ));
    }
    if blocked.client < min {
        failures.push(format!(
            "only {} of the client's datagrams got through",
            blocked.client
        ));
    }
    if after.attacker < min {
        failures.push(format!(
            "after unblock only {} attacker datagrams got through",
            after.attacker
        ));
    }
    if !failures.is_empty() {
        bail!("the demo's expectations failed: {}", failures.join("; "));
    }
    Ok(())
}

fn build_network(lab: &mut Lab) -> Result<()> {
    util::heading("Step 1: build the lab network");
    let n = &lab.names;
    println!(
        "Four network namespaces: `{}` (the protected host), `{}` and\n\
         `{}` (two senders), joined by a bridge in `{}`.\n\
         Everything reaches the host through one interface, mtg0, where mitigator attaches.\n",
        n.host, n.client, n.attacker, n.net
    );
    let nw = n.client.len().max(n.attacker.len());
    let left = [
        format!("client   {:<nw$}  eth0 {CLIENT_IP}", n.client),
        format!("attacker {:<nw$}  eth0 {ATTACKER_IP}", n.attacker),
    ];
    let w = left.iter().map(String::len).max().unwrap_or(0);
    println!("  {:<w$} ──┐", left[0]);
    println!(
        "  {:<w$}   br0 ── mtg0 {HOST_IP}  in {}  <- XDP here",
        "", n.host
    );
    println!("  {:<w$} ──┘   (bridge in {})\n", left[1], n.net);
    let (host, net, client, attacker) = (
        n.host.clone(),
        n.net.clone(),
        n.client.clone(),
        n.attacker.clone(),
    );
    for ns in [&host, &net, &client, &attacker] {
        // Recorded first, so that a half-made lab is removed too.
        lab.namespaces.push(ns.clone());
        ip(&["netns", "add", ns])?;
    }
    ip(&["-n", &net, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &net, "link", "set", "br0", "up"])?;
    for (port, peer_ns, peer, addr) in [
        ("to-host", &host, "mtg0", HOST_IP),
        ("to-client", &client, "eth0", CLIENT_IP),
        ("to-attacker", &attacker, "eth0", ATTACKER_IP),
    ] {
        ip(&[
            "-n", &net, "link", "add", port, "type", "veth", "peer", "name", peer, "netns", peer_ns,
        ])?;
        ip(&["-n", &net, "link", "set", port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            peer_ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            peer,
        ])?;
        ip(&["-n", peer_ns, "link", "set", peer, "up"])?;
        ip(&["-n", peer_ns, "link", "set", "lo", "up"])?;
    }
    // The flood sources (steps 5 and 7): more addresses of the attacker, in a
    // /24 of their own, which the host routes back through the attacker.
    for src in escalation::FLOOD_SOURCES {
        ip(&[
            "-n",
            &attacker,
            "addr",
            "add",
            &format!("{src}/24"),
            "dev",
            "eth0",
        ])?;
    }
    ip(&[
        "-n",
        &host,
        "route",
        "add",
        escalation::FLOOD_NET,
        "via",
        ATTACKER_IP,
    ])?;
    // SYN cookies from XDP leave mtg0 with XDP_TX; veth hands such frames to
    // its peer only when the peer runs an XDP program as well.
    lab.xdp_pass = Some(net::XdpPass::attach(&net, "to-host")?);
    println!(
        "Also: the attacker has four more addresses in {} for the flood later, and the bridge\n\
         side of the host's veth (to-host) runs a two-instruction XDP_PASS program, so that\n\
         SYN-ACKs the XDP program sends back (XDP_TX) reach the bridge: a veth delivers\n\
         XDP_TX frames only to a peer that runs XDP too.",
        escalation::FLOOD_NET
    );
    Ok(())
}

fn start_daemon(lab: &mut Lab) -> Result<()> {
    util::heading("Step 2: start the daemon on mtg0");
    println!(
        "`mitigator run` loads the XDP program, attaches it to mtg0 and listens for operator\n\
         commands on a Unix socket. --detach-on-exit removes the program when it stops.\n\
         (Its log goes to {}.)",
        lab.log_path().display()
    );
    let config = escalation::write_config(&lab.dir)?;
    let log = fs::File::create(lab.log_path())?;
    let mut cmd = in_namespace(&lab.names.host, &lab.bin);
    cmd.arg("run")
        .args(["--iface", "mtg0", "--socket"])
        .arg(&lab.socket)
        .arg("--state-dir")
        .arg(lab.dir.join("state"))
        .arg("--pin-root")
        .arg(&lab.pin_root)
        .arg("--detach-on-exit")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C reaches us, and the guard stops the
        // daemon with SIGTERM so it can detach cleanly.
        .process_group(0);
    die_with_parent(&mut cmd, libc::SIGTERM);
    println!("$ {}", lab.render(&cmd));
    lab.daemon = Some(cmd.spawn().context("starting the daemon")?);

    // Ready when `mitigator status` answers (or `stats`, on builds without status).
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        util::check_interrupted()?;
        if let Some(child) = lab.daemon.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("the daemon exited during start-up ({status})");
            }
        }
        for (sub, args) in [("status", &[][..]), ("stats", &["--json"][..])] {
            let out = util::capture(lab.client(sub, args).stdin(Stdio::null()))?;
            if out.status.success() {
                println!("daemon is ready; asking it how it is doing:");
                lab.show_optional("status", &[]);
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the daemon did not answer on {} within {READY_TIMEOUT:?}",
                lab.socket.display()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// What the listener saw in one round.
struct Counts {
    client: u32,
    attacker: u32,
}

/// One round of traffic: start the listener, run both senders, collect counts.
fn round(lab: &Lab, args: &Args) -> Result<Counts> {
    let me = std::env::current_exe().context("finding the xtask binary")?;
    let send_secs = u64::from(args.count.div_ceil(args.rate));
    let limit = (send_secs + 15).min(120);

    let mut listen = in_namespace(&lab.names.host, &me);
    listen
        .args([
            "lab-listen",
            "--port",
            &PORT.to_string(),
            "--seconds",
            &limit.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut listener = KillOnDrop(listen.spawn().context("starting the listener")?);
    let stdout = listener.0.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = next_line(&rx, Duration::from_secs(10)).context("the listener did not start")?;
    if !first.contains("ready") {
        bail!("unexpected listener output: {first}");
    }

    let to = format!("{HOST_IP}:{PORT}");
    let mut senders = Vec::new();
    for (who, ns) in [
        ("client", &lab.names.client),
        ("attacker", &lab.names.attacker),
    ] {
        let mut cmd = in_namespace(ns, &me);
        cmd.args(["lab-send", "--to", &to])
            .args([
                "--count",
                &args.count.to_string(),
                "--rate",
                &args.rate.to_string(),
            ])
            .stdout(Stdio::piped());
        senders.push((
            who,
            cmd.spawn()
                .with_context(|| format!("starting the {who} sender"))?,
        ));
    }
    let mut sent = BTreeMap::new();
    for (who, child) in senders {
        let out = child.wait_with_output()?;
        util::check_interrupted()?;
        if !out.status.success() {
            bail!("the {who} sender failed ({})", out.status);
        }
        let doc: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("reading the {who} sender's report"))?;
        sent.insert(who, doc["sent"].as_u64().unwrap_or(0));
    }

    // Closing stdin tells the listener the senders are done.
    drop(listener.0.stdin.take());
    let last =
        next_line(&rx, Duration::from_secs(limit + 5)).context("the listener did not report")?;
    let doc: Value = serde_json::from_str(&last)
        .with_context(|| format!("reading the listener's report: {last}"))?;
    let got = |ip: &str| doc["by_source"][ip].as_u64().unwrap_or(0) as u32;
    for (who, n) in &sent {
        if *n != u64::from(args.count) {
            println!(
                "  (the {who} sender sent only {n} of {} datagrams)",
                args.count
            );
        }
    }
    Ok(Counts {
        client: got(CLIENT_IP),
        attacker: got(ATTACKER_IP),
    })
}

fn next_line(rx: &mpsc::Receiver<String>, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        util::check_interrupted()?;
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => return Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("timed out after {timeout:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(anyhow!("it exited")),
        }
    }
}

/// The blocklist drop count from `stats --json`, wherever the daemon puts it.
fn drop_blocklist(lab: &Lab) -> Option<u64> {
    let out = util::output(&mut lab.client("stats", &["--json"])).ok()?;
    let doc: Value = serde_json::from_str(&out).ok()?;
    find_blocklist(&doc)
}

fn find_blocklist(v: &Value) -> Option<u64> {
    match v {
        Value::Object(map) => {
            if let Some(hit) = map.get("drop_blocklist") {
                return hit.as_u64().or_else(|| hit["packets"].as_u64());
            }
            if map.values().any(|x| x == "drop_blocklist") {
                if let Some(n) = map.get("packets").and_then(Value::as_u64) {
                    return Some(n);
                }
            }
            map.values().find_map(find_blocklist)
        }
        Value::Array(items) => items.iter().find_map(find_blocklist),
        _ => None,
    }
}
