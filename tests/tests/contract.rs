//! The command-line contract of ../shared/DESIGN.md against a real daemon in
//! a lab namespace: every command, `--json` shapes, exit codes (0 success,
//! 1 runtime error, 2 usage error), bad input with its exact error and no
//! change of state, malformed requests on the socket, access control, TTL
//! expiry in the list, the maps and traffic, and capacity.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use mitigator_tests::{
    daemon::Daemon,
    lab::Lab,
    require_privileges,
    traffic::{send_udp, UdpCounter},
};
use serde_json::Value;

/// mitigator::protocol::MAX_REQUEST_BYTES: the largest request the daemon reads.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What must not change when a command is refused: the rule list as the
/// daemon reports it and the state file, byte for byte.
#[derive(Debug, PartialEq)]
struct Snapshot {
    rules: Vec<Value>,
    state: Option<Vec<u8>>,
}

fn snapshot(d: &Daemon) -> Snapshot {
    Snapshot {
        rules: d.rules(),
        state: std::fs::read(d.state_file()).ok(),
    }
}

/// `kind prefix` of every rule in the state file (format 2: groups).
fn state_file_set(d: &Daemon) -> BTreeSet<String> {
    let json: Value = serde_json::from_slice(&std::fs::read(d.state_file()).unwrap()).unwrap();
    assert_eq!(json["version"], 2, "{json}");
    let mut set = BTreeSet::new();
    for g in json["groups"].as_array().unwrap() {
        for p in g["prefixes"].as_array().unwrap() {
            let fresh = set.insert(format!(
                "{} {}",
                g["kind"].as_str().unwrap(),
                p.as_str().unwrap()
            ));
            assert!(fresh, "rule stored twice: {p}");
        }
    }
    set
}

fn rule<'a>(rules: &'a [Value], kind: &str, prefix: &str) -> &'a Value {
    rules
        .iter()
        .find(|r| r["kind"] == kind && r["prefix"] == prefix)
        .unwrap_or_else(|| panic!("no {kind} rule for {prefix} in {rules:#?}"))
}

#[test]
fn every_command_with_one_and_many_prefixes_and_json_shapes() {
    require_privileges!();
    let lab = Lab::new("ctr").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();

    // An empty store: `list --json` is one document with an empty list.
    let r = daemon.ok(&["list", "--json"]);
    assert_eq!(r.json(), serde_json::json!({ "rules": [] }));
    assert_eq!(r.stderr, "");
    let r = daemon.ok(&["list"]);
    assert!(r.stdout.starts_with("prefix"), "{}", r.stdout);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);

    let before = now_secs();
    // One prefix, many prefixes (IPv4 and IPv6, host bits cleared), TTL, reason.
    let r = daemon.ok(&["block", "192.0.2.0/24"]);
    assert_eq!(r.stdout, "block: added 1, updated 0 rule(s)\n");
    let r = daemon.ok(&[
        "block",
        "198.51.100.7",
        "2001:db8:bad::/48",
        "203.0.113.9/8",
        "--ttl",
        "10m",
        "--reason",
        "many at once",
    ]);
    assert_eq!(r.stdout, "block: added 3, updated 0 rule(s)\n");
    // The same prefix again refreshes the rule instead of adding a second one.
    let r = daemon.ok(&[
        "block",
        "192.0.2.0/24",
        "192.0.2.0/24",
        "--reason",
        "refreshed",
    ]);
    assert_eq!(r.stdout, "block: added 0, updated 1 rule(s)\n");
    let r = daemon.ok(&[
        "allow",
        "192.0.2.10",
        "2001:db8:bad::1",
        "--reason",
        "monitoring",
        "--ttl",
        "1h",
    ]);
    assert_eq!(r.stdout, "allow: added 2, updated 0 rule(s)\n");

    // --from-file: comments, blank lines, spaces, both families, plus an argument.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prefixes.txt");
    std::fs::write(
        &file,
        "# known bad networks\n\n10.50.0.0/16\n   10.51.0.1   # one host\n\t\n2001:db8:f00::/48\n# end\n",
    )
    .unwrap();
    let r = daemon.ok(&[
        "block",
        "10.52.0.0/16",
        "--from-file",
        file.to_str().unwrap(),
        "--reason",
        "from a file",
    ]);
    assert_eq!(r.stdout, "block: added 4, updated 0 rule(s)\n");
    let after = now_secs();

    // list --json: every rule with prefix, kind, source, reason, created, expires.
    let rules = daemon.rules();
    assert_eq!(rules.len(), 10, "{rules:#?}");
    for r in &rules {
        for field in [
            "prefix", "kind", "source", "reason", "created", "expires", "packets", "bytes",
        ] {
            assert!(r.get(field).is_some(), "rule without {field}: {r}");
        }
        assert_eq!(r["source"], "operator");
        let created = r["created"].as_u64().unwrap();
        assert!((before..=after).contains(&created), "{r}");
        assert_eq!(r["packets"], 0);
    }
    let expect = [
        ("block", "192.0.2.0/24", "refreshed", None),
        ("block", "198.51.100.7/32", "many at once", Some(600)),
        ("block", "2001:db8:bad::/48", "many at once", Some(600)),
        ("block", "203.0.0.0/8", "many at once", Some(600)),
        ("allow", "192.0.2.10/32", "monitoring", Some(3600)),
        ("allow", "2001:db8:bad::1/128", "monitoring", Some(3600)),
        ("block", "10.52.0.0/16", "from a file", None),
        ("block", "10.50.0.0/16", "from a file", None),
        ("block", "10.51.0.1/32", "from a file", None),
        ("block", "2001:db8:f00::/48", "from a file", None),
    ];
    for (kind, prefix, reason, ttl) in expect {
        let r = rule(&rules, kind, prefix);
        assert_eq!(r["reason"], reason, "{r}");
        match ttl {
            None => assert!(r["expires"].is_null(), "{r}"),
            Some(ttl) => {
                // Rounded up to a whole second: the TTL, or at most 1 s more.
                let left = r["expires"].as_u64().unwrap() - r["created"].as_u64().unwrap();
                assert!(left == ttl || left == ttl + 1, "{r}");
            }
        }
    }

    // The human list: a header and one aligned row per rule.
    let r = daemon.ok(&["list"]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 11, "{}", r.stdout);
    for col in [
        "prefix", "kind", "source", "reason", "created", "expires", "packets", "bytes",
    ] {
        assert!(lines[0].contains(col), "{}", lines[0]);
    }
    let row = lines
        .iter()
        .find(|l| l.starts_with("198.51.100.7/32 "))
        .unwrap();
    assert!(
        row.contains("block") && row.contains("operator") && row.contains("many at once"),
        "{row}"
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with("10.50.0.0/16 "))
        .unwrap();
    assert!(row.contains("never"), "{row}");

    // status --json and the human status.
    let s = daemon.ok(&["status", "--json"]).json();
    assert_eq!(s["interface"], "mtg0");
    assert!(
        s["attach_mode"] == "native" || s["attach_mode"] == "skb",
        "{s}"
    );
    assert_eq!(s["monitor"], false);
    assert_eq!(s["adopted"], false);
    assert_eq!(s["pid"].as_u64(), daemon.pid().map(u64::from));
    assert!(
        (before.saturating_sub(60)..=after).contains(&s["started"].as_u64().unwrap()),
        "{s}"
    );
    assert_eq!(s["block_rules"], 8);
    assert_eq!(s["allow_rules"], 2);
    assert_eq!(s["state_file"], daemon.state_file().to_str().unwrap());
    let r = daemon.ok(&["status"]);
    assert!(r.stdout.contains("mtg0"), "{}", r.stdout);
    assert!(r.stdout.contains("8 block, 2 allow"), "{}", r.stdout);

    // stats --json: totals by verdict, every reason and class, non-zero cells.
    let s = daemon.ok(&["stats", "--json"]).json();
    assert_eq!(s["interface"], "mtg0");
    assert!(s["at"].as_u64().unwrap() >= before);
    for total in ["total", "passed", "dropped"] {
        assert!(
            s[total]["packets"].is_u64() && s[total]["bytes"].is_u64(),
            "{s}"
        );
    }
    assert_eq!(
        s["total"]["packets"].as_u64().unwrap(),
        s["passed"]["packets"].as_u64().unwrap() + s["dropped"]["packets"].as_u64().unwrap()
    );
    for reason in ["pass", "pass_allowlist", "drop_blocklist"] {
        assert!(
            s["reasons"][reason]["packets"].is_u64(),
            "no reason {reason}: {s}"
        );
    }
    for class in ["udp", "tcp_syn", "icmp"] {
        assert!(
            s["classes"][class]["packets"].is_u64(),
            "no class {class}: {s}"
        );
    }
    assert!(s["cells"].is_array());
    let r = daemon.ok(&["stats"]);
    assert!(r.stdout.starts_with("interface mtg0: "), "{}", r.stdout);
    assert!(r.stdout.contains("drop_blocklist"), "{}", r.stdout);

    // unblock / unallow, one and many.
    let r = daemon.ok(&["unblock", "192.0.2.0/24", "2001:db8:bad::/48", "10.51.0.1"]);
    assert_eq!(r.stdout, "block: removed 3 rule(s)\n");
    let r = daemon.ok(&["unallow", "2001:db8:bad::1"]);
    assert_eq!(r.stdout, "allow: removed 1 rule(s)\n");
    let want: BTreeSet<String> = [
        "allow 192.0.2.10/32",
        "block 10.50.0.0/16",
        "block 10.52.0.0/16",
        "block 198.51.100.7/32",
        "block 2001:db8:f00::/48",
        "block 203.0.0.0/8",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(daemon.rule_set().into_iter().collect::<BTreeSet<_>>(), want);
    // The state file holds the same rules, and a restart restores them.
    assert_eq!(state_file_set(&daemon), want);
    let mut daemon = daemon;
    daemon.stop_with(nix::sys::signal::Signal::SIGTERM).unwrap();
    daemon.spawn(&[]).unwrap();
    assert_eq!(daemon.rule_set().into_iter().collect::<BTreeSet<_>>(), want);
    let r = daemon.ok(&["list", "--json"]).json();
    assert_eq!(
        rule(r["rules"].as_array().unwrap(), "allow", "192.0.2.10/32")["reason"],
        "monitoring"
    );
}

#[test]
fn allow_beats_block_in_traffic() {
    require_privileges!();
    let lab = Lab::new("alw").unwrap();
    lab.add_peer_addr("10.201.0.66/24").unwrap();
    lab.add_peer_addr("10.201.0.67/24").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(30)).unwrap();
    let (allowed, blocked) = (addr("10.201.0.66"), addr("10.201.0.67"));

    daemon.ok(&["block", "10.201.0.64/26", "--reason", "attack net"]);
    daemon.ok(&["allow", "10.201.0.66", "--reason", "our monitoring host"]);
    send_udp(&lab.peer, allowed, dst, 100).unwrap();
    send_udp(&lab.peer, blocked, dst, 100).unwrap();
    assert_eq!(listener.wait_for(allowed, 100, Duration::from_secs(5)), 100);
    assert_eq!(listener.count_from(blocked), 0);
    assert_eq!(daemon.counter("pass_allowlist", "udp"), 100);
    assert_eq!(daemon.counter("drop_blocklist", "udp"), 100);
    let rules = daemon.rules();
    assert_eq!(rule(&rules, "allow", "10.201.0.66/32")["packets"], 100);
    assert_eq!(rule(&rules, "block", "10.201.0.64/26")["packets"], 100);

    // Without the allow rule the block applies to it too.
    daemon.ok(&["unallow", "10.201.0.66"]);
    send_udp(&lab.peer, allowed, dst, 100).unwrap();
    send_udp(&lab.peer, addr("10.201.0.2"), dst, 10).unwrap();
    assert_eq!(
        listener.wait_for(addr("10.201.0.2"), 10, Duration::from_secs(5)),
        10
    );
    assert_eq!(listener.count_from(allowed), 100);
    assert_eq!(daemon.counter("drop_blocklist", "udp"), 200);
}

#[test]
fn bad_input_is_refused_with_its_exact_error_and_changes_nothing() {
    require_privileges!();
    let lab = Lab::new("bad").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    daemon.ok(&[
        "block",
        "10.7.0.0/16",
        "2001:db8:7::/48",
        "--reason",
        "existing",
    ]);
    daemon.ok(&["allow", "10.7.1.1", "--ttl", "1h"]);

    let dir = tempfile::tempdir().unwrap();
    let bad_file = dir.path().join("bad.txt");
    std::fs::write(
        &bad_file,
        "# list\n10.60.0.0/16\n\n10.61.0.0/33\n10.62.0.0/16\n",
    )
    .unwrap();
    let bad_file = bad_file.to_str().unwrap();
    let missing_file = dir.path().join("missing.txt");
    let missing_file = missing_file.to_str().unwrap();

    const SYNTAX: &str =
        "expected an IPv4 or IPv6 address or CIDR prefix like 192.0.2.0/24 or 2001:db8::/32";
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        // Bad prefixes: usage errors, caught before the daemon is asked.
        (vec!["block", "10.0.0.0/33"], 2, "mitigator: invalid prefix '10.0.0.0/33': prefix length 33 is longer than 32 for IPv4".into()),
        (vec!["block", "::/129"], 2, "mitigator: invalid prefix '::/129': prefix length 129 is longer than 128 for IPv6".into()),
        (vec!["block", ""], 2, "mitigator: invalid prefix '': empty".into()),
        (vec!["block", "garbage"], 2, format!("mitigator: invalid prefix 'garbage': {SYNTAX}")),
        (vec!["block", "10.0.0"], 2, format!("mitigator: invalid prefix '10.0.0': {SYNTAX}")),
        (vec!["block", "10.0.0.0/"], 2, format!("mitigator: invalid prefix '10.0.0.0/': {SYNTAX}")),
        (vec!["block", "10.1.0.0/16", "nonsense", "10.2.0.0/16"], 2, format!("mitigator: invalid prefix 'nonsense': {SYNTAX}")),
        (vec!["allow", "10.0.0.0/33"], 2, "mitigator: invalid prefix '10.0.0.0/33': prefix length 33 is longer than 32 for IPv4".into()),
        (vec!["unblock", "10.7.0.0/16", "10.7.0.0/99"], 2, "mitigator: invalid prefix '10.7.0.0/99': prefix length 99 is longer than 32 for IPv4".into()),
        (vec!["unallow", "garbage"], 2, format!("mitigator: invalid prefix 'garbage': {SYNTAX}")),
        // Bad durations.
        (vec!["block", "10.9.0.1", "--ttl", "0s"], 2, "mitigator: invalid value '0s' for '--ttl <TTL>': '0s' is shorter than the smallest TTL (1s) (see 'mitigator block --help')".into()),
        (vec!["block", "10.9.0.1", "--ttl", "abc"], 2, "mitigator: invalid value 'abc' for '--ttl <TTL>': 'abc' is not a duration like 90s, 10m or 2h (expected number at 0) (see 'mitigator block --help')".into()),
        (vec!["allow", "10.9.0.1", "--ttl", "-5m"], 2, "mitigator: unexpected argument '-5' found (see 'mitigator allow --help')".into()),
        (vec!["allow", "10.9.0.1", "--ttl=-5m"], 2, "mitigator: invalid value '-5m' for '--ttl <TTL>': '-5m' is not a duration like 90s, 10m or 2h (expected number at 0) (see 'mitigator allow --help')".into()),
        // Unknown flags, missing arguments, unknown subcommands.
        (vec!["block", "10.9.0.1", "--bogus"], 2, "mitigator: unexpected argument '--bogus' found (see 'mitigator block --help')".into()),
        (vec!["list", "--json", "extra"], 2, "mitigator: unexpected argument 'extra' found (see 'mitigator list --help')".into()),
        (vec!["status", "--verbose"], 2, "mitigator: unexpected argument '--verbose' found (see 'mitigator status --help')".into()),
        (vec!["block"], 2, "mitigator: the following required arguments were not provided: <PREFIXES>... (see 'mitigator block --help')".into()),
        (vec!["unblock"], 2, "mitigator: the following required arguments were not provided: <PREFIXES>... (see 'mitigator unblock --help')".into()),
        (vec!["frobnicate"], 2, "mitigator: unrecognized subcommand 'frobnicate' (see 'mitigator --help')".into()),
        // --from-file with one bad line: the error names file and line.
        (vec!["block", "10.63.0.0/16", "--from-file", bad_file], 2, format!("mitigator: {bad_file}:4: invalid prefix '10.61.0.0/33': prefix length 33 is longer than 32 for IPv4")),
        // Runtime errors: the daemon (or the system) refuses.
        (vec!["unblock", "10.9.9.9"], 1, "mitigator: 10.9.9.9/32 is not blocked; nothing was changed".into()),
        (vec!["unblock", "10.7.0.0/16", "10.9.9.9"], 1, "mitigator: 10.9.9.9/32 is not blocked; nothing was changed".into()),
        (vec!["unallow", "10.7.0.0/16"], 1, "mitigator: 10.7.0.0/16 is not allowed; nothing was changed".into()),
        (vec!["block", "10.9.0.1", "--ttl", "200years"], 1, "mitigator: invalid ttl: 6311520000s is longer than the maximum of 3153600000s (100 years; omit --ttl for a rule that never expires); nothing was changed".into()),
        (vec!["block", "--from-file", missing_file], 1, format!("mitigator: cannot read {missing_file}: No such file or directory (os error 2)")),
    ];

    let before = snapshot(&daemon);
    assert!(before.state.is_some());
    for (args, code, stderr) in &cases {
        let r = daemon.cli(args);
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (*code, format!("{stderr}\n").as_str()),
            "mitigator {args:?}"
        );
        assert_eq!(r.stdout, "", "mitigator {args:?}");
        assert_eq!(
            snapshot(&daemon),
            before,
            "mitigator {args:?} changed the state"
        );
    }

    // A missing daemon: runtime error, one line.
    let r = std::process::Command::new(mitigator_tests::daemon::binary().unwrap())
        .args([
            "block",
            "10.9.0.1",
            "--socket",
            "/nonexistent/mitigator.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        "mitigator: cannot reach the mitigator daemon at /nonexistent/mitigator.sock: No such file or directory (os error 2) (is `mitigator run` running? set --socket or MITIGATOR_SOCKET)\n"
    );
    // Help and version are not errors.
    for args in [["--help"], ["--version"]] {
        let r = std::process::Command::new(mitigator_tests::daemon::binary().unwrap())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(0), "{args:?}");
    }
    assert_eq!(snapshot(&daemon), before);
}

#[test]
fn malformed_requests_on_the_socket_get_an_error_reply_and_the_daemon_serves_on() {
    require_privileges!();
    let lab = Lab::new("raw").unwrap();
    let mut daemon = Daemon::start(&lab, &[]).unwrap();
    daemon.ok(&["block", "10.8.0.0/16"]);
    let before = snapshot(&daemon);

    let limit = MAX_REQUEST_BYTES;
    let mut huge = br#"{"cmd":"add","kind":"block","ttl_secs":null,"reason":""#.to_vec();
    huge.resize(limit + 10, b'x');
    huge.extend_from_slice(b"\",\"prefixes\":[\"10.9.0.0/16\"]}\n");
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("huge", huge, format!(r#"{{"error":"request too large (limit {limit} bytes)"}}"#)),
        ("garbage", b"\x00\xff\xfegarbage\n".to_vec(), r#"{"error":"malformed request: expected value at line 1 column 1"}"#.into()),
        ("no newline", br#"{"cmd":"list"}"#.to_vec(), r#"{"error":"malformed request: no newline-terminated JSON line received"}"#.into()),
        ("empty", Vec::new(), r#"{"error":"malformed request: no newline-terminated JSON line received"}"#.into()),
        ("unknown command", b"{\"cmd\":\"explode\"}\n".to_vec(), r#"{"error":"malformed request: unknown variant `explode`, expected one of "#.into()),
        (
            "unknown field",
            b"{\"cmd\":\"add\",\"kind\":\"block\",\"prefixes\":[\"10.9.0.0/16\"],\"sneaky\":1}\n".to_vec(),
            r#"{"error":"malformed request: unknown field `sneaky`, expected one of "#.into(),
        ),
        (
            "bad prefix past the client",
            b"{\"cmd\":\"add\",\"kind\":\"block\",\"prefixes\":[\"10.9.0.0/16\",\"10.0.0.0/33\"]}\n".to_vec(),
            r#"{"error":"invalid prefix '10.0.0.0/33': prefix length 33 is longer than 32 for IPv4; nothing was changed"}"#.into(),
        ),
        (
            "zero ttl past the client",
            b"{\"cmd\":\"add\",\"kind\":\"block\",\"prefixes\":[\"10.9.0.0/16\"],\"ttl_secs\":0}\n".to_vec(),
            r#"{"error":"invalid ttl: must be at least 1s; nothing was changed"}"#.into(),
        ),
        (
            "no prefixes",
            b"{\"cmd\":\"remove\",\"kind\":\"block\",\"prefixes\":[]}\n".to_vec(),
            r#"{"error":"no prefix given; nothing was changed"}"#.into(),
        ),
    ];
    for (what, bytes, want) in cases {
        let reply = daemon.raw_request(bytes).unwrap();
        assert!(reply.ends_with('\n'), "{what}: {reply:?}");
        assert!(
            reply.starts_with(&want),
            "{what}: got {reply:?}, want {want:?}..."
        );
        assert!(
            daemon.is_running(),
            "{what}: the daemon died:\n{}",
            daemon.log_text()
        );
        assert_eq!(snapshot(&daemon), before, "{what} changed the state");
    }
    // Still serving, and a well-formed raw request works.
    let reply = daemon
        .raw_request(b"{\"cmd\":\"status\"}\n".to_vec())
        .unwrap();
    assert!(reply.starts_with(r#"{"ok":{"status":"#), "{reply}");
    daemon.ok(&["block", "10.9.0.0/16"]);
    assert_eq!(daemon.rules().len(), 2);
}

#[test]
fn an_unprivileged_user_is_refused_and_changes_nothing() {
    require_privileges!();
    let lab = Lab::new("uid").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    daemon.ok(&["block", "10.8.0.0/16"]);
    let before = snapshot(&daemon);
    let sock = daemon.socket.to_str().unwrap().to_string();

    // The socket is 0660 root: the kernel refuses a stranger first.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = daemon.cli_as(65534, 65534, &["block", "10.9.0.1"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!("mitigator: cannot reach the mitigator daemon at {sock}: Permission denied (os error 13) (is `mitigator run` running? set --socket or MITIGATOR_SOCKET)\n")
    );

    // Opened up by mistake: the daemon checks the peer's credentials itself.
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [
        vec!["block", "10.9.0.1"],
        vec!["unblock", "10.8.0.0/16"],
        vec!["list", "--json"],
        vec!["status"],
    ] {
        let r = daemon.cli_as(65534, 65534, &args);
        assert_eq!(r.code, 1, "{args:?}");
        assert_eq!(
            r.stderr,
            "mitigator: permission denied: uid 65534 may not control mitigator (root or the socket's group only)\n",
            "{args:?}"
        );
        assert_eq!(r.stdout, "");
    }
    assert_eq!(snapshot(&daemon), before);
    assert!(daemon
        .log_text()
        .contains("refused a client without permission"));
}

#[test]
fn ttl_expiry_is_seen_in_the_list_the_maps_and_traffic() {
    require_privileges!();
    let lab = Lab::new("ttl").unwrap();
    let attacker = addr("10.201.0.66");
    let client = addr("10.201.0.2");
    lab.add_peer_addr("10.201.0.66/24").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(60)).unwrap();
    // Resolve neighbours first so no datagram waits for ARP.
    send_udp(&lab.peer, attacker, dst, 1).unwrap();
    send_udp(&lab.peer, client, dst, 1).unwrap();
    assert_eq!(listener.wait_for(attacker, 1, Duration::from_secs(5)), 1);
    assert_eq!(listener.wait_for(client, 1, Duration::from_secs(5)), 1);

    let asked = SystemTime::now();
    daemon.ok(&["block", "10.201.0.66", "--ttl", "2s", "--reason", "short"]);
    daemon.ok(&["block", "10.201.0.99", "--reason", "stays"]);
    let rules = daemon.rules();
    let r = rule(&rules, "block", "10.201.0.66/32");
    let expires = r["expires"].as_u64().unwrap();
    assert!(
        (2..=3).contains(&(expires - r["created"].as_u64().unwrap())),
        "{r}"
    );
    let expires_at = UNIX_EPOCH + Duration::from_secs(expires);
    assert!(
        expires_at >= asked + Duration::from_secs(2),
        "expires earlier than its TTL: {r}"
    );

    // Enforced while it lasts.
    send_udp(&lab.peer, attacker, dst, 50).unwrap();
    send_udp(&lab.peer, client, dst, 50).unwrap();
    assert_eq!(listener.wait_for(client, 51, Duration::from_secs(5)), 51);
    assert_eq!(listener.count_from(attacker), 1);
    assert_eq!(daemon.counter("drop_blocklist", "udp"), 50);
    assert_eq!(
        rule(&daemon.rules(), "block", "10.201.0.66/32")["packets"],
        50
    );
    assert!(
        SystemTime::now() < expires_at,
        "the test was too slow to see the rule in force"
    );

    // Gone from the list on time.
    let mut gone_at = None;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        let set = daemon.rule_set();
        if !set.contains(&"block 10.201.0.66/32".to_string()) {
            gone_at = Some(SystemTime::now());
            assert_eq!(set, ["block 10.201.0.99/32"]);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone_at = gone_at.expect("the rule never expired");
    assert!(
        gone_at >= asked + Duration::from_secs(2),
        "removed before its TTL"
    );
    let late = gone_at.duration_since(expires_at).unwrap_or_default();
    eprintln!("ttl: rule removed {late:?} after its expiry");
    assert!(
        late <= Duration::from_millis(1500),
        "removed {late:?} after its expiry"
    );

    // Gone from the maps: traffic flows again, and nothing more is dropped.
    send_udp(&lab.peer, attacker, dst, 50).unwrap();
    assert_eq!(listener.wait_for(attacker, 51, Duration::from_secs(5)), 51);
    assert_eq!(daemon.counter("drop_blocklist", "udp"), 50);
    assert_eq!(
        state_file_set(&daemon),
        BTreeSet::from(["block 10.201.0.99/32".to_string()])
    );
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("rule expired"))
        .unwrap_or_else(|| panic!("no 'rule expired' log line:\n{log}"));
    assert!(
        line.contains("10.201.0.66/32") && line.contains("short"),
        "{line}"
    );
}

/// Bulk load: 1,000,000 IPv4 and 100,000 IPv6 prefixes, each in one request.
/// Prints how long each step takes; asserts no timing.
#[test]
fn capacity_one_million_ipv4_and_100k_ipv6_prefixes() {
    require_privileges!();
    let lab = Lab::new("cap").unwrap();
    lab.add_peer_addr("10.201.0.66/24").unwrap();
    let mut daemon = Daemon::start(&lab, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let v4_file = dir.path().join("v4.txt");
    let mut text = String::from("# one million IPv4 sources\n\n");
    let base = u32::from(Ipv4Addr::new(11, 0, 0, 0));
    for i in 0..999_999u32 {
        text.push_str(&Ipv4Addr::from(base + i).to_string());
        text.push('\n');
    }
    text.push_str("10.201.0.66/32 # the lab attacker\n");
    std::fs::write(&v4_file, text).unwrap();
    let v6_file = dir.path().join("v6.txt");
    let mut text = String::new();
    let base = u128::from("fd00:bad::".parse::<Ipv6Addr>().unwrap());
    for i in 0..100_000u128 {
        text.push_str(&format!("{}/128\n", Ipv6Addr::from(base + (i << 16))));
    }
    std::fs::write(&v6_file, text).unwrap();

    let t = Instant::now();
    let r = daemon.ok(&[
        "block",
        "--from-file",
        v4_file.to_str().unwrap(),
        "--reason",
        "bulk v4",
    ]);
    let v4_time = t.elapsed();
    assert_eq!(r.stdout, "block: added 1000000, updated 0 rule(s)\n");
    let t = Instant::now();
    let r = daemon.ok(&[
        "block",
        "--from-file",
        v6_file.to_str().unwrap(),
        "--reason",
        "bulk v6",
    ]);
    let v6_time = t.elapsed();
    assert_eq!(r.stdout, "block: added 100000, updated 0 rule(s)\n");

    let t = Instant::now();
    let status = daemon.ok(&["status", "--json"]).json();
    let status_time = t.elapsed();
    assert_eq!(status["block_rules"], 1_100_000);
    assert_eq!(status["allow_rules"], 0);

    // One more rule, and one less, with a million in the store.
    let t = Instant::now();
    daemon.ok(&["block", "192.0.2.1"]);
    let single_time = t.elapsed();
    let t = Instant::now();
    daemon.ok(&["unblock", "192.0.2.1"]);
    let unblock_time = t.elapsed();

    let t = Instant::now();
    let list = daemon.ok(&["list", "--json"]);
    let list_time = t.elapsed();
    assert_eq!(list.json()["rules"].as_array().unwrap().len(), 1_100_000);
    drop(list);

    let state_bytes = std::fs::metadata(daemon.state_file()).unwrap().len();
    let log = daemon.log_plain();
    let bulk_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rules added in bulk"))
        .collect();
    assert_eq!(
        bulk_lines.len(),
        2,
        "one summary line per bulk request:\n{}",
        &log[..log.len().min(4000)]
    );
    assert!(bulk_lines[0].contains("rules=1000000"), "{}", bulk_lines[0]);
    assert!(
        log.lines().count() < 100,
        "bulk loads must not log per rule"
    );

    // Enforced: the one lab address among the million is dropped.
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(120)).unwrap();
    send_udp(&lab.peer, addr("10.201.0.2"), dst, 50).unwrap();
    send_udp(&lab.peer, addr("10.201.0.66"), dst, 50).unwrap();
    assert_eq!(
        listener.wait_for(addr("10.201.0.2"), 50, Duration::from_secs(5)),
        50
    );
    assert_eq!(listener.count_from(addr("10.201.0.66")), 0);

    // A restart restores and reconciles all of it (enforcement never stops).
    daemon.stop_with(nix::sys::signal::Signal::SIGTERM).unwrap();
    let t = Instant::now();
    daemon.spawn_within(&[], Duration::from_secs(120)).unwrap();
    let restart_time = t.elapsed();
    let status = daemon.ok(&["status", "--json"]).json();
    assert_eq!(status["block_rules"], 1_100_000);
    assert_eq!(status["adopted"], true);
    send_udp(&lab.peer, addr("10.201.0.66"), dst, 50).unwrap();
    send_udp(&lab.peer, addr("10.201.0.2"), dst, 50).unwrap();
    assert_eq!(
        listener.wait_for(addr("10.201.0.2"), 100, Duration::from_secs(5)),
        100
    );
    assert_eq!(listener.count_from(addr("10.201.0.66")), 0);

    eprintln!(
        "capacity: block 1M IPv4 {v4_time:?}, block 100k IPv6 {v6_time:?}, status {status_time:?}, \
         then one block {single_time:?}, one unblock {unblock_time:?}, list --json of 1.1M {list_time:?}, \
         restart until ready {restart_time:?}, state file {state_bytes} bytes"
    );
}

/// A full map: the IPv4 allowlist holds 65,536 entries; 65,537 in one
/// request fail with the limit named, and nothing is changed (the request
/// is all or nothing, in the store, the file and the maps).
#[test]
fn a_full_map_is_a_clear_error_naming_the_limit_and_changes_nothing() {
    require_privileges!();
    let lab = Lab::new("full").unwrap();
    lab.add_peer_addr("10.201.0.66/24").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    daemon.ok(&["block", "10.201.0.64/26", "--reason", "attack net"]);
    let before = snapshot(&daemon);

    // The blocked lab address comes first, so a partial insert would let it through.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("allow.txt");
    let mut text = String::from("10.201.0.66\n");
    let base = u32::from(Ipv4Addr::new(20, 0, 0, 0));
    for i in 0..65_536u32 {
        text.push_str(&format!("{}\n", Ipv4Addr::from(base + i)));
    }
    std::fs::write(&file, text).unwrap();
    let r = daemon.cli(&["allow", "--from-file", file.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "mitigator: the IPv4 allowlist map is full (65536 entries): remove rules or raise the limit; nothing was changed\n"
    );
    assert_eq!(snapshot(&daemon), before);
    let s = daemon.ok(&["status", "--json"]).json();
    assert_eq!(
        (s["block_rules"].as_u64(), s["allow_rules"].as_u64()),
        (Some(1), Some(0))
    );

    // The maps were rolled back too: the lab address is still dropped.
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(30)).unwrap();
    send_udp(&lab.peer, addr("10.201.0.66"), dst, 50).unwrap();
    send_udp(&lab.peer, addr("10.201.0.2"), dst, 50).unwrap();
    assert_eq!(
        listener.wait_for(addr("10.201.0.2"), 50, Duration::from_secs(5)),
        50
    );
    assert_eq!(listener.count_from(addr("10.201.0.66")), 0);
    assert_eq!(daemon.counter("pass_allowlist", "udp"), 0);

    // Exactly the capacity fits.
    let mut text = String::new();
    for i in 0..65_536u32 {
        text.push_str(&format!("{}\n", Ipv4Addr::from(base + i)));
    }
    std::fs::write(&file, text).unwrap();
    let r = daemon.ok(&["allow", "--from-file", file.to_str().unwrap()]);
    assert_eq!(r.stdout, "allow: added 65536, updated 0 rule(s)\n");
    let r = daemon.cli(&["allow", "10.201.0.66"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "mitigator: the IPv4 allowlist map is full (65536 entries): remove rules or raise the limit; nothing was changed\n")
    );
    assert_eq!(
        daemon.ok(&["status", "--json"]).json()["allow_rules"],
        65_536
    );
}

/// serde ignores unknown fields on the unit variants (`list`, `stats`,
/// `status`) of an internally tagged enum even with `deny_unknown_fields`;
/// protocol.rs needs `List {}` etc. (same wire form) to refuse them.
#[test]
fn unknown_fields_on_unit_requests_are_refused() {
    require_privileges!();
    let lab = Lab::new("unit").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    for cmd in ["list", "stats", "status"] {
        let reply = daemon
            .raw_request(format!("{{\"cmd\":\"{cmd}\",\"sneaky\":1}}\n").into_bytes())
            .unwrap();
        assert!(
            reply.starts_with(r#"{"error":"malformed request: unknown field `sneaky`"#),
            "{cmd}: {reply}"
        );
    }
}

/// A bulk load larger than the daemon reads is refused by the client with
/// its size and the limit, before anything is sent.
#[test]
fn an_oversize_bulk_load_is_refused_with_its_size_and_changes_nothing() {
    require_privileges!();
    let lab = Lab::new("big").unwrap();
    let daemon = Daemon::start(&lab, &[]).unwrap();
    daemon.ok(&["block", "10.8.0.0/16"]);
    let before = snapshot(&daemon);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.txt");
    let base = u32::from(Ipv4Addr::new(11, 0, 0, 0));
    let prefixes: Vec<String> = (0..4_000_000u32)
        .map(|i| format!("{}/32", Ipv4Addr::from(base + i)))
        .collect();
    std::fs::write(&file, prefixes.join("\n")).unwrap();
    // The request the client would send, as the protocol lays it out.
    let size = serde_json::to_vec(&serde_json::json!({
        "cmd": "add", "kind": "block", "prefixes": prefixes, "ttl_secs": null, "reason": ""
    }))
    .unwrap()
    .len()
        + 1;
    assert!(size > MAX_REQUEST_BYTES);
    let r = daemon.cli(&["block", "--from-file", file.to_str().unwrap()]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            format!(
                "mitigator: the request is {size} bytes, more than the daemon accepts \
                 ({MAX_REQUEST_BYTES} bytes); nothing was changed: split the prefixes into several requests\n"
            )
            .as_str()
        )
    );
    assert_eq!(snapshot(&daemon), before);
}
