//! The daemon's configuration file, `run --check-config`, the Prometheus
//! endpoint and the control socket's access control, against the real
//! binary in a network-namespace lab.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use mitigator_tests::{
    daemon::{binary, CliResult, Daemon},
    lab::Lab,
    require_privileges,
    traffic::{in_netns, send_udp, UdpCounter},
};

const PACKETS: u32 = 200;
const METRICS_PORT: u16 = 19947;

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// One HTTP/1.1 GET from inside namespace `ns`: (status line, head, body).
fn http_get(ns: &str, port: u16, path: &str) -> (String, String, String) {
    let path = path.to_string();
    in_netns(ns, move || {
        let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out
            .split_once("\r\n\r\n")
            .map(|(h, b)| (h.to_string(), b.to_string()))
            .unwrap_or((out.clone(), String::new()));
        let status = head.lines().next().unwrap_or("").to_string();
        Ok((status, head, body))
    })
    .unwrap()
}

/// The value of the sample line `name{labels}` (exact label text), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.trim().parse::<f64>().unwrap())
    })
}

fn scrape(lab: &Lab) -> String {
    let (status, head, body) = http_get(&lab.protected, METRICS_PORT, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{head}");
    assert!(
        head.lines().any(
            |l| l == "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"
        ),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

#[test]
fn metrics_match_stats_and_list_and_config_is_applied() {
    require_privileges!();
    let lab = Lab::new("cfgm").unwrap();
    let attacker = addr("10.201.0.66");
    let manager = addr("10.201.0.77");
    lab.add_peer_addr("10.201.0.66/24").unwrap();
    lab.add_peer_addr("10.201.0.77/24").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The file says 9947; the flag must win.
    let config = write_config(
        dir.path(),
        "mitigator.toml",
        r#"
        [daemon]
        metrics_addr = "127.0.0.1:9947"

        [allowlist]
        prefixes = ["10.201.0.77/32", "fd00:201::77"]

        [limits]
        udp = { rate = 100000, burst = 100000 }
        "#,
    );
    let config_arg = config.to_str().unwrap();
    let metrics_arg = format!("127.0.0.1:{METRICS_PORT}");
    let extra = ["--config", config_arg, "--metrics-addr", &metrics_arg];
    let mut daemon = Daemon::start(&lab, &extra).unwrap();

    // The socket is 0660.
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);

    // The config allowlist became allow rules with their own reason.
    let list = daemon.ok(&["list", "--json"]).json();
    let allows: Vec<(String, String)> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "allow")
        .map(|r| {
            (
                r["prefix"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        allows,
        vec![
            ("10.201.0.77/32".to_string(), "config allowlist".to_string()),
            (
                "fd00:201::77/128".to_string(),
                "config allowlist".to_string()
            ),
        ]
    );

    // Block the attacker's /26, which also holds the allowlisted manager.
    daemon.ok(&["block", "10.201.0.64/26", "--reason", "metrics test"]);
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(60)).unwrap();
    let before = daemon.counter("drop_blocklist", "udp");
    send_udp(&lab.peer, attacker, dst, PACKETS).unwrap();
    send_udp(&lab.peer, manager, dst, PACKETS).unwrap();
    // The allowlisted manager gets through; the attacker does not.
    assert_eq!(
        listener.wait_for(manager, PACKETS as u64, Duration::from_secs(5)),
        PACKETS as u64
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon.counter("drop_blocklist", "udp") < before + PACKETS as u64 {
        assert!(Instant::now() < deadline, "drops not counted in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(listener.count_from(attacker), 0);

    // Counters: the scrape equals `stats --json`, cell by cell.
    let stats = daemon.ok(&["stats", "--json"]).json();
    let body = scrape(&lab);
    let cells = stats["cells"].as_array().unwrap();
    assert!(!cells.is_empty());
    for cell in cells {
        let (reason, class) = (
            cell["reason"].as_str().unwrap(),
            cell["class"].as_str().unwrap(),
        );
        if reason == "pass" || reason == "pass_non_ip" {
            continue; // background traffic (neighbour discovery) may move these
        }
        for (metric, field) in [
            ("mitigator_packets_total", "packets"),
            ("mitigator_bytes_total", "bytes"),
        ] {
            let series = format!("{metric}{{reason=\"{reason}\",class=\"{class}\"}}");
            assert_eq!(
                sample(&body, &series),
                Some(cell[field].as_u64().unwrap() as f64),
                "{series}\n{body}"
            );
        }
    }
    let drops = sample(
        &body,
        "mitigator_packets_total{reason=\"drop_blocklist\",class=\"udp\"}",
    )
    .unwrap();
    assert_eq!(drops, (before + PACKETS as u64) as f64);
    assert_eq!(drops as u64, daemon.counter("drop_blocklist", "udp"));

    // Rule gauges equal `list`, map fill follows the rules.
    let list = daemon.ok(&["list", "--json"]).json();
    let rules = list["rules"].as_array().unwrap();
    for kind in ["block", "allow"] {
        for source in ["operator", "auto"] {
            let n = rules
                .iter()
                .filter(|r| r["kind"] == kind && r["source"] == source)
                .count();
            let series = format!("mitigator_rules{{kind=\"{kind}\",source=\"{source}\"}}");
            assert_eq!(sample(&body, &series), Some(n as f64), "{series}\n{body}");
        }
    }
    assert_eq!(
        sample(&body, "mitigator_rules{kind=\"block\",source=\"operator\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "mitigator_rules{kind=\"allow\",source=\"operator\"}"),
        Some(2.0)
    );
    for (map, entries) in [
        ("block_v4", 1.0),
        ("block_v6", 0.0),
        ("allow_v4", 1.0),
        ("allow_v6", 1.0),
    ] {
        assert_eq!(
            sample(&body, &format!("mitigator_map_entries{{map=\"{map}\"}}")),
            Some(entries),
            "{map}"
        );
        assert!(sample(&body, &format!("mitigator_map_capacity{{map=\"{map}\"}}")).unwrap() > 0.0);
    }
    // tracking.sources (default) is the source table's capacity.
    assert_eq!(
        sample(&body, "mitigator_map_capacity{map=\"sources\"}"),
        Some(1048576.0)
    );

    // Health, build, escalation hook.
    assert_eq!(sample(&body, "mitigator_up"), Some(1.0));
    assert_eq!(sample(&body, "mitigator_monitor_mode"), Some(0.0));
    let started = sample(&body, "mitigator_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started <= now && started > now - 600.0, "{started}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("mitigator_build_info{version=\"") && l.ends_with("\"} 1")),
        "{body}"
    );
    for class in ["syn", "udp", "icmp", "frag"] {
        assert_eq!(
            sample(
                &body,
                &format!("mitigator_escalation_level{{class=\"{class}\"}}")
            ),
            Some(0.0)
        );
    }

    // Other paths are 404.
    let (status, _, _) = http_get(&lab.protected, METRICS_PORT, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // Restart with one allowlist prefix removed from the file: its rule goes,
    // the operator's block stays.
    daemon.stop_with(nix::sys::signal::Signal::SIGTERM).unwrap();
    std::fs::write(&config, "[allowlist]\nprefixes = [\"fd00:201::77\"]\n").unwrap();
    daemon.spawn(&extra).unwrap();
    let list = daemon.ok(&["list", "--json"]).json();
    let mut prefixes: Vec<(String, String)> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["prefix"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    prefixes.sort();
    assert_eq!(
        prefixes,
        vec![
            ("allow".to_string(), "fd00:201::77/128".to_string()),
            ("block".to_string(), "10.201.0.64/26".to_string()),
        ]
    );
    let body = scrape(&lab);
    assert_eq!(
        sample(&body, "mitigator_rules{kind=\"allow\",source=\"operator\"}"),
        Some(1.0)
    );
    // Counters live in pinned maps: the new daemon reports the same drops.
    assert_eq!(
        sample(
            &body,
            "mitigator_packets_total{reason=\"drop_blocklist\",class=\"udp\"}"
        ),
        Some(drops)
    );
}

fn check_config(args: &[&str]) -> CliResult {
    Command::new(binary().unwrap())
        .args(["run", "--check-config"])
        .args(args)
        .output()
        .unwrap()
        .into()
}

#[test]
fn check_config_reports_ok_or_the_exact_error_and_touches_nothing() {
    let Some(_) = binary() else {
        eprintln!("SKIP: mitigator binary not built with its eBPF object");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/mitigator.sock");
    let state = dir.path().join("state");
    let good = write_config(
        dir.path(),
        "good.toml",
        "[allowlist]\nprefixes = [\"192.0.2.0/24\"]\n[defences]\nsyn_cookies = true\n",
    );
    let good_s = good.to_str().unwrap();
    let socket_s = socket.to_str().unwrap();
    let state_s = state.to_str().unwrap();
    let r = check_config(&[
        "--config",
        good_s,
        "--socket",
        socket_s,
        "--state-dir",
        state_s,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        format!("config {good_s}: OK (1 allowlist prefix(es), rate limits on, syn cookies on, amplification drop off, fragments rate-limit, port cap off, metrics 127.0.0.1:9947)\n")
    );
    assert_eq!(r.stderr, "");
    // Flags are checked with the file: --metrics-addr off wins.
    let r = check_config(&["--config", good_s, "--metrics-addr", "off"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.ends_with("metrics off)\n"), "{}", r.stdout);
    // No file: the built-in defaults.
    let r = check_config(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with("config (built-in defaults): OK ("),
        "{}",
        r.stdout
    );
    // The packaged sample config is valid.
    let sample_cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/mitigator.toml");
    let r = check_config(&["--config", sample_cfg.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");

    let bad: &[(&str, &str)] = &[
        ("[limits]\nsyn = { rate = 10000001, burst = 1 }\n", "limits.syn.rate: must be ≤ 10000000"),
        ("[limits]\nudp = { rate = 10, burst = 0 }\n", "limits.udp.burst: must be ≥ 1 when rate > 0 (a burst of 0 would drop every packet)"),
        ("[defences]\nsyn_cookie_ports = [443, 0]\n", "defences.syn_cookie_ports[1]: port 0 is not a port (1-65535)"),
        ("[allowlist]\nprefixes = [\"10.0.0.0/33\"]\n", "allowlist.prefixes[0]: invalid prefix '10.0.0.0/33': prefix length 33 is longer than 32 for IPv4"),
        ("[daemon]\nsokcet = \"/run/x.sock\"\n", "daemon.sokcet: unknown key; expected `socket`, `socket_group`, `state_dir`, `pin_root`, `metrics_addr`, `mode`, `monitor` (line 2, column 1)"),
        ("[daemon]\nsocket_group = \"no-such-group-mitigator\"\n", "daemon.socket_group: no group named 'no-such-group-mitigator' on this host"),
        ("[defences]\nfragments = \"sometimes\"\n", "defences.fragments: unknown variant `sometimes`, expected one of `pass`, `rate-limit`, `drop` (line 2, column 13)"),
        ("[limits\n", "not valid TOML: unclosed table, expected `]` (line 1, column 8)"),
    ];
    for (i, (text, why)) in bad.iter().enumerate() {
        let path = write_config(dir.path(), &format!("bad{i}.toml"), text);
        let p = path.to_str().unwrap();
        let r = check_config(&["--config", p, "--socket", socket_s, "--state-dir", state_s]);
        assert_eq!(r.code, 1, "{text}: {r:?}");
        assert_eq!(r.stdout, "", "{text}");
        assert_eq!(
            r.stderr,
            format!("mitigator: config {p}: {why}\n"),
            "{text}"
        );
    }
    let r = check_config(&["--config", "/nonexistent/mitigator.toml"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "mitigator: config /nonexistent/mitigator.toml: cannot read: No such file or directory (os error 2)\n"
    );
    // A bad flag is a usage error.
    let r = check_config(&["--metrics-addr", "localhost"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .starts_with("mitigator: invalid value 'localhost' for '--metrics-addr"),
        "{}",
        r.stderr
    );
    // Nothing was created.
    assert!(!socket.exists() && !socket.parent().unwrap().exists());
    assert!(!state.exists());
}

/// Runs the CLI as an unprivileged user (uid 65534, the given gid) from a
/// copy of the binary anyone may execute.
fn cli_as_nobody(bin: &Path, gid: u32, socket: &Path, args: &[&str]) -> CliResult {
    // Another test thread forking while the copy was still open for writing
    // holds a write fd until its exec: ETXTBSY for a moment. Retry, bounded.
    for _ in 0..100 {
        match Command::new(bin)
            .args(args)
            .arg("--socket")
            .arg(socket)
            .uid(65534)
            .gid(gid)
            .output()
        {
            Ok(out) => return out.into(),
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("run {}: {e}", bin.display()),
        }
    }
    panic!("{} stayed busy (ETXTBSY) for 2 s", bin.display());
}

fn public_binary_copy(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("mitigator");
    std::fs::copy(binary().unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn unprivileged_clients_are_refused_by_socket_mode_and_by_the_daemon() {
    require_privileges!();
    let lab = Lab::new("acl").unwrap();
    let daemon = Daemon::start(&lab, &["--metrics-addr", "off"]).unwrap();
    let bins = tempfile::tempdir().unwrap();
    let bin = public_binary_copy(bins.path());
    // Let others reach the socket's directory: only the socket's mode counts.
    let dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    // 0660 root:root: the kernel refuses the connection.
    let r = cli_as_nobody(&bin, 65534, &daemon.socket, &["status"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.starts_with("mitigator: ") && r.stderr.contains("Permission denied (os error 13)"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1);

    // World-writable socket: the daemon's own check (SO_PEERCRED) refuses.
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refusal = "mitigator: permission denied: uid 65534 may not control mitigator (root or the socket's group only)\n";
    for args in [
        &["status"][..],
        &["block", "192.0.2.1"],
        &["list", "--json"],
    ] {
        let r = cli_as_nobody(&bin, 65534, &daemon.socket, args);
        assert_eq!(
            (r.code, r.stderr.as_str(), r.stdout.as_str()),
            (1, refusal, ""),
            "{args:?}"
        );
    }
    // Nothing changed.
    let list = daemon.ok(&["list", "--json"]).json();
    assert_eq!(list["rules"].as_array().unwrap().len(), 0);
    assert!(daemon
        .log_text()
        .contains("refused a client without permission"));
}

#[test]
fn the_socket_group_from_the_config_may_use_the_cli() {
    require_privileges!();
    let lab = Lab::new("grp").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // nogroup (65534) by number; names are resolved the same way.
    let config = write_config(
        dir.path(),
        "m.toml",
        "[daemon]\nsocket_group = 65534\nmetrics_addr = \"off\"\n",
    );
    let daemon = Daemon::start(&lab, &["--config", config.to_str().unwrap()]).unwrap();
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.uid(), meta.gid()),
        (0o660, 0, 65534)
    );
    let bins = tempfile::tempdir().unwrap();
    let bin = public_binary_copy(bins.path());
    std::fs::set_permissions(
        daemon.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    // A member of the group (here: its primary group) may block and list.
    let r = cli_as_nobody(
        &bin,
        65534,
        &daemon.socket,
        &["block", "192.0.2.1", "--reason", "by the group"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let list = daemon.ok(&["list", "--json"]).json();
    assert_eq!(list["rules"][0]["prefix"], "192.0.2.1/32");
    assert_eq!(list["rules"][0]["uid"], 65534);
    // Someone outside the group cannot even connect.
    let r = cli_as_nobody(&bin, 4242, &daemon.socket, &["status"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("Permission denied (os error 13)"),
        "{}",
        r.stderr
    );
}
