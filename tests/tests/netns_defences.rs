//! The datapath defences against real floods on a real veth, configured
//! through the daemon's TOML config the way an operator would.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use mitigator_tests::{
    daemon::Daemon,
    lab::Lab,
    require_privileges,
    traffic::{netstat, send_udp, tcp_clients, SynFlood, TcpServer, UdpCounter},
};

const PORT: u16 = 8080;

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("mitigator.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Polls `f` until it returns at least `want` or the deadline passes.
fn wait_until(within: Duration, mut f: impl FnMut() -> u64, want: u64) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let v = f();
        if v >= want || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct SynOutcome {
    completed: u32,
    slowest: Duration,
    xdp_cookies: u64,
    xdp_cookie_acks: u64,
    kernel_cookies_sent: u64,
}

/// A spoofed random-source SYN flood against a real server while a real
/// client makes 200 sequential request/response connections.
fn syn_flood_run(syn_cookies: bool) -> SynOutcome {
    let mut lab = Lab::new("syn").unwrap();
    lab.attach_peer_pass_program().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            // The ladder is held at 0: this measures the static defence
            // (escalation would switch cookies on by itself; see escalation.rs).
            "[defences]\nrate_limit = false\nsyn_cookies = {syn_cookies}\nsyn_cookie_ports = [{PORT}]\n\
             [escalation.syn]\nmax_level = 0\n"
        ),
    );
    let daemon = Daemon::start(&lab, &["--config", &config]).unwrap();
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), PORT);
    let server = TcpServer::start(&lab.protected, dst, Duration::from_secs(60)).unwrap();
    let kernel_before = netstat(&lab.protected, "TcpExtSyncookiesSent").unwrap();

    let flood =
        SynFlood::start(&lab.peer, lab.protected_addr, PORT, Duration::from_secs(30)).unwrap();
    // The flood is under way once the datapath sees it.
    let seen = wait_until(
        Duration::from_secs(5),
        || daemon.counter_class("tcp_syn"),
        5_000,
    );
    assert!(
        seen >= 5_000,
        "flood did not start: {seen} SYNs seen\n{}",
        daemon.log_text()
    );
    let run = tcp_clients(&lab.peer, dst, 200, Duration::from_secs(1)).unwrap();
    drop(flood);
    assert!(server.accepted() >= run.completed as u64);

    SynOutcome {
        completed: run.completed,
        slowest: run.slowest,
        xdp_cookies: daemon.counter("tx_syn_cookie", "tcp_syn"),
        xdp_cookie_acks: daemon.counter("pass_cookie_ack", "tcp"),
        kernel_cookies_sent: netstat(&lab.protected, "TcpExtSyncookiesSent").unwrap()
            - kernel_before,
    }
}

#[test]
fn syn_cookies_from_xdp_keep_clients_served_and_the_flood_off_the_stack() {
    require_privileges!();
    let on = syn_flood_run(true);
    eprintln!(
        "with XDP cookies: {}/200 completed (slowest {:?}), {} cookies from XDP, {} cookie ACKs passed, kernel sent {} cookies",
        on.completed, on.slowest, on.xdp_cookies, on.xdp_cookie_acks, on.kernel_cookies_sent
    );
    assert!(
        on.completed >= 198,
        "only {}/200 connections completed",
        on.completed
    );
    assert!(
        on.xdp_cookies >= 5_000,
        "XDP answered only {} SYNs",
        on.xdp_cookies
    );
    assert!(
        on.xdp_cookie_acks >= on.completed as u64,
        "client ACKs not validated in XDP"
    );
    // The flood never reached the protected stack's listen queue.
    assert!(
        on.kernel_cookies_sent * 100 < on.xdp_cookies,
        "kernel still answered {} SYNs itself",
        on.kernel_cookies_sent
    );

    let off = syn_flood_run(false);
    eprintln!(
        "without: {}/200 completed (slowest {:?}), kernel sent {} cookies",
        off.completed, off.slowest, off.kernel_cookies_sent
    );
    // Without the defence the same flood lands on the kernel's TCP stack.
    assert_eq!(off.xdp_cookies, 0);
    assert!(
        off.kernel_cookies_sent >= 5_000,
        "kernel answered only {} SYNs with cookies",
        off.kernel_cookies_sent
    );
}

#[test]
fn udp_source_over_its_limit_is_cut_while_another_source_is_unaffected() {
    require_privileges!();
    let lab = Lab::new("udprl").unwrap();
    lab.add_peer_addr("10.201.0.66/24").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 100 packets/s with a burst of 50 per source.
    let config = write_config(
        dir.path(),
        "[defences]\nrate_limit = true\n[limits]\nudp = { rate = 100, burst = 50 }\n",
    );
    let daemon = Daemon::start(&lab, &["--config", &config]).unwrap();
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(30)).unwrap();
    let heavy: IpAddr = "10.201.0.66".parse().unwrap();
    let light: IpAddr = "10.201.0.2".parse().unwrap();

    // The heavy source sends 2000 back to back (well under a second): about
    // the burst plus what a second's rate allows may pass.
    let started = Instant::now();
    send_udp(&lab.peer, heavy, dst, 2000).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    // The light one sends 40, under its own burst.
    send_udp(&lab.peer, light, dst, 40).unwrap();
    assert_eq!(listener.wait_for(light, 40, Duration::from_secs(5)), 40);
    let passed = listener.count_from(heavy);
    let allowed = 50.0 + 100.0 * (elapsed + 0.5);
    assert!(passed >= 50, "heavy source cut below its burst: {passed}");
    assert!(
        (passed as f64) <= allowed,
        "heavy source got {passed} through, limit allows ~{allowed:.0}"
    );
    let dropped = daemon.counter("drop_udp_rate", "udp");
    assert_eq!(
        dropped + passed,
        2000,
        "every heavy packet is passed or counted as rate-dropped"
    );
}

#[test]
fn amplification_ports_are_dropped_but_replies_to_a_service_port_pass() {
    require_privileges!();
    let lab = Lab::new("amp").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[defences]\nrate_limit = false\namplification_drop = true\nudp_service_ports = [5353]\n",
    );
    let daemon = Daemon::start(&lab, &["--config", &config]).unwrap();
    let victim = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let service = SocketAddr::new(IpAddr::V4(lab.protected_addr), 5353);
    let victim_rx = UdpCounter::start(&lab.protected, victim, Duration::from_secs(30)).unwrap();
    let service_rx = UdpCounter::start(&lab.protected, service, Duration::from_secs(30)).unwrap();
    let client: IpAddr = "10.201.0.2".parse().unwrap();

    // "DNS replies" (source port 53) to a random port: a reflection flood.
    mitigator_tests::traffic::send_udp_from_port(
        &lab.peer,
        SocketAddr::new(client, 53),
        victim,
        300,
    )
    .unwrap();
    // DNS replies to the configured service port: legitimate.
    mitigator_tests::traffic::send_udp_from_port(
        &lab.peer,
        SocketAddr::new(client, 123),
        service,
        100,
    )
    .unwrap();
    assert_eq!(
        service_rx.wait_for(client, 100, Duration::from_secs(5)),
        100
    );
    assert_eq!(victim_rx.count_from(client), 0);
    assert_eq!(daemon.counter("drop_amplification", "udp"), 300);
    // Ordinary UDP from a non-amplification port still reaches the victim port.
    send_udp(&lab.peer, client, victim, 50).unwrap();
    assert_eq!(victim_rx.wait_for(client, 50, Duration::from_secs(5)), 50);
}
