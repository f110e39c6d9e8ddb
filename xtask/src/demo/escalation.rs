//! The second half of the demo: the daemon defends on its own.
//!
//! A client uses two real services on the host (UDP echo, a tiny HTTP
//! responder); a UDP flood from four attacker addresses and a spoofed
//! random-source SYN flood (hping3) start together; the ladders climb
//! (UDP straight to auto-block, SYN through rate limits to SYN cookies);
//! the client keeps being served; the floods stop and, after the short
//! quiet period of the demo's config, each ladder steps down one level at a
//! time; a second short burst within the campaign window re-arms at once.
//! A live table, one row per second, shows it all.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{atomic::AtomicBool, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::{
    in_namespace,
    traffic::{self, Served, Traffic, ECHO_PORT, WEB_PORT},
    KillOnDrop, Lab, HOST_IP,
};
use crate::util;

/// Where the UDP flood comes from: four addresses of the attacker namespace,
/// in a /24 of their own (the host routes it back via the attacker).
pub const FLOOD_NET: &str = "10.77.1.0/24";
pub const FLOOD_SOURCES: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 77, 1, 1),
    Ipv4Addr::new(10, 77, 1, 2),
    Ipv4Addr::new(10, 77, 1, 3),
    Ipv4Addr::new(10, 77, 1, 4),
];
/// Datagrams per second from each flood source.
const UDP_FLOOD_PPS: u32 = 5_000;
/// hping3's gap between SYNs, microseconds (at most 25k SYN/s).
const SYN_GAP_US: u32 = 40;
const QUIET_SECS: u64 = 4;
const FLOOD_SECS: u64 = 8;
const STEP_DOWN_MAX_SECS: u64 = 25;
const REARM_SECS: u64 = 3;

const QUIET_PERIOD_SECS: u64 = 3;
const CAMPAIGN_WINDOW_SECS: u64 = 120;
const UDP_HOT_PPS: u64 = 3_000;
const SYN_HOT_PPS: u64 = 2_000;

/// The demo's config file: the packaged defaults with thresholds a lab
/// flood crosses and a short quiet period.
pub fn write_config(dir: &Path) -> Result<PathBuf> {
    let text = format!(
        r#"# Written by `cargo xtask demo`: packaging/mitigator.toml's defaults, except
# thresholds a lab flood of a few thousand packets per second crosses, and
# short timers so the whole story fits in a minute.

[defences]
# The host's TCP service listens on port {WEB_PORT}.
syn_cookie_ports = [{WEB_PORT}]

[escalation]
# Seconds of quiet before each step down (default 60).
quiet_secs = {QUIET_PERIOD_SECS}
# A new burst within this many seconds re-arms at once (default 6 h).
campaign_window_secs = {CAMPAIGN_WINDOW_SECS}

[escalation.auto_block]
ttl_secs = 60

[escalation.udp]
# Hot at {UDP_HOT_PPS} UDP packets/s (default 20k pps or 500 Mbit/s).
min_pps = {UDP_HOT_PPS}.0
min_bps = 0.0
rate_limit = {{ rate = 1000, burst = 2000 }}
# No per-port cap: the flood hits the port the client uses, and a cap
# would limit the client along with it.
defence = {{ rate = 0, burst = 0 }}

[escalation.syn]
# Hot at {SYN_HOT_PPS} SYNs/s (the default).
min_pps = {SYN_HOT_PPS}.0
# Random spoofed sources leave nothing to block: stop at SYN cookies.
max_level = 2
"#
    );
    let path = dir.join("demo.toml");
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "Its config, {}, is the packaged defaults (packaging/mitigator.toml)\n\
         with lab-sized numbers: UDP counts as a flood from {UDP_HOT_PPS} pps, SYN from {SYN_HOT_PPS} pps;\n\
         {QUIET_PERIOD_SECS} s of quiet before each step down; campaign window {CAMPAIGN_WINDOW_SECS} s.",
        path.display()
    );
    Ok(path)
}

/// One class in `status --json`.
#[derive(Clone, Copy, Debug, Default)]
struct ClassNow {
    level: u64,
    pps: f64,
    dropped_pps: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    udp: ClassNow,
    syn: ClassNow,
    auto_blocks: u64,
}

impl Snapshot {
    fn all_quiet(&self) -> bool {
        self.udp.level == 0 && self.syn.level == 0 && self.auto_blocks == 0
    }
}

/// The `escalation` part of `status --json`.
fn escalation_status(lab: &Lab) -> Result<Value> {
    let out = util::output(lab.client("status", &["--json"]).stdin(Stdio::null()))?;
    let mut doc: Value = serde_json::from_str(&out).context("reading `status --json`")?;
    let esc = doc["escalation"].take();
    if esc.is_null() {
        bail!("this build's `status` reports no escalation");
    }
    Ok(esc)
}

/// Returns just after the daemon has closed one of its 1 s detection
/// intervals: when the numbers in `status` change (they are recomputed
/// every interval). Gives up after 2.5 s.
fn after_interval(lab: &Lab) -> Result<Instant> {
    let first = escalation_status(lab)?;
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        util::check_interrupted()?;
        thread::sleep(Duration::from_millis(20));
        if escalation_status(lab)? != first {
            break;
        }
    }
    Ok(Instant::now())
}

fn snapshot(lab: &Lab) -> Result<Snapshot> {
    let esc = &escalation_status(lab)?;
    let mut snap = Snapshot {
        auto_blocks: esc["auto_blocks"].as_u64().unwrap_or(0),
        ..Default::default()
    };
    for c in esc["classes"].as_array().into_iter().flatten() {
        let now = ClassNow {
            level: c["level"].as_u64().unwrap_or(0),
            pps: c["numbers"]["pps"].as_f64().unwrap_or(0.0),
            dropped_pps: c["numbers"]["dropped_pps"].as_f64().unwrap_or(0.0),
        };
        match c["class"].as_str() {
            Some("udp") => snap.udp = now,
            Some("syn") => snap.syn = now,
            _ => {}
        }
    }
    Ok(snap)
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn level_label(class: &str, level: u64) -> String {
    let name = match (class, level) {
        (_, 0) => "observe",
        (_, 1) => "rate-limit",
        ("syn", 2) => "SYN cookies",
        ("udp", 2) => "amp-drop",
        (_, 2) => "defence",
        (_, 3) => "auto-block",
        _ => "upstream",
    };
    format!("{level} {name}")
}

fn ratio(ok: u64, failed: u64) -> String {
    format!("{ok}/{}", ok + failed)
}

/// One printed row.
#[derive(Clone, Copy, Debug)]
struct Row {
    phase: Phase,
    snap: Snapshot,
    served: Served,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Quiet,
    Flood,
    After,
    Rearm,
}

/// The live table: one row per second.
struct View<'a> {
    lab: &'a Lab,
    client: Arc<traffic::ClientCounts>,
    start: Instant,
    ticks: u64,
    last: Snapshot,
    served: Served,
    rows: Vec<Row>,
}

impl<'a> View<'a> {
    fn new(lab: &'a Lab, client: Arc<traffic::ClientCounts>) -> Result<Self> {
        // Rows come a quarter of a second after each interval closes, so
        // each shows the interval just closed; and a flood started right
        // after a row fills most of the daemon's next interval (see
        // `flood`). The first row skips one interval, which may still hold
        // step 3's traffic.
        let closed = after_interval(lab)?;
        let start = closed + Duration::from_millis(250);
        thread::sleep(start.saturating_duration_since(Instant::now()));
        let served = client.snapshot();
        Ok(View {
            lab,
            client,
            start,
            ticks: 0,
            last: snapshot(lab)?,
            served,
            rows: Vec::new(),
        })
    }

    fn header(&self) {
        println!(
            "\n  {:>4}  {:>7}  {:<12} {:>7}  {:<13} {:>8}  {:>6}  {:>10}  {:>10}  changes",
            "time",
            "udp pps",
            "udp level",
            "syn pps",
            "syn level",
            "dropped",
            "blocks",
            "client udp",
            "client tcp",
        );
    }

    /// Rows once a second for `secs` seconds, or until `done` holds.
    fn rows(&mut self, phase: Phase, secs: u64, done: impl Fn(&Snapshot) -> bool) -> Result<()> {
        for _ in 0..secs {
            self.ticks += 1;
            let due = self.start + Duration::from_secs(self.ticks);
            while Instant::now() < due {
                util::check_interrupted()?;
                thread::sleep((due - Instant::now()).min(Duration::from_millis(100)));
            }
            let snap = snapshot(self.lab)?;
            let now = self.client.snapshot();
            let served = now.since(&self.served);
            self.served = now;
            self.print(&snap, &served);
            self.rows.push(Row {
                phase,
                snap,
                served,
            });
            self.last = snap;
            if done(&snap) {
                break;
            }
        }
        Ok(())
    }

    fn print(&self, snap: &Snapshot, served: &Served) {
        let mut changes = Vec::new();
        for (name, before, now) in [
            ("udp", self.last.udp.level, snap.udp.level),
            ("syn", self.last.syn.level, snap.syn.level),
        ] {
            if before != now {
                changes.push(format!("{name} {before}→{now}"));
            }
        }
        match snap.auto_blocks.cmp(&self.last.auto_blocks) {
            std::cmp::Ordering::Greater => changes.push(format!(
                "+{} auto-block(s)",
                snap.auto_blocks - self.last.auto_blocks
            )),
            std::cmp::Ordering::Less => changes.push(format!(
                "-{} auto-block(s)",
                self.last.auto_blocks - snap.auto_blocks
            )),
            std::cmp::Ordering::Equal => {}
        }
        println!(
            "  {:>3}s  {:>7}  {:<12} {:>7}  {:<13} {:>8}  {:>6}  {:>10}  {:>10}  {}",
            self.ticks,
            human(snap.udp.pps),
            level_label("udp", snap.udp.level),
            human(snap.syn.pps),
            level_label("syn", snap.syn.level),
            human(snap.udp.dropped_pps + snap.syn.dropped_pps),
            snap.auto_blocks,
            ratio(served.udp_ok, served.udp_failed),
            ratio(served.tcp_ok, served.tcp_failed),
            changes.join(", ")
        );
    }

    /// The client's totals over the rows of `phase`.
    fn served_in(&self, phase: Phase) -> Served {
        self.rows
            .iter()
            .filter(|r| r.phase == phase)
            .fold(Served::default(), |a, r| Served {
                udp_ok: a.udp_ok + r.served.udp_ok,
                udp_failed: a.udp_failed + r.served.udp_failed,
                tcp_ok: a.tcp_ok + r.served.tcp_ok,
                tcp_failed: a.tcp_failed + r.served.tcp_failed,
            })
    }

    /// Seconds into `phase` of the first row where `f` holds.
    fn first_in(&self, phase: Phase, f: impl Fn(&Snapshot) -> bool) -> Option<usize> {
        self.rows
            .iter()
            .filter(|r| r.phase == phase)
            .position(|r| f(&r.snap))
            .map(|i| i + 1)
    }

    fn peak(&self, phase: Phase, f: impl Fn(&Snapshot) -> u64) -> u64 {
        self.rows
            .iter()
            .filter(|r| r.phase == phase)
            .map(|r| f(&r.snap))
            .max()
            .unwrap_or(0)
    }
}

/// Both floods at once (the SYN flood only with `syn`), for `secs`; returns
/// the number of UDP datagrams sent.
///
/// Called right after a row, so the floods start about a third of a second
/// into one of the daemon's 1 s detection intervals, and that interval is
/// already over the thresholds. Started late in an interval instead, a flood
/// can leave that interval under the step-up threshold: the daemon then
/// counts the flood's sources as legitimate traffic for it, and the
/// auto-block guard (`max_legit_share`) protects them for the whole
/// campaign. That onset case is reported to the escalation owners; the
/// demo does not provoke it.
fn flood(lab: &Lab, view: &mut View, phase: Phase, secs: u64, syn: bool) -> Result<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let to = SocketAddr::new(IpAddr::V4(HOST_IP.parse()?), ECHO_PORT);
    let udp = traffic::udp_flood(
        &lab.names.attacker,
        FLOOD_SOURCES.to_vec(),
        to,
        UDP_FLOOD_PPS,
        Duration::from_secs(secs),
        stop.clone(),
    )?;
    let mut hping = None;
    if syn {
        let mut cmd = in_namespace(&lab.names.attacker, Path::new("hping3"));
        cmd.args(["-q", "-S", "--rand-source", "-p", &WEB_PORT.to_string()])
            .args(["-i", &format!("u{SYN_GAP_US}"), HOST_IP])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        hping = Some(KillOnDrop(cmd.spawn().context("starting hping3")?));
    }
    let watched = view.rows(phase, secs, |_| false);
    // Stop both whatever happened; the UDP thread also stops at its own deadline.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(hping);
    let sent = udp
        .join()
        .map_err(|_| anyhow!("the flood thread panicked"))??;
    watched?;
    Ok(sent)
}

/// The escalation lines of the daemon's log since `from` bytes.
fn escalation_log(lab: &Lab, from: usize) -> Vec<String> {
    let text = fs::read_to_string(lab.log_path()).unwrap_or_default();
    text.get(from..)
        .unwrap_or_default()
        .lines()
        .map(super::strip_ansi)
        .filter(|l| l.contains("mitigator::escalation"))
        .collect()
}

fn log_len(lab: &Lab) -> usize {
    fs::metadata(lab.log_path()).map_or(0, |m| m.len() as usize)
}

/// "2026-01-01T00:00:00.123Z  INFO mitigator::escalation: udp escalated ... class=Udp ..."
/// -> "udp escalated ...", short.
fn short_event(line: &str) -> String {
    let msg = line
        .split_once("mitigator::escalation:")
        .map_or(line, |(_, m)| m)
        .trim();
    // Structured fields follow the message; keep the message.
    let msg = msg.split(" class=").next().unwrap_or(msg);
    let msg = msg.split(" action=").next().unwrap_or(msg);
    let msg = compact_numbers(&msg.replace(" for 1 interval(s)", ""));
    if msg.chars().count() > 160 {
        let cut: String = msg.chars().take(157).collect();
        format!("{cut}...")
    } else {
        msg
    }
}

/// "20.0k pps, 16.97Mbit/s (threshold 4.0k pps = max(3.0k floor, 5× baseline 20 pps))"
/// -> "20.0k pps (threshold 4.0k pps)": the packet numbers are what moved the ladder here.
fn compact_numbers(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" = max(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " = max(".len()..];
        // Skip to the parenthesis that closes "max(", nested ones included.
        let mut depth = 1;
        let mut end = after.len();
        for (j, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    // ", 16.97Mbit/s" after a pps figure.
    let mut text = String::with_capacity(out.len());
    for (k, part) in out.split(", ").enumerate() {
        let word = part.split(' ').next().unwrap_or_default();
        let bits = k > 0
            && word.ends_with("bit/s")
            && word
                .trim_end_matches("bit/s")
                .trim_end_matches(['k', 'M', 'G'])
                .parse::<f64>()
                .is_ok();
        if bits {
            text.push_str(&part[word.len()..]);
        } else {
            if k > 0 {
                text.push_str(", ");
            }
            text.push_str(part);
        }
    }
    text
}

fn print_events(lab: &Lab, from: usize, keep: impl Fn(&str) -> bool) {
    for line in escalation_log(lab, from) {
        let e = short_event(&line);
        if keep(&e) {
            println!("  {e}");
        }
    }
}

pub fn story(lab: &Lab) -> Result<()> {
    let syn = util::on_path("hping3");

    util::heading("Step 4: quiet traffic: a client uses two real services on the host");
    println!(
        "The demo starts a UDP echo service ({HOST_IP}:{ECHO_PORT}) and a small HTTP responder\n\
         ({HOST_IP}:{WEB_PORT}) in the host namespace. The client asks the echo service 20 times\n\
         a second and opens 10 TCP connections a second; each row counts its answers\n\
         (answered/asked). Meanwhile the daemon learns the baselines. `dropped` includes\n\
         SYNs answered with a cookie from XDP."
    );
    let traffic = Traffic::start(&lab.names.host, &lab.names.client, HOST_IP.parse()?)?;
    let mut view = View::new(lab, traffic.client.clone())?;
    view.header();
    view.rows(Phase::Quiet, QUIET_SECS, |_| false)?;
    let quiet = view.served_in(Phase::Quiet);
    if quiet.udp_ok == 0 || quiet.tcp_ok == 0 {
        bail!("the client got no answers before any flood: the lab network is not working");
    }

    util::heading("Step 5: a flood starts; the ladders climb on their own");
    println!(
        "From the attacker namespace: {} pps of UDP at the echo port from each of {} ({}),",
        UDP_FLOOD_PPS,
        FLOOD_SOURCES.len(),
        FLOOD_NET
    );
    if syn {
        println!(
            "and hping3 sends spoofed SYNs from random addresses to port {WEB_PORT} (up to {} k/s).",
            1000 / SYN_GAP_US
        );
    } else {
        println!(
            "(hping3 is not installed, so there is no SYN flood: `cargo xtask setup` adds it.)"
        );
    }
    println!(
        "Both are bounded to {FLOOD_SECS} s. Nobody touches the CLI: UDP goes straight to auto-block\n\
         (four addresses carry nearly all of it), SYN climbs rate-limit -> SYN cookies (random\n\
         sources leave nothing to block, so the demo config stops it there).\n\
         Levels: 0 observe, 1 per-source rate limits, 2 the class's defence (SYN cookies;\n\
         for UDP amplification drop), 3 auto-block of the heaviest source prefixes."
    );
    let log_mark = log_len(lab);
    view.header();
    let sent = flood(lab, &mut view, Phase::Flood, FLOOD_SECS, syn)?;
    println!("  (the UDP flood sent {sent} datagrams; the floods have stopped)");
    println!("\nThe auto-blocks are ordinary rules with source `auto` and a TTL:");
    lab.show("list", &[])?;

    util::heading("Step 6: the flood is over; after each quiet period the ladders step down");
    println!(
        "{QUIET_PERIOD_SECS} s of quiet before each step (the demo config's quiet_secs; 60 s by default), one\n\
         level at a time. Leaving auto-block removes the class's auto-blocks."
    );
    view.header();
    view.rows(Phase::After, STEP_DOWN_MAX_SECS, Snapshot::all_quiet)?;
    println!("\nEvery step is in the daemon's log with the numbers behind it:");
    print_events(lab, log_mark, |e| {
        !e.contains("refreshed") && !e.contains("dry run")
    });

    util::heading("Step 7: a second burst within the campaign window re-arms at once");
    println!(
        "Campaign memory: a new burst of the same kind within campaign_window_secs ({CAMPAIGN_WINDOW_SECS} s here,\n\
         6 h by default) goes straight back to the last campaign's level and blocks, without\n\
         climbing again. A {REARM_SECS} s burst:"
    );
    let log_mark = log_len(lab);
    view.header();
    flood(lab, &mut view, Phase::Rearm, REARM_SECS, syn)?;
    print_events(lab, log_mark, |e| e.contains("re-armed"));
    println!("(the lab is removed next, so these blocks go with it)");
    traffic.stop()?;

    summary(lab, &view, syn)
}

/// Every verdict reason with packets, from `stats --json`: "pass 1.2k, drop_blocklist 300k".
fn verdicts(lab: &Lab) -> Result<String> {
    let out = util::output(lab.client("stats", &["--json"]).stdin(Stdio::null()))?;
    let doc: Value = serde_json::from_str(&out).context("reading `stats --json`")?;
    let mut reasons: Vec<(String, u64)> = doc["reasons"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v["packets"].as_u64().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    Ok(reasons
        .iter()
        .map(|(k, n)| format!("{k} {}", human(*n as f64)))
        .collect::<Vec<_>>()
        .join(", "))
}

fn summary(lab: &Lab, view: &View, syn: bool) -> Result<()> {
    util::heading("Summary");
    let during = view.served_in(Phase::Flood);
    let pct = |ok: u64, failed: u64| {
        if ok + failed == 0 {
            0.0
        } else {
            100.0 * ok as f64 / (ok + failed) as f64
        }
    };
    let udp_pct = pct(during.udp_ok, during.udp_failed);
    let tcp_pct = pct(during.tcp_ok, during.tcp_failed);
    let blocked_at = view.first_in(Phase::Flood, |s| s.auto_blocks > 0);
    let cookies_at = view.first_in(Phase::Flood, |s| s.syn.level >= 2);
    let down_after = view.first_in(Phase::After, Snapshot::all_quiet);
    let rearmed_at = view.first_in(Phase::Rearm, |s| s.udp.level >= 3);
    let secs = |s: Option<usize>| s.map_or("never".to_string(), |s| format!("{s} s"));
    println!(
        "  UDP flood: auto-blocked within {} of its start ({} prefix(es)), level {} at most",
        secs(blocked_at),
        view.peak(Phase::Flood, |s| s.auto_blocks),
        view.peak(Phase::Flood, |s| s.udp.level)
    );
    if syn {
        println!(
            "  SYN flood: SYN cookies from XDP within {} of its start",
            secs(cookies_at)
        );
    }
    println!(
        "  client during the flood: {}/{} UDP answers ({udp_pct:.1}%), {}/{} TCP requests ({tcp_pct:.1}%)",
        during.udp_ok,
        during.udp_ok + during.udp_failed,
        during.tcp_ok,
        during.tcp_ok + during.tcp_failed
    );
    println!(
        "  back to observe with no auto-blocks: within {} of the flood stopping",
        secs(down_after)
    );
    println!(
        "  second burst: UDP back at auto-block within {}",
        secs(rearmed_at)
    );
    println!(
        "  XDP verdicts in all (`mitigator stats`): {}",
        verdicts(lab)?
    );
    if syn {
        println!(
            "  (tx_syn_cookie: SYN-ACKs sent from XDP; pass_cookie_ack: handshakes completed with\n\
             \x20  one, the client's among them)"
        );
    }

    let mut failures = Vec::new();
    if blocked_at.is_none() {
        failures.push("the UDP flood was never auto-blocked".to_string());
    }
    if syn && cookies_at.is_none() {
        failures.push("SYN cookies never engaged".to_string());
    }
    if udp_pct < 90.0 || tcp_pct < 90.0 {
        failures.push(format!(
            "the client was served too rarely during the flood (UDP {udp_pct:.1}%, TCP {tcp_pct:.1}%)"
        ));
    }
    if down_after.is_none() {
        failures.push(format!(
            "the ladders had not stepped down within {STEP_DOWN_MAX_SECS} s"
        ));
    }
    if rearmed_at.is_none() {
        failures.push("the second burst did not re-arm".to_string());
    }
    if !failures.is_empty() {
        bail!("the demo's expectations failed: {}", failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_shortened_to_the_packet_numbers() {
        let line = "2026-11-22T02:09:25.164Z  INFO mitigator::escalation: udp escalated 0 (observe) -> 3 (auto-block): \
                    14.8k pps, 12.58Mbit/s (threshold 4.0k pps = max(3.0k floor, 5× baseline 798 pps)) for 1 interval(s); \
                    4 blockable prefix(es) carry 99% of it (≥ 50%): straight to auto-block class=Udp from=0 to=3 dry_run=false";
        assert_eq!(
            short_event(line),
            "udp escalated 0 (observe) -> 3 (auto-block): 14.8k pps (threshold 4.0k pps); \
             4 blockable prefix(es) carry 99% of it (≥ 50%): straight to auto-block"
        );
    }
}
