//! Fail-static: enforcement outlives the daemon. A daemon killed with -9
//! while a blocked source floods leaves the XDP program attached and its
//! maps pinned, so not one blocked packet gets through; a new daemon adopts
//! the pins with the same rules. A clean stop keeps enforcing unless told
//! to detach, and then removes everything it pinned. A corrupt state file
//! stops the daemon before it touches anything, and is never overwritten.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use mitigator_tests::{
    daemon::Daemon,
    lab::Lab,
    require_privileges,
    traffic::{send_udp, UdpCounter, UdpStream},
};
use nix::sys::signal::Signal;
use serde_json::Value;

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The rules from `list --json` without their hit counters (which move).
fn rules_without_hits(d: &Daemon) -> Vec<Value> {
    d.rules()
        .into_iter()
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("packets");
            o.remove("bytes");
            r
        })
        .collect()
}

/// Names of the files in the daemon's pin directory (link and maps).
fn pins(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.pin_dir())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn has_link_pin(pins: &[String]) -> bool {
    pins.iter().any(|p| p == "link-native" || p == "link-skb")
}

/// Polls until `stream` has sent `n` more datagrams than `from` (bounded).
fn wait_sent(stream: &UdpStream, from: u64, n: u64) {
    assert!(
        Daemon::poll(Duration::from_secs(10), || stream.sent() >= from + n),
        "sender stalled at {} (wanted {})",
        stream.sent(),
        from + n
    );
}

struct Flood {
    lab: Lab,
    listener: UdpCounter,
    dst: SocketAddr,
    attacker: IpAddr,
    client: IpAddr,
}

/// A lab with a listener on the protected side and neighbours resolved.
fn flood_lab(tag: &str) -> Flood {
    let lab = Lab::new(tag).unwrap();
    lab.add_peer_addr("10.201.0.66/24").unwrap();
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(90)).unwrap();
    let client = addr("10.201.0.2");
    send_udp(&lab.peer, client, dst, 1).unwrap();
    assert_eq!(listener.wait_for(client, 1, Duration::from_secs(5)), 1);
    Flood {
        lab,
        listener,
        dst,
        attacker: addr("10.201.0.66"),
        client,
    }
}

#[test]
fn kill_9_under_a_flood_lets_nothing_through_and_a_new_daemon_adopts() {
    require_privileges!();
    let f = flood_lab("k9");
    let mut daemon = Daemon::start(&f.lab, &[]).unwrap();
    daemon.ok(&["block", "10.201.0.64/26", "--reason", "flood source"]);
    daemon.ok(&["block", "2001:db8:bad::/48", "--ttl", "1h"]);
    daemon.ok(&["allow", "10.201.0.2", "--reason", "monitoring"]);
    let rules_before = rules_without_hits(&daemon);
    let drops_before = daemon.counter("drop_blocklist", "udp");
    let pins_before = pins(&daemon);
    assert!(has_link_pin(&pins_before), "{pins_before:?}");

    // Both sources send continuously: about 16,000/s blocked, 1000/s clean.
    let attack = UdpStream::start(
        &f.lab.peer,
        f.attacker,
        f.dst,
        16,
        100_000,
        Duration::from_secs(10),
    )
    .unwrap();
    let clean = UdpStream::start(
        &f.lab.peer,
        f.client,
        f.dst,
        1,
        10_000,
        Duration::from_secs(10),
    )
    .unwrap();
    wait_sent(&attack, 0, 1000);

    // kill -9: no chance to clean up.
    let status = daemon.stop_with(Signal::SIGKILL).unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    let at_kill = attack.sent();
    assert!(f.lab.xdp_attached(), "{}", f.lab.protected_link().unwrap());
    assert_eq!(pins(&daemon), pins_before);
    // The flood goes on with no daemon at all.
    wait_sent(&attack, at_kill, 5000);
    assert_eq!(f.listener.count_from(f.attacker), 0);
    assert!(f.lab.xdp_attached());

    // A new daemon with the same state directory and pin root adopts.
    daemon.spawn(&[]).unwrap();
    let status = daemon.ok(&["status", "--json"]).json();
    assert_eq!(status["adopted"], true, "{status}");
    assert_eq!(rules_without_hits(&daemon), rules_before);
    assert_eq!(pins(&daemon), pins_before);
    let c1 = daemon.counter("drop_blocklist", "udp");
    wait_sent(&attack, attack.sent(), 5000);
    assert!(
        Daemon::poll(Duration::from_secs(5), || daemon
            .counter("drop_blocklist", "udp")
            > c1),
        "drops stopped after the restart"
    );

    let attacked = attack.finish().unwrap();
    let clean_sent = clean.finish().unwrap();
    // Every clean datagram arrived, no blocked one did, and every blocked
    // one was dropped and counted by the same (pinned) counters throughout.
    assert_eq!(
        f.listener
            .wait_for(f.client, 1 + clean_sent, Duration::from_secs(10)),
        1 + clean_sent
    );
    assert_eq!(f.listener.count_from(f.attacker), 0);
    assert!(
        Daemon::poll(Duration::from_secs(5), || daemon
            .counter("drop_blocklist", "udp")
            - drops_before
            == attacked),
        "dropped {} of {attacked} blocked datagrams",
        daemon.counter("drop_blocklist", "udp") - drops_before
    );
    eprintln!("kill -9: {attacked} blocked datagrams sent, all dropped; {clean_sent} clean, all delivered");
    let log = daemon.log_plain();
    assert!(log.contains("adopted the pinned XDP link"), "{log}");
}

#[test]
fn sigterm_without_detach_keeps_enforcing_and_the_next_daemon_adopts() {
    require_privileges!();
    let f = flood_lab("term");
    let mut daemon = Daemon::start(&f.lab, &[]).unwrap();
    daemon.ok(&["block", "10.201.0.64/26"]);
    let rules_before = rules_without_hits(&daemon);
    let pins_before = pins(&daemon);

    let status = daemon.stop_with(Signal::SIGTERM).unwrap();
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    assert!(
        !daemon.socket.exists(),
        "the socket is removed on a clean stop"
    );
    assert!(f.lab.xdp_attached());
    assert_eq!(pins(&daemon), pins_before);
    send_udp(&f.lab.peer, f.attacker, f.dst, 200).unwrap();
    send_udp(&f.lab.peer, f.client, f.dst, 200).unwrap();
    assert_eq!(
        f.listener.wait_for(f.client, 201, Duration::from_secs(5)),
        201
    );
    assert_eq!(f.listener.count_from(f.attacker), 0);
    assert!(daemon.log_plain().contains("rules stay in force"));

    daemon.spawn(&[]).unwrap();
    assert_eq!(daemon.ok(&["status", "--json"]).json()["adopted"], true);
    assert_eq!(rules_without_hits(&daemon), rules_before);
    // The counters survived the restart: the drops while no daemon ran.
    assert_eq!(daemon.counter("drop_blocklist", "udp"), 200);
}

#[test]
fn sigterm_with_detach_on_exit_removes_the_program_and_the_pins() {
    require_privileges!();
    let f = flood_lab("det");
    let mut daemon = Daemon::start(&f.lab, &["--detach-on-exit"]).unwrap();
    daemon.ok(&["block", "10.201.0.64/26"]);
    assert!(f.lab.xdp_attached());
    assert!(has_link_pin(&pins(&daemon)));
    send_udp(&f.lab.peer, f.attacker, f.dst, 50).unwrap();

    let status = daemon.stop_with(Signal::SIGTERM).unwrap();
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    assert!(!f.lab.xdp_attached(), "{}", f.lab.protected_link().unwrap());
    assert!(
        !daemon.pin_dir().exists(),
        "pins left behind: {:?}",
        pins(&daemon)
    );
    assert!(daemon
        .log_plain()
        .contains("XDP program detached and pins removed"));
    // Nothing filters any more: the formerly blocked source gets through.
    send_udp(&f.lab.peer, f.attacker, f.dst, 50).unwrap();
    assert_eq!(
        f.listener.wait_for(f.attacker, 50, Duration::from_secs(5)),
        50
    );
    // The rules themselves are kept in the state file for the next start.
    daemon.spawn(&[]).unwrap();
    assert_eq!(daemon.ok(&["status", "--json"]).json()["adopted"], false);
    assert_eq!(daemon.rule_set(), ["block 10.201.0.64/26"]);
    send_udp(&f.lab.peer, f.attacker, f.dst, 50).unwrap();
    send_udp(&f.lab.peer, f.client, f.dst, 50).unwrap();
    assert_eq!(
        f.listener.wait_for(f.client, 51, Duration::from_secs(5)),
        51
    );
    assert_eq!(f.listener.count_from(f.attacker), 50);
}

/// The message a refused start must end with, for a state file and a reason.
fn corrupt_line(path: &Path, reason: &str) -> String {
    format!(
        "mitigator: state file {} is corrupt ({reason}); refusing to start so it is not overwritten: fix or move it away",
        path.display()
    )
}

/// Runs `mitigator run` against a planted state file and checks the refusal.
fn assert_refuses(daemon: &Daemon, reason: &str) {
    let before = std::fs::read(daemon.state_file()).unwrap();
    let r = daemon.run_to_exit(&[], Duration::from_secs(20)).unwrap();
    assert_eq!(r.code, 1, "{r:?}");
    // Exactly one error line, the last one (log lines before it are info).
    let want = corrupt_line(&daemon.state_file(), reason);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("mitigator:"))
        .collect();
    assert_eq!(errors, [want.as_str()], "{}", r.stderr);
    assert_eq!(r.stderr.lines().last(), Some(want.as_str()));
    assert_eq!(
        std::fs::read(daemon.state_file()).unwrap(),
        before,
        "state file changed"
    );
    assert!(
        !daemon.socket.exists(),
        "a refused daemon must not bind its socket"
    );
}

#[test]
fn a_corrupt_or_truncated_state_file_stops_the_daemon_and_is_left_alone() {
    require_privileges!();
    let lab = Lab::new("bad").unwrap();
    let daemon = Daemon::unstarted(&lab).unwrap();
    std::fs::create_dir_all(&daemon.state_dir).unwrap();
    let good = r#"{"version":2,"groups":[{"kind":"block","source":"operator","reason":"x","created":1700000000,"expires":null,"uid":0,"prefixes":["10.0.0.0/8","192.0.2.0/24"]}]}"#;
    let truncated = &good.as_bytes()[..good.len() - 1];
    let cases: [(&[u8], String); 6] = [
        (&good.as_bytes()[..60], "EOF while parsing a string at line 1 column 60".into()),
        (
            truncated,
            format!("EOF while parsing an object at line 1 column {}", truncated.len()),
        ),
        (b"", "the file is empty".into()),
        (b"\x00\x01garbage\xff", "expected value at line 1 column 1".into()),
        (br#"{"version":7,"groups":[]}"#, "unknown format version 7".into()),
        (
            br#"{"version":2,"groups":[{"kind":"block","source":"operator","created":1,"prefixes":["10.0.0.0/33"]}]}"#,
            "invalid prefix '10.0.0.0/33' at line 1 column 97".into(),
        ),
    ];
    for (content, reason) in &cases {
        std::fs::write(daemon.state_file(), content).unwrap();
        assert_refuses(&daemon, reason);
        // Refused before touching the interface: nothing attached or pinned.
        assert!(!lab.xdp_attached(), "{}", lab.protected_link().unwrap());
        assert!(!daemon.pin_dir().exists());
    }
    // The intact file is accepted (the cases above differ only in damage).
    std::fs::write(daemon.state_file(), good).unwrap();
    let mut daemon = daemon;
    daemon.spawn(&[]).unwrap();
    assert_eq!(
        daemon.rule_set(),
        ["block 10.0.0.0/8", "block 192.0.2.0/24"]
    );
}

#[test]
fn a_corrupt_state_file_after_a_crash_leaves_enforcement_running() {
    require_privileges!();
    let f = flood_lab("crash");
    let mut daemon = Daemon::start(&f.lab, &[]).unwrap();
    daemon.ok(&["block", "10.201.0.64/26"]);
    daemon.stop_with(Signal::SIGKILL).unwrap();
    // The file is damaged while no daemon runs (disk trouble, a bad edit).
    let full = std::fs::read(daemon.state_file()).unwrap();
    std::fs::write(daemon.state_file(), &full[..full.len() / 2]).unwrap();
    let r = daemon.run_to_exit(&[], Duration::from_secs(20)).unwrap();
    assert_eq!(r.code, 1, "{r:?}");
    let last = r.stderr.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with(&format!(
            "mitigator: state file {} is corrupt (EOF while parsing",
            daemon.state_file().display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(daemon.state_file()).unwrap(),
        &full[..full.len() / 2]
    );
    // The refused start did not disturb what the killed daemon left running.
    assert!(f.lab.xdp_attached());
    send_udp(&f.lab.peer, f.attacker, f.dst, 100).unwrap();
    send_udp(&f.lab.peer, f.client, f.dst, 100).unwrap();
    assert_eq!(
        f.listener.wait_for(f.client, 101, Duration::from_secs(5)),
        101
    );
    assert_eq!(f.listener.count_from(f.attacker), 0);

    // Once the operator restores the file, a daemon adopts as usual.
    std::fs::write(daemon.state_file(), &full).unwrap();
    daemon.spawn(&[]).unwrap();
    assert_eq!(daemon.ok(&["status", "--json"]).json()["adopted"], true);
    assert_eq!(daemon.rule_set(), ["block 10.201.0.64/26"]);
}
