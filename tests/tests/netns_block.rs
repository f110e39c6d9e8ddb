//! End to end over a real veth: the real daemon attaches XDP, the real CLI
//! blocks a prefix, real UDP from a blocked and a clean source crosses the
//! wire, and a listener in the protected namespace counts what arrives.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use mitigator_tests::{
    daemon::Daemon,
    lab::Lab,
    require_privileges,
    traffic::{send_udp, UdpCounter},
};

const PACKETS: u32 = 200;

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn blocked_prefix_is_dropped_and_clean_source_still_arrives() {
    require_privileges!();
    let lab = Lab::new("blk").unwrap();
    let attacker = addr("10.201.0.66");
    let client = addr("10.201.0.2");
    lab.add_peer_addr("10.201.0.66/24").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(30)).unwrap();

    // Before blocking both sources get through.
    send_udp(&lab.peer, attacker, dst, PACKETS).unwrap();
    assert_eq!(
        listener.wait_for(attacker, PACKETS as u64, Duration::from_secs(5)),
        PACKETS as u64
    );

    let out = daemon.ok(&["block", "10.201.0.64/26", "--reason", "test attacker"]);
    assert!(out.stdout.contains("added 1"), "{}", out.stdout);
    let before_drops = daemon.counter("drop_blocklist", "udp");
    let before_attacker = listener.count_from(attacker);

    send_udp(&lab.peer, attacker, dst, PACKETS).unwrap();
    send_udp(&lab.peer, client, dst, PACKETS).unwrap();
    assert_eq!(
        listener.wait_for(client, PACKETS as u64, Duration::from_secs(5)),
        PACKETS as u64
    );
    // Every attacker packet is dropped and counted by reason and by rule.
    assert_eq!(
        daemon.counter("drop_blocklist", "udp") - before_drops,
        PACKETS as u64
    );
    assert_eq!(listener.count_from(attacker), before_attacker);
    let list = daemon.ok(&["list", "--json"]).json();
    let rule = &list["rules"][0];
    assert_eq!(rule["prefix"], "10.201.0.64/26");
    assert_eq!(rule["kind"], "block");
    assert_eq!(rule["reason"], "test attacker");
    assert_eq!(rule["packets"].as_u64(), Some(PACKETS as u64));

    // Unblocking restores delivery.
    daemon.ok(&["unblock", "10.201.0.64/26"]);
    send_udp(&lab.peer, attacker, dst, PACKETS).unwrap();
    assert_eq!(
        listener.wait_for(
            attacker,
            before_attacker + PACKETS as u64,
            Duration::from_secs(5)
        ),
        before_attacker + PACKETS as u64
    );
}

#[test]
fn ipv6_prefix_is_blocked() {
    require_privileges!();
    let lab = Lab::new("blk6").unwrap();
    let attacker = addr("fd00:201::66");
    let client = addr("fd00:201::2");
    lab.add_peer_addr("fd00:201::66/64").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    let dst = SocketAddr::new(IpAddr::V6(lab.protected_addr6), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(30)).unwrap();

    // Resolve neighbours first, so no datagram waits in the sender's queue.
    send_udp(&lab.peer, client, dst, 1).unwrap();
    assert_eq!(listener.wait_for(client, 1, Duration::from_secs(5)), 1);

    daemon.ok(&["block", "fd00:201::66"]);
    send_udp(&lab.peer, attacker, dst, PACKETS).unwrap();
    send_udp(&lab.peer, client, dst, PACKETS).unwrap();
    assert_eq!(
        listener.wait_for(client, 1 + PACKETS as u64, Duration::from_secs(5)),
        1 + PACKETS as u64
    );
    assert_eq!(listener.count_from(attacker), 0);
    assert_eq!(daemon.counter("drop_blocklist", "udp"), PACKETS as u64);
}

#[test]
fn bad_input_and_missing_daemon_fail_with_one_clear_line() {
    require_privileges!();
    let lab = Lab::new("bad").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    // A malformed prefix is a usage error (2), caught before the daemon is asked.
    let r = daemon.cli(&["block", "10.0.0.0/33"]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr,
        "mitigator: invalid prefix '10.0.0.0/33': prefix length 33 is longer than 32 for IPv4\n"
    );
    // A bad prefix among good ones changes nothing.
    let r = daemon.cli(&["block", "10.1.0.0/16", "nonsense"]);
    assert_eq!(r.code, 2);
    assert_eq!(
        daemon.ok(&["list", "--json"]).json()["rules"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // A refusal by the daemon is a runtime error (1), as is a missing daemon.
    let r = daemon.cli(&["unblock", "10.9.9.9"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "mitigator: 10.9.9.9/32 is not blocked; nothing was changed\n"
    );

    let r = std::process::Command::new(mitigator_tests::daemon::binary().unwrap())
        .args(["stats", "--json", "--socket", "/nonexistent/mitigator.sock"])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "mitigator: cannot reach the mitigator daemon at /nonexistent/mitigator.sock"
        ),
        "{stderr}"
    );
}

#[test]
fn unknown_interface_is_refused() {
    require_privileges!();
    let r = std::process::Command::new(mitigator_tests::daemon::binary().unwrap())
        .args([
            "run",
            "--iface",
            "nosuchif0",
            "--socket",
            "/tmp/mtg-nosuch.sock",
            "--state-dir",
            "/tmp/mtg-nosuch-state",
        ])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        "mitigator: unknown network interface 'nosuchif0'\n"
    );
}
