//! 50 real CLI clients at once against one daemon: each blocks its own
//! prefixes (one per call and several per call) and unblocks half of them,
//! while readers list and ask for status. Afterwards the rule list, the
//! state file and the maps (sampled with real traffic and per-rule hit
//! counters) hold exactly the expected set: no rule lost, none doubled.
//! A restart keeps it so.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use mitigator_tests::{
    daemon::Daemon,
    lab::Lab,
    require_privileges,
    traffic::{in_netns, UdpCounter},
};
use serde_json::Value;

const CLIENTS: usize = 50;
/// Sampled /32s per client, all inside the lab's 10.201.0.0/24.
const SAMPLED: usize = 4;
const FIRST_HOST: usize = 10;
const PER_SOURCE: u64 = 3;

fn sampled(client: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, 0, (FIRST_HOST + client * SAMPLED + j) as u8)
}

/// What client `i` leaves blocked: its sampled hosts 2 and 3 and a /16.
fn expected_rules() -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for i in 0..CLIENTS {
        for j in 2..SAMPLED {
            set.insert(format!("block {}/32", sampled(i, j)));
        }
        set.insert(format!("block 10.{}.0.0/16", 100 + i));
    }
    set
}

/// One client's work; every call must succeed with the exact reply.
fn client(daemon: &Daemon, i: usize) {
    let check = |args: &[&str], want: &str| {
        let r = daemon.cli(args);
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (0, want, ""),
            "client {i}: mitigator {args:?}"
        );
    };
    let reason = format!("client {i}");
    for j in 0..SAMPLED {
        let host = sampled(i, j).to_string();
        check(
            &["block", &host, "--reason", &reason],
            "block: added 1, updated 0 rule(s)\n",
        );
    }
    let v4 = format!("10.{}.0.0/16", 100 + i);
    let v6 = format!("fd00:c0:{i:x}::/48");
    check(
        &["block", &v4, &v6, "--reason", &reason, "--ttl", "2h"],
        "block: added 2, updated 0 rule(s)\n",
    );
    let (h0, h1) = (sampled(i, 0).to_string(), sampled(i, 1).to_string());
    check(&["unblock", &h0, &h1], "block: removed 2 rule(s)\n");
    check(&["unblock", &v6], "block: removed 1 rule(s)\n");
}

/// Sends `PER_SOURCE` datagrams from every sampled source to `dst`, from
/// one thread inside the peer namespace.
fn sample_traffic(lab: &Lab, dst: SocketAddr) {
    let sources: Vec<Ipv4Addr> = (0..CLIENTS)
        .flat_map(|i| (0..SAMPLED).map(move |j| sampled(i, j)))
        .collect();
    in_netns(&lab.peer, move || {
        for src in sources {
            let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(src), 0))?;
            for n in 0..PER_SOURCE {
                sock.send_to(&n.to_be_bytes(), dst)?;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    })
    .unwrap();
}

/// The maps hold exactly the expected blocks: every unblocked sampled
/// source delivers all its datagrams, every blocked one none, and each
/// blocked rule counted them. `round` is how many samples were sent so far.
fn check_maps_by_traffic(
    lab: &Lab,
    daemon: &Daemon,
    listener: &UdpCounter,
    dst: SocketAddr,
    round: u64,
) {
    sample_traffic(lab, dst);
    for i in 0..CLIENTS {
        for j in 0..2 {
            let src = IpAddr::V4(sampled(i, j));
            assert_eq!(
                listener.wait_for(src, round * PER_SOURCE, Duration::from_secs(10)),
                round * PER_SOURCE,
                "unblocked {src} did not get through"
            );
        }
    }
    let rules = daemon.rules();
    for i in 0..CLIENTS {
        for j in 2..SAMPLED {
            let src = sampled(i, j);
            assert_eq!(
                listener.count_from(IpAddr::V4(src)),
                0,
                "blocked {src} got through"
            );
            let prefix = format!("{src}/32");
            let r = rules
                .iter()
                .find(|r| r["prefix"] == prefix.as_str())
                .unwrap_or_else(|| panic!("no rule for {prefix}"));
            assert_eq!(r["packets"], round * PER_SOURCE, "{r}");
        }
    }
}

fn state_file_rules(daemon: &Daemon) -> Vec<String> {
    let json: Value = serde_json::from_slice(&std::fs::read(daemon.state_file()).unwrap()).unwrap();
    let mut v = Vec::new();
    for g in json["groups"].as_array().unwrap() {
        for p in g["prefixes"].as_array().unwrap() {
            v.push(format!(
                "{} {}",
                g["kind"].as_str().unwrap(),
                p.as_str().unwrap()
            ));
        }
    }
    v.sort();
    v
}

#[test]
fn fifty_concurrent_clients_lose_and_double_no_rule() {
    require_privileges!();
    let lab = Lab::new("conc").unwrap();
    let hosts: Vec<String> = (0..CLIENTS)
        .flat_map(|i| (0..SAMPLED).map(move |j| format!("{}/24", sampled(i, j))))
        .collect();
    lab.add_peer_addrs(&hosts).unwrap();
    let mut daemon = Daemon::start(&lab, &[]).unwrap();
    let dst = SocketAddr::new(IpAddr::V4(lab.protected_addr), 9000);
    let listener = UdpCounter::start(&lab.protected, dst, Duration::from_secs(120)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        // Readers while the writers run: every answer complete and valid.
        let readers: Vec<_> = ["list", "status"]
            .into_iter()
            .map(|cmd| {
                let (daemon, done) = (&daemon, done.clone());
                s.spawn(move || {
                    let mut n = 0;
                    while !done.load(Ordering::Relaxed) && n < 500 {
                        let r = daemon.cli(&[cmd, "--json"]);
                        assert_eq!(r.code, 0, "{cmd}: {}", r.stderr);
                        let json = r.json();
                        if cmd == "list" {
                            let rules = json["rules"].as_array().unwrap();
                            let set: BTreeSet<&str> = rules
                                .iter()
                                .map(|r| r["prefix"].as_str().unwrap())
                                .collect();
                            assert_eq!(set.len(), rules.len(), "duplicate rule in a listing");
                        } else {
                            assert!(json["block_rules"].is_u64());
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let writers: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let daemon = &daemon;
                s.spawn(move || client(daemon, i))
            })
            .collect();
        for w in writers {
            w.join().expect("a client failed");
        }
        done.store(true, Ordering::Relaxed);
        for r in readers {
            let n = r.join().expect("a reader failed");
            assert!(n > 0);
        }
    });

    let want: Vec<String> = expected_rules().into_iter().collect();
    assert_eq!(want.len(), CLIENTS * 3);
    // Sorted, not deduplicated: a doubled rule would show.
    assert_eq!(daemon.rule_set(), want);
    let status = daemon.ok(&["status", "--json"]).json();
    assert_eq!(status["block_rules"], want.len());
    assert_eq!(status["allow_rules"], 0);
    assert_eq!(state_file_rules(&daemon), want);
    for r in daemon.rules() {
        let i: usize = r["reason"].as_str().unwrap()["client ".len()..]
            .parse()
            .unwrap();
        let prefix = r["prefix"].as_str().unwrap();
        assert!(
            prefix == format!("10.{}.0.0/16", 100 + i)
                || (2..SAMPLED).any(|j| prefix == format!("{}/32", sampled(i, j))),
            "rule {r} carries another client's reason"
        );
    }
    check_maps_by_traffic(&lab, &daemon, &listener, dst, 1);

    // A restart keeps exactly the same set, in the list and in the maps.
    daemon.stop_with(nix::sys::signal::Signal::SIGTERM).unwrap();
    daemon.spawn(&[]).unwrap();
    assert_eq!(daemon.rule_set(), want);
    assert_eq!(state_file_rules(&daemon), want);
    check_maps_by_traffic(&lab, &daemon, &listener, dst, 2);
}
