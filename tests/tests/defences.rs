//! The datapath defences as tables run through BPF_PROG_TEST_RUN: per-source
//! rate limits, amplification drop, the per-port UDP cap, the ICMP/PMTU
//! budgets, the fragment policy, allow/block precedence, sampling, monitor
//! mode, and SYN cookies answered from XDP (exact SYN-ACK bytes, checksums
//! verified here independently, ACK validation accepted and rejected).
//!
//! A row is a configuration (the `CONFIG` entry, port flags, rules) and a
//! sequence of packets run in order against a freshly loaded program. Every
//! step checks its verdict, that the frame came back unchanged (or, for
//! XDP_TX, is exactly the expected SYN-ACK), and that exactly one counter
//! cell moved, by one packet of the frame's length. After the last step the
//! row checks the `EVENTS` deltas (every event, not only those it names) and
//! the hit counter of every rule it set up. Failures name the row and step.
//!
//! Rate limits are GCRA on `bpf_ktime_get_ns`; steps run microseconds apart,
//! so with a rate of 1/s a burst of `n` means exactly `n` packets pass.
//!
//! SYN cookies: a test run executes in the calling thread's network
//! namespace with its loopback as the device, and `bpf_tcp_gen_syncookie`
//! needs a real listening socket and `net.ipv4.tcp_syncookies = 2` there. Those
//! tests run on a thread that unshared a private network namespace, so the
//! host's sockets and sysctls are never involved (the test checks that the
//! host's `tcp_syncookies` did not change).

use std::{
    net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream},
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use mitigator_common::{
    Class as C, Config, Counter, Gcra, Reason as R, Sample, SourceKey, DEFAULT_AMP_PORTS,
    EVENT_ENTRIES, EVENT_SAMPLE, EVENT_SAMPLE_CAPPED, EVENT_SAMPLE_LOST, EVENT_SOURCE_INSERT,
    EVENT_SYN_NO_LISTENER, FLAG_AMP_DROP, FLAG_MONITOR, FLAG_PORT_CAP, FLAG_RATE_LIMIT,
    FLAG_SAMPLE, FLAG_SYN_COOKIES, FRAG_DROP, FRAG_PASS, FRAG_RATE_LIMIT, PORT_TCP_SYN_COOKIES,
    PORT_UDP_AMP_SOURCE, PORT_UDP_SERVICE,
};
use mitigator_tests::{
    packet::{proto, tcp_flags, Packet, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6},
    testrun::{bpf_ready, Events, Harness, List, Verdict},
};

const PASS: Verdict = Verdict::Pass;
const DROP: Verdict = Verdict::Drop;
const TX: Verdict = Verdict::Tx;

const A4: &str = "192.0.2.1";
const B4: &str = "192.0.2.2";
const C4: &str = "192.0.2.3";
const D4: &str = "192.0.2.4";
const E4: &str = "192.0.2.5";
const F4: &str = "192.0.2.6";
const DST4: &str = "203.0.113.1";
/// Two addresses in one /64, and one in the next /64 of the same /48.
const A6: &str = "2001:db8:a:1::1";
const A6_SAME_64: &str = "2001:db8:a:1:ffff:ffff:ffff:fffe";
const B6: &str = "2001:db8:a:2::1";
const C6: &str = "2001:db8:c::1";
const DST6: &str = "2001:db8:ffff::1";

/// 1 packet/s with a burst of 3: the first 3 back-to-back packets pass.
const SLOW: Gcra = Gcra::per_second(1, 3);
/// 1 packet/s, no burst: only the first packet passes.
const ONE: Gcra = Gcra::per_second(1, 1);
const OFF: Gcra = Gcra::per_second(0, 0);

/// A UDP service port (a DNS server): amplification-port traffic to it passes.
const SERVICE_PORT: u16 = 53;
/// An ephemeral port nothing is configured for.
const RANDOM_PORT: u16 = 40000;

// ---------------------------------------------------------------- rows

struct Step {
    what: String,
    packet: Packet,
    verdict: Verdict,
    cell: (R, C),
}

struct Row {
    name: String,
    config: Config,
    /// `(port, flags)`, OR'd together per port.
    ports: Vec<(u16, u32)>,
    rules: Vec<(List, &'static str)>,
    /// Rules whose hit counters must read exactly this many packets; every
    /// other rule in `rules` must read zero.
    hits: Vec<(List, &'static str, u64)>,
    steps: Vec<Step>,
    /// Expected `EVENTS` deltas over the whole row; every other event must stay.
    events: Vec<(u32, u64)>,
}

fn row(name: impl Into<String>, config: Config) -> Row {
    Row {
        name: name.into(),
        config,
        ports: Vec::new(),
        rules: Vec::new(),
        hits: Vec::new(),
        steps: Vec::new(),
        events: Vec::new(),
    }
}

impl Row {
    fn port(mut self, port: u16, flags: u32) -> Self {
        self.ports.push((port, flags));
        self
    }

    /// `PORT_UDP_AMP_SOURCE` on every default amplification port.
    fn amp_sources(self) -> Self {
        DEFAULT_AMP_PORTS
            .iter()
            .fold(self, |r, p| r.port(*p, PORT_UDP_AMP_SOURCE))
    }

    fn block(mut self, prefix: &'static str) -> Self {
        self.rules.push((List::Block, prefix));
        self
    }

    fn allow(mut self, prefix: &'static str) -> Self {
        self.rules.push((List::Allow, prefix));
        self
    }

    fn hit(mut self, list: List, prefix: &'static str, packets: u64) -> Self {
        assert!(
            self.rules.contains(&(list, prefix)),
            "{}: hit on a rule it does not set up",
            self.name
        );
        self.hits.push((list, prefix, packets));
        self
    }

    fn step(mut self, what: impl Into<String>, packet: Packet, expect: Expect) -> Self {
        let (verdict, reason, class) = expect;
        self.steps.push(Step {
            what: what.into(),
            packet,
            verdict,
            cell: (reason, class),
        });
        self
    }

    /// `n` identical steps, named `what (i/n)`.
    fn repeat(self, n: usize, what: &str, packet: Packet, expect: Expect) -> Self {
        (1..=n).fold(self, |r, i| {
            r.step(format!("{what} ({i}/{n})"), packet.clone(), expect)
        })
    }

    fn event(mut self, event: u32, count: u64) -> Self {
        self.events.push((event, count));
        self
    }

    /// The same row in monitor mode: every step passes, counted as before.
    fn monitored(mut self) -> Self {
        self.name = format!("monitor: {}", self.name);
        self.config.flags |= FLAG_MONITOR;
        for step in &mut self.steps {
            assert!(step.verdict != TX, "{}: monitor rows never TX", self.name);
            step.verdict = PASS;
        }
        self
    }
}

/// What a step must get: the verdict and the one (reason, class) cell it moves.
type Expect = (Verdict, R, C);

/// Passed, reason `pass`.
fn pass(class: C) -> Expect {
    (PASS, R::Pass, class)
}

/// Dropped for `reason`.
fn drops(reason: R, class: C) -> Expect {
    (DROP, reason, class)
}

/// Passed, counted under `reason` (the allowlist, a valid cookie, or a
/// decision monitor mode only counts).
fn counted(reason: R, class: C) -> Expect {
    (PASS, reason, class)
}

/// Answered with a SYN-ACK (XDP_TX).
fn answered() -> Expect {
    (TX, R::TxSynCookie, C::TcpSyn)
}

fn config(flags: u32) -> Config {
    Config {
        flags,
        ..Config::default()
    }
}

// ------------------------------------------------------------- frames

fn v4(src: &str) -> Packet {
    Packet::new().ipv4(src, DST4)
}

fn v6(src: &str) -> Packet {
    Packet::new().ipv6(src, DST6)
}

/// IPv4 behind an 802.1Q tag.
fn tagged4(src: &str) -> Packet {
    Packet::new().vlan_8021q(7).ipv4(src, DST4)
}

/// Short names for the L4 layers the tables use over and over.
trait Shortcuts {
    fn syn(self) -> Self;
    fn ack(self) -> Self;
    fn udp_from(self, sport: u16, dport: u16) -> Self;
    fn dns(self) -> Self;
    fn ping4(self) -> Self;
    fn ping6(self) -> Self;
    /// ICMPv4 destination unreachable, fragmentation needed (type 3 code 4).
    fn frag_needed(self) -> Self;
    /// ICMPv6 packet too big (type 2).
    fn too_big(self) -> Self;
    /// A non-first fragment carrying the middle of a UDP datagram.
    fn later_fragment(self) -> Self;
}

impl Shortcuts for Packet {
    fn syn(self) -> Self {
        self.tcp(40000, 443).tcp_flags(tcp_flags::SYN)
    }

    fn ack(self) -> Self {
        self.tcp(40000, 443)
            .tcp_flags(tcp_flags::ACK | tcp_flags::PSH)
            .tcp_ack_number(7)
            .payload(b"GET / HTTP/1.1\r\n")
    }

    fn udp_from(self, sport: u16, dport: u16) -> Self {
        self.udp(sport, dport).payload(&[0xab; 40])
    }

    fn dns(self) -> Self {
        self.udp_from(53000, SERVICE_PORT)
    }

    fn ping4(self) -> Self {
        self.icmp(8, 0).payload(b"ping")
    }

    fn ping6(self) -> Self {
        self.icmpv6(128, 0).payload(b"ping")
    }

    fn frag_needed(self) -> Self {
        self.icmp(3, 4).payload(&[0x45; 28])
    }

    fn too_big(self) -> Self {
        self.icmpv6(2, 0).payload(&[0x60; 48])
    }

    fn later_fragment(self) -> Self {
        let p = if is_v6(&self) {
            self.ipv6_fragment(185, true)
        } else {
            self.ipv4_fragment(185, true)
        };
        p.ip_proto(proto::UDP).payload(&[0x55; 64])
    }
}

fn is_v6(p: &Packet) -> bool {
    let frame = p.build();
    let (l3, ether_type) = l3_offset(&frame);
    ether_type == ETH_P_IPV6 || frame.get(l3).is_some_and(|b| b >> 4 == 6)
}

// --------------------------------------------------------------- tables

#[rustfmt::skip]
fn rate_limit_rows() -> Vec<Row> {
    let on = |f: fn(&mut Config)| {
        let mut c = config(FLAG_RATE_LIMIT);
        f(&mut c);
        c
    };
    let syn = on(|c| c.syn = SLOW);
    let udp = on(|c| c.udp = SLOW);
    let icmp = on(|c| c.icmp = SLOW);
    let mut rows = Vec::new();
    for (family, a, b, ping) in [
        ("v4", v4(A4), v4(B4), v4(A4).ping4()),
        ("v6", v6(A6), v6(B6), v6(A6).ping6()),
    ] {
        rows.push(
            row(format!("{family} SYN: burst of 3 passes, then drop; another source unaffected"), syn)
                .repeat(3, "SYN from A", a.clone().syn(), pass(C::TcpSyn))
                .repeat(2, "SYN from A over its rate", a.clone().syn(), drops(R::DropSynRate, C::TcpSyn))
                .repeat(3, "SYN from B", b.clone().syn(), pass(C::TcpSyn))
                .step("4th SYN from B", b.clone().syn(), drops(R::DropSynRate, C::TcpSyn))
                .event(EVENT_SOURCE_INSERT, 2),
        );
        rows.push(
            row(format!("{family} UDP: burst of 3 passes, then drop; another source unaffected"), udp)
                .repeat(3, "UDP from A", a.clone().dns(), pass(C::Udp))
                .repeat(2, "UDP from A over its rate", a.clone().dns(), drops(R::DropUdpRate, C::Udp))
                .step("UDP from B", b.clone().dns(), pass(C::Udp))
                .event(EVENT_SOURCE_INSERT, 2),
        );
        let ping_b = if family == "v4" { b.clone().ping4() } else { b.clone().ping6() };
        rows.push(
            row(format!("{family} ICMP echo: burst of 3 passes, then drop; another source unaffected"), icmp)
                .repeat(3, "echo from A", ping.clone(), pass(C::Icmp))
                .repeat(2, "echo from A over its rate", ping, drops(R::DropIcmpRate, C::Icmp))
                .step("echo from B", ping_b, pass(C::Icmp))
                .event(EVENT_SOURCE_INSERT, 2),
        );
    }
    rows.extend([
        row("v6 SYN: one bucket per /64, a different /64 has its own", syn)
            .repeat(2, "SYN from A", v6(A6).syn(), pass(C::TcpSyn))
            .step("SYN from elsewhere in A's /64", v6(A6_SAME_64).syn(), pass(C::TcpSyn))
            .step("4th SYN from A's /64 (other address)", v6(A6_SAME_64).syn(), drops(R::DropSynRate, C::TcpSyn))
            .step("5th SYN from A's /64", v6(A6).syn(), drops(R::DropSynRate, C::TcpSyn))
            .repeat(3, "SYN from the next /64", v6(B6).syn(), pass(C::TcpSyn))
            .event(EVENT_SOURCE_INSERT, 2),
        row("v6 UDP: one bucket per /64", udp)
            .step("UDP from A", v6(A6).dns(), pass(C::Udp))
            .repeat(2, "UDP from A's /64", v6(A6_SAME_64).dns(), pass(C::Udp))
            .step("UDP from A over the /64's rate", v6(A6).dns(), drops(R::DropUdpRate, C::Udp))
            .step("UDP from the next /64", v6(B6).dns(), pass(C::Udp))
            .event(EVENT_SOURCE_INSERT, 2),
        row("v6 ICMPv6: one bucket per /64", icmp)
            .repeat(3, "echo from A's /64", v6(A6_SAME_64).ping6(), pass(C::Icmp))
            .step("echo from A over the /64's rate", v6(A6).ping6(), drops(R::DropIcmpRate, C::Icmp))
            .step("echo from the next /64", v6(B6).ping6(), pass(C::Icmp))
            .event(EVENT_SOURCE_INSERT, 2),
        row("burst 1: only the first packet passes", on(|c| c.syn = ONE))
            .step("SYN", v4(A4).syn(), pass(C::TcpSyn))
            .step("SYN again", v4(A4).syn(), drops(R::DropSynRate, C::TcpSyn))
            .event(EVENT_SOURCE_INSERT, 1),
        row("each class has its own bucket per source", on(|c| {
            c.syn = ONE;
            c.udp = ONE;
            c.icmp = ONE;
        }))
            .step("SYN", v4(A4).syn(), pass(C::TcpSyn))
            .step("UDP", v4(A4).dns(), pass(C::Udp))
            .step("echo", v4(A4).ping4(), pass(C::Icmp))
            .step("SYN again", v4(A4).syn(), drops(R::DropSynRate, C::TcpSyn))
            .step("UDP again", v4(A4).dns(), drops(R::DropUdpRate, C::Udp))
            .step("echo again", v4(A4).ping4(), drops(R::DropIcmpRate, C::Icmp))
            .event(EVENT_SOURCE_INSERT, 3),
        row("the destination does not matter: one bucket per source", syn)
            .step("SYN to :443", v4(A4).syn(), pass(C::TcpSyn))
            .step("SYN to :22", v4(A4).tcp(40001, 22).tcp_flags(tcp_flags::SYN), pass(C::TcpSyn))
            .step("SYN to another address", Packet::new().ipv4(A4, "203.0.113.99").syn(), pass(C::TcpSyn))
            .step("SYN to :80", v4(A4).tcp(40002, 80).tcp_flags(tcp_flags::SYN), drops(R::DropSynRate, C::TcpSyn))
            .event(EVENT_SOURCE_INSERT, 1),
        row("VLAN-tagged and untagged frames from one source share its bucket", syn)
            .step("802.1Q SYN", tagged4(A4).syn(), pass(C::TcpSyn))
            .step("QinQ SYN", Packet::new().vlan_8021ad(1).vlan_8021q(2).ipv4(A4, DST4).syn(), pass(C::TcpSyn))
            .step("untagged SYN", v4(A4).syn(), pass(C::TcpSyn))
            .step("802.1Q SYN over the rate", tagged4(A4).syn(), drops(R::DropSynRate, C::TcpSyn))
            .event(EVENT_SOURCE_INSERT, 1),
        row("the SYN limit leaves ACKs and SYN+ACKs alone", on(|c| c.syn = ONE))
            .repeat(5, "ACK", v4(A4).ack(), pass(C::Tcp))
            .repeat(3, "SYN+ACK", v4(A4).tcp(443, 40000).tcp_flags(tcp_flags::SYN | tcp_flags::ACK), pass(C::Tcp))
            .step("SYN", v4(A4).syn(), pass(C::TcpSyn))
            .step("SYN again", v4(A4).syn(), drops(R::DropSynRate, C::TcpSyn))
            .event(EVENT_SOURCE_INSERT, 1),
        row("limit 0 is off: nothing drops, no source is tracked", on(|c| {
            c.syn = OFF;
            c.udp = OFF;
            c.icmp = OFF;
        }))
            .repeat(10, "SYN", v4(A4).syn(), pass(C::TcpSyn))
            .repeat(10, "UDP", v6(A6).dns(), pass(C::Udp))
            .repeat(10, "echo", v4(A4).ping4(), pass(C::Icmp)),
        row("only the UDP limit set: SYN and ICMP are not limited", on(|c| c.udp = ONE))
            .repeat(5, "SYN", v4(A4).syn(), pass(C::TcpSyn))
            .repeat(5, "echo", v4(A4).ping4(), pass(C::Icmp))
            .step("UDP", v4(A4).dns(), pass(C::Udp))
            .step("UDP again", v4(A4).dns(), drops(R::DropUdpRate, C::Udp))
            .event(EVENT_SOURCE_INSERT, 1),
        row("FLAG_RATE_LIMIT off: limits are configured but not applied", Config {
            syn: ONE,
            udp: ONE,
            icmp: ONE,
            ..config(0)
        })
            .repeat(5, "SYN", v4(A4).syn(), pass(C::TcpSyn))
            .repeat(5, "UDP", v4(A4).dns(), pass(C::Udp))
            .repeat(5, "echo", v6(A6).ping6(), pass(C::Icmp)),
        row("v4 and v6 sources never share a bucket", on(|c| c.udp = ONE))
            .step("UDP from 192.0.2.1", v4(A4).dns(), pass(C::Udp))
            .step("UDP from 192.0.2.1:: (same first bytes, v6)", v6("c000:201::").dns(), pass(C::Udp))
            .step("UDP from 192.0.2.1 again", v4(A4).dns(), drops(R::DropUdpRate, C::Udp))
            .event(EVENT_SOURCE_INSERT, 2),
        row("many sources: each new one is counted once", on(|c| c.udp = ONE))
            .step("A", v4(A4).dns(), pass(C::Udp))
            .step("B", v4(B4).dns(), pass(C::Udp))
            .step("C", v4(C4).dns(), pass(C::Udp))
            .step("D", v4(D4).dns(), pass(C::Udp))
            .step("A again", v4(A4).dns(), drops(R::DropUdpRate, C::Udp))
            .step("E", v6(A6).dns(), pass(C::Udp))
            .step("F", v6(B6).dns(), pass(C::Udp))
            .step("F again", v6(B6).dns(), drops(R::DropUdpRate, C::Udp))
            .event(EVENT_SOURCE_INSERT, 6),
    ]);
    rows
}

#[rustfmt::skip]
fn amplification_rows() -> Vec<Row> {
    let on = config(FLAG_AMP_DROP);
    let mut rows: Vec<Row> = DEFAULT_AMP_PORTS
        .iter()
        .map(|&p| {
            row(format!("amplification source port {p}"), on)
                .amp_sources()
                .port(SERVICE_PORT, PORT_UDP_SERVICE)
                .step(format!("v4 from :{p} to a random port"), v4(A4).udp_from(p, RANDOM_PORT), drops(R::DropAmplification, C::Udp))
                .step(format!("v6 from :{p} to a random port"), v6(A6).udp_from(p, RANDOM_PORT), drops(R::DropAmplification, C::Udp))
                .step(format!("v4 from :{p} to the service port"), v4(A4).udp_from(p, SERVICE_PORT), pass(C::Udp))
                .step(format!("v6 from :{p} to the service port"), v6(A6).udp_from(p, SERVICE_PORT), pass(C::Udp))
                .step(format!("802.1Q v4 from :{p} to a random port"), tagged4(B4).udp_from(p, RANDOM_PORT), drops(R::DropAmplification, C::Udp))
                .step(format!("v4 from :{} (not an amplification port)", p + 1000), v4(A4).udp_from(p + 1000, RANDOM_PORT), pass(C::Udp))
        })
        .collect();
    rows.extend([
        row("non-amplification source ports pass", on)
            .amp_sources()
            .port(SERVICE_PORT, PORT_UDP_SERVICE)
            .step("from :40001", v4(A4).udp_from(40001, RANDOM_PORT), pass(C::Udp))
            .step("from :54 (next to DNS)", v4(A4).udp_from(54, RANDOM_PORT), pass(C::Udp))
            .step("from :0", v6(A6).udp_from(0, RANDOM_PORT), pass(C::Udp))
            .step("from :65535", v6(A6).udp_from(65535, RANDOM_PORT), pass(C::Udp)),
        row("TCP from an amplification port is not UDP amplification", on)
            .amp_sources()
            .step("TCP ACK from :53", v4(A4).tcp(53, RANDOM_PORT).tcp_flags(tcp_flags::ACK), pass(C::Tcp))
            .step("TCP SYN from :123", v4(A4).tcp(123, RANDOM_PORT).tcp_flags(tcp_flags::SYN), pass(C::TcpSyn)),
        row("FLAG_AMP_DROP off: amplification ports pass", config(0))
            .amp_sources()
            .step("v4 from :53", v4(A4).udp_from(53, RANDOM_PORT), pass(C::Udp))
            .step("v6 from :11211", v6(A6).udp_from(11211, RANDOM_PORT), pass(C::Udp)),
        row("FLAG_AMP_DROP on but no port flagged: nothing drops", on)
            .step("v4 from :53", v4(A4).udp_from(53, RANDOM_PORT), pass(C::Udp))
            .step("v4 from :1900", v4(A4).udp_from(1900, RANDOM_PORT), pass(C::Udp)),
        row("a port flagged only as amplification source, no service ports", on)
            .port(123, PORT_UDP_AMP_SOURCE)
            .step("from :123 to :123", v4(A4).udp_from(123, 123), drops(R::DropAmplification, C::Udp))
            .step("from :53 (not flagged here)", v4(A4).udp_from(53, RANDOM_PORT), pass(C::Udp)),
        row("first fragment from an amplification port is classified by its UDP header", on)
            .amp_sources()
            .step("v4 first fragment from :389", v4(A4).ipv4_fragment(0, true).udp_from(389, RANDOM_PORT), drops(R::DropAmplification, C::Udp))
            .step("v6 first fragment from :389", v6(A6).ipv6_fragment(0, true).udp_from(389, RANDOM_PORT), drops(R::DropAmplification, C::Udp)),
        row("amplification drops come before the per-source limit and do not book it", Config {
            udp: ONE,
            ..config(FLAG_AMP_DROP | FLAG_RATE_LIMIT)
        })
            .amp_sources()
            .repeat(3, "from :123", v4(A4).udp_from(123, RANDOM_PORT), drops(R::DropAmplification, C::Udp))
            .step("ordinary UDP", v4(A4).dns(), pass(C::Udp))
            .step("ordinary UDP over the rate", v4(A4).dns(), drops(R::DropUdpRate, C::Udp))
            .step("from :123 still amplification", v4(A4).udp_from(123, RANDOM_PORT), drops(R::DropAmplification, C::Udp))
            .event(EVENT_SOURCE_INSERT, 1),
    ]);
    for p in [19, 53, 111, 123, 137, 161, 389, 1900, 3702, 5353, 11211] {
        assert!(
            DEFAULT_AMP_PORTS.contains(&p),
            "DEFAULT_AMP_PORTS lacks {p}, required by the issue"
        );
    }
    rows
}

#[rustfmt::skip]
fn port_cap_rows() -> Vec<Row> {
    let cap = Config {
        udp_port: Gcra::per_second(1, 4),
        ..config(FLAG_PORT_CAP)
    };
    let to = |src: &str, port: u16| {
        if src.contains(':') {
            v6(src).udp_from(50000, port)
        } else {
            v4(src).udp_from(50000, port)
        }
    };
    vec![
        row("many sources to one port: burst of 4 passes, then the cap drops", cap)
            .step("A → :9999", to(A4, 9999), pass(C::Udp))
            .step("B → :9999", to(B4, 9999), pass(C::Udp))
            .step("v6 C → :9999", to(A6, 9999), pass(C::Udp))
            .step("v6 D → :9999", to(C6, 9999), pass(C::Udp))
            .step("E → :9999 over the cap", to(E4, 9999), drops(R::DropUdpPortCap, C::Udp))
            .step("v6 F → :9999 over the cap", to(B6, 9999), drops(R::DropUdpPortCap, C::Udp))
            .step("A → :9999 over the cap", to(A4, 9999), drops(R::DropUdpPortCap, C::Udp))
            .repeat(4, "E → :10000 (another port)", to(E4, 10000), pass(C::Udp))
            .step("F → :10000 over its cap", to(F4, 10000), drops(R::DropUdpPortCap, C::Udp)),
        row("one source alone also hits the port cap", cap)
            .repeat(4, "A → :9999", to(A4, 9999), pass(C::Udp))
            .step("A → :9999 over the cap", to(A4, 9999), drops(R::DropUdpPortCap, C::Udp)),
        row("the cap is per UDP destination port: TCP and ICMP are not capped", Config {
            udp_port: ONE,
            ..config(FLAG_PORT_CAP)
        })
            .repeat(5, "SYN → :9999", v4(A4).tcp(50000, 9999).tcp_flags(tcp_flags::SYN), pass(C::TcpSyn))
            .repeat(3, "echo", v4(A4).ping4(), pass(C::Icmp))
            .step("UDP → :9999", to(A4, 9999), pass(C::Udp))
            .step("UDP → :9999 over the cap", to(B4, 9999), drops(R::DropUdpPortCap, C::Udp)),
        row("cap 0 is off", Config {
            udp_port: OFF,
            ..config(FLAG_PORT_CAP)
        })
            .repeat(10, "A → :9999", to(A4, 9999), pass(C::Udp)),
        row("FLAG_PORT_CAP off: the cap is configured but not applied", Config {
            udp_port: ONE,
            ..config(0)
        })
            .repeat(5, "A → :9999", to(A4, 9999), pass(C::Udp)),
        row("per-source limit first: a source over its rate does not use the port's budget", Config {
            udp: ONE,
            udp_port: Gcra::per_second(1, 2),
            ..config(FLAG_PORT_CAP | FLAG_RATE_LIMIT)
        })
            .step("A → :9999", to(A4, 9999), pass(C::Udp))
            .repeat(3, "A → :9999 over its own rate", to(A4, 9999), drops(R::DropUdpRate, C::Udp))
            .step("B → :9999", to(B4, 9999), pass(C::Udp))
            .step("C → :9999 over the cap", to(C4, 9999), drops(R::DropUdpPortCap, C::Udp))
            .event(EVENT_SOURCE_INSERT, 3),
    ]
}

#[rustfmt::skip]
fn icmp_rows() -> Vec<Row> {
    let limits = Config {
        icmp: Gcra::per_second(1, 2),
        pmtu: SLOW,
        ..config(FLAG_RATE_LIMIT)
    };
    vec![
        row("v4: echo limited; fragmentation-needed passes under its own budget, then drops", limits)
            .repeat(2, "echo", v4(A4).ping4(), pass(C::Icmp))
            .step("echo over the rate", v4(A4).ping4(), drops(R::DropIcmpRate, C::Icmp))
            .repeat(3, "frag-needed (3/4) from the same source", v4(A4).frag_needed(), pass(C::Icmp))
            .step("frag-needed over the PMTU budget", v4(A4).frag_needed(), drops(R::DropPmtuRate, C::Icmp))
            .step("echo from another source", v4(B4).ping4(), pass(C::Icmp))
            .event(EVENT_SOURCE_INSERT, 2),
        row("v6: echo limited; packet-too-big passes under its own budget, then drops", limits)
            .repeat(2, "echo", v6(A6).ping6(), pass(C::Icmp))
            .step("echo over the rate", v6(A6).ping6(), drops(R::DropIcmpRate, C::Icmp))
            .repeat(3, "packet too big (2)", v6(A6).too_big(), pass(C::Icmp))
            .step("packet too big over the PMTU budget", v6(A6).too_big(), drops(R::DropPmtuRate, C::Icmp))
            .event(EVENT_SOURCE_INSERT, 1),
        row("the PMTU budget is one aggregate for every source, v4 and v6", limits)
            .step("frag-needed from A", v4(A4).frag_needed(), pass(C::Icmp))
            .step("too-big from A6", v6(A6).too_big(), pass(C::Icmp))
            .step("frag-needed from B", v4(B4).frag_needed(), pass(C::Icmp))
            .step("too-big from B6 over the budget", v6(B6).too_big(), drops(R::DropPmtuRate, C::Icmp))
            .step("frag-needed from C over the budget", v4(C4).frag_needed(), drops(R::DropPmtuRate, C::Icmp))
            .step("echo from C is still within its own limit", v4(C4).ping4(), pass(C::Icmp))
            .event(EVENT_SOURCE_INSERT, 1),
        row("PMTU messages do not use the sender's ICMP budget", limits)
            .repeat(3, "frag-needed", v4(A4).frag_needed(), pass(C::Icmp))
            .repeat(2, "echo", v4(A4).ping4(), pass(C::Icmp))
            .step("echo over the rate", v4(A4).ping4(), drops(R::DropIcmpRate, C::Icmp))
            .event(EVENT_SOURCE_INSERT, 1),
        row("other ICMP errors are under the per-source ICMP limit", Config {
            icmp: ONE,
            pmtu: SLOW,
            ..config(FLAG_RATE_LIMIT)
        })
            .step("v4 port unreachable (3/3)", v4(A4).icmp(3, 3).payload(&[0x45; 28]), pass(C::Icmp))
            .step("v4 host unreachable (3/1) over the rate", v4(A4).icmp(3, 1).payload(&[0x45; 28]), drops(R::DropIcmpRate, C::Icmp))
            .step("v4 type 4 code 4 is not frag-needed", v4(A4).icmp(4, 4).payload(&[0x45; 28]), drops(R::DropIcmpRate, C::Icmp))
            .step("v6 destination unreachable (1)", v6(A6).icmpv6(1, 4).payload(&[0x60; 48]), pass(C::Icmp))
            .step("v6 time exceeded (3) over the rate", v6(A6).icmpv6(3, 0).payload(&[0x60; 48]), drops(R::DropIcmpRate, C::Icmp))
            .step("v6 type 2 with code 1 is still packet-too-big", v6(A6).icmpv6(2, 1).payload(&[0x60; 48]), pass(C::Icmp))
            .event(EVENT_SOURCE_INSERT, 2),
        row("PMTU budget 0 is off: path-MTU signals always pass", Config {
            icmp: ONE,
            pmtu: OFF,
            ..config(FLAG_RATE_LIMIT)
        })
            .step("echo", v4(A4).ping4(), pass(C::Icmp))
            .step("echo over the rate", v4(A4).ping4(), drops(R::DropIcmpRate, C::Icmp))
            .repeat(10, "frag-needed", v4(A4).frag_needed(), pass(C::Icmp))
            .repeat(10, "too-big", v6(A6).too_big(), pass(C::Icmp))
            .event(EVENT_SOURCE_INSERT, 1),
    ]
}

#[rustfmt::skip]
fn fragment_rows() -> Vec<Row> {
    let policy = |p: u32| Config {
        frag_policy: p,
        ..config(0)
    };
    let limited = Config {
        frag: Gcra::per_second(1, 2),
        ..policy(FRAG_RATE_LIMIT)
    };
    let v4_last = || {
        v4(A4)
            .ipv4_fragment(370, false)
            .ip_proto(proto::UDP)
            .payload(&[0x55; 3])
    };
    let v6_last = || {
        v6(A6)
            .ipv6_fragment(370, false)
            .ip_proto(proto::TCP)
            .payload(&[0x55; 3])
    };
    vec![
        row("FRAG_PASS: non-first fragments pass", policy(FRAG_PASS))
            .repeat(5, "v4 non-first fragment", v4(A4).later_fragment(), pass(C::Fragment))
            .repeat(5, "v6 non-first fragment", v6(A6).later_fragment(), pass(C::Fragment))
            .step("v4 last fragment", v4_last(), pass(C::Fragment))
            .step("v6 last fragment", v6_last(), pass(C::Fragment)),
        row("FRAG_DROP: non-first fragments drop", policy(FRAG_DROP))
            .step("v4 non-first fragment", v4(A4).later_fragment(), drops(R::DropFragment, C::Fragment))
            .step("v4 last fragment (no MF)", v4_last(), drops(R::DropFragment, C::Fragment))
            .step("802.1Q v4 non-first fragment", tagged4(A4).later_fragment(), drops(R::DropFragment, C::Fragment))
            .step("v6 non-first fragment", v6(A6).later_fragment(), drops(R::DropFragment, C::Fragment))
            .step("v6 last fragment (no M)", v6_last(), drops(R::DropFragment, C::Fragment))
            .step("v6 non-first fragment after a hop-by-hop header", v6(A6).hop_by_hop().later_fragment(), drops(R::DropFragment, C::Fragment)),
        row("FRAG_DROP: first fragments are classified by L4 and pass", policy(FRAG_DROP))
            .step("v4 first fragment (MF) + UDP", v4(A4).ipv4_fragment(0, true).dns(), pass(C::Udp))
            .step("v4 first fragment (MF) + SYN", v4(A4).ipv4_fragment(0, true).syn(), pass(C::TcpSyn))
            .step("v4 first fragment (MF) + ICMP", v4(A4).ipv4_fragment(0, true).ping4(), pass(C::Icmp))
            .step("v6 first fragment (M) + UDP", v6(A6).ipv6_fragment(0, true).dns(), pass(C::Udp))
            .step("v6 atomic fragment (offset 0, no M) + ACK", v6(A6).ipv6_fragment(0, false).ack(), pass(C::Tcp))
            .step("v4 DF, not a fragment", v4(A4).dont_fragment().dns(), pass(C::Udp)),
        row("FRAG_RATE_LIMIT: burst of 2 per source, then drop; another source unaffected", limited)
            .repeat(2, "v4 non-first fragment from A", v4(A4).later_fragment(), pass(C::Fragment))
            .repeat(2, "v4 non-first fragment from A over its rate", v4(A4).later_fragment(), drops(R::DropFragRate, C::Fragment))
            .step("v4 non-first fragment from B", v4(B4).later_fragment(), pass(C::Fragment))
            .step("v6 non-first fragment from A6", v6(A6).later_fragment(), pass(C::Fragment))
            .step("v6 non-first fragment from A6's /64", v6(A6_SAME_64).later_fragment(), pass(C::Fragment))
            .step("v6 non-first fragment from A6's /64 over its rate", v6(A6).later_fragment(), drops(R::DropFragRate, C::Fragment))
            .step("v6 non-first fragment from the next /64", v6(B6).later_fragment(), pass(C::Fragment))
            .event(EVENT_SOURCE_INSERT, 4),
        row("FRAG_RATE_LIMIT: first fragments do not use the fragment budget", limited)
            .repeat(5, "v4 first fragment + UDP", v4(A4).ipv4_fragment(0, true).dns(), pass(C::Udp))
            .repeat(5, "v6 first fragment + UDP", v6(A6).ipv6_fragment(0, true).dns(), pass(C::Udp))
            .repeat(2, "v4 non-first fragment", v4(A4).later_fragment(), pass(C::Fragment))
            .step("v4 non-first fragment over the rate", v4(A4).later_fragment(), drops(R::DropFragRate, C::Fragment))
            .event(EVENT_SOURCE_INSERT, 1),
        row("FRAG_RATE_LIMIT with limit 0 is off", Config {
            frag: OFF,
            ..policy(FRAG_RATE_LIMIT)
        })
            .repeat(10, "v4 non-first fragment", v4(A4).later_fragment(), pass(C::Fragment)),
        row("fragments and UDP have separate buckets", Config {
            frag: ONE,
            udp: ONE,
            ..Config { flags: FLAG_RATE_LIMIT, ..policy(FRAG_RATE_LIMIT) }
        })
            .step("UDP", v4(A4).dns(), pass(C::Udp))
            .step("non-first fragment", v4(A4).later_fragment(), pass(C::Fragment))
            .step("UDP again", v4(A4).dns(), drops(R::DropUdpRate, C::Udp))
            .step("non-first fragment again", v4(A4).later_fragment(), drops(R::DropFragRate, C::Fragment))
            .step("first fragment + UDP is UDP", v4(A4).ipv4_fragment(0, true).dns(), drops(R::DropUdpRate, C::Udp))
            .event(EVENT_SOURCE_INSERT, 2),
        row("FLAG_RATE_LIMIT alone does not limit fragments (FRAG_PASS)", Config {
            frag: ONE,
            udp: ONE,
            ..config(FLAG_RATE_LIMIT)
        })
            .repeat(5, "non-first fragment", v4(A4).later_fragment(), pass(C::Fragment)),
    ]
}

#[rustfmt::skip]
fn precedence_rows() -> Vec<Row> {
    use List::{Allow, Block};
    let everything = Config {
        syn: ONE,
        udp: ONE,
        icmp: ONE,
        frag: ONE,
        pmtu: ONE,
        udp_port: ONE,
        frag_policy: FRAG_DROP,
        ..config(FLAG_RATE_LIMIT | FLAG_SYN_COOKIES | FLAG_AMP_DROP | FLAG_PORT_CAP)
    };
    let all_on = |name: &str| {
        row(name, everything)
            .amp_sources()
            .port(443, PORT_TCP_SYN_COOKIES)
    };
    vec![
        all_on("blocked v4 source: blocklist wins over every defence")
            .block("192.0.2.0/24")
            .step("SYN to a cookie port", v4(A4).syn(), drops(R::DropBlocklist, C::TcpSyn))
            .step("ACK to a cookie port", v4(A4).ack(), drops(R::DropBlocklist, C::Tcp))
            .step("UDP from an amplification port", v4(A4).udp_from(53, RANDOM_PORT), drops(R::DropBlocklist, C::Udp))
            .step("UDP", v4(A4).dns(), drops(R::DropBlocklist, C::Udp))
            .step("echo", v4(A4).ping4(), drops(R::DropBlocklist, C::Icmp))
            .step("frag-needed", v4(A4).frag_needed(), drops(R::DropBlocklist, C::Icmp))
            .step("non-first fragment", v4(A4).later_fragment(), drops(R::DropBlocklist, C::Fragment))
            .hit(Block, "192.0.2.0/24", 7),
        all_on("blocked v6 source: blocklist wins over every defence")
            .block("2001:db8:a::/48")
            .step("SYN to a cookie port", v6(A6).syn(), drops(R::DropBlocklist, C::TcpSyn))
            .step("UDP from an amplification port", v6(B6).udp_from(123, RANDOM_PORT), drops(R::DropBlocklist, C::Udp))
            .step("too-big", v6(A6).too_big(), drops(R::DropBlocklist, C::Icmp))
            .step("non-first fragment", v6(A6).later_fragment(), drops(R::DropBlocklist, C::Fragment))
            .hit(Block, "2001:db8:a::/48", 4),
        all_on("blocked sources never enter the rate-limit table")
            .block("192.0.2.1")
            .repeat(5, "UDP", v4(A4).dns(), drops(R::DropBlocklist, C::Udp))
            .step("UDP from an unblocked neighbour", v4(B4).dns(), pass(C::Udp))
            .hit(Block, "192.0.2.1", 5)
            .event(EVENT_SOURCE_INSERT, 1),
        all_on("allowlisted v4 source passes before every defence and is not tracked")
            .allow("192.0.2.0/24")
            .repeat(3, "SYN to a cookie port (no SYN-ACK)", v4(A4).syn(), counted(R::PassAllowlist, C::TcpSyn))
            .repeat(3, "ACK to a cookie port", v4(A4).ack(), counted(R::PassAllowlist, C::Tcp))
            .repeat(3, "UDP from an amplification port", v4(A4).udp_from(53, RANDOM_PORT), counted(R::PassAllowlist, C::Udp))
            .repeat(3, "UDP", v4(A4).dns(), counted(R::PassAllowlist, C::Udp))
            .repeat(3, "echo", v4(A4).ping4(), counted(R::PassAllowlist, C::Icmp))
            .repeat(3, "frag-needed", v4(A4).frag_needed(), counted(R::PassAllowlist, C::Icmp))
            .repeat(3, "non-first fragment", v4(A4).later_fragment(), counted(R::PassAllowlist, C::Fragment))
            .hit(Allow, "192.0.2.0/24", 21),
        all_on("allowlisted v6 source passes before every defence")
            .allow("2001:db8:a:1::/64")
            .repeat(3, "SYN", v6(A6).syn(), counted(R::PassAllowlist, C::TcpSyn))
            .repeat(3, "UDP", v6(A6_SAME_64).dns(), counted(R::PassAllowlist, C::Udp))
            .repeat(3, "non-first fragment", v6(A6).later_fragment(), counted(R::PassAllowlist, C::Fragment))
            .step("UDP from the next /64 is limited", v6(B6).dns(), pass(C::Udp))
            .step("UDP from the next /64 over its rate", v6(B6).dns(), drops(R::DropUdpRate, C::Udp))
            .hit(Allow, "2001:db8:a:1::/64", 9)
            .event(EVENT_SOURCE_INSERT, 1),
        row("allowlisted traffic does not use a port's cap", Config {
            udp_port: ONE,
            ..config(FLAG_PORT_CAP)
        })
            .allow("192.0.2.1")
            .repeat(3, "allowlisted A → :9999", v4(A4).udp_from(5000, 9999), counted(R::PassAllowlist, C::Udp))
            .step("B → :9999", v4(B4).udp_from(5000, 9999), pass(C::Udp))
            .step("C → :9999 over the cap", v4(C4).udp_from(5000, 9999), drops(R::DropUdpPortCap, C::Udp))
            .hit(Allow, "192.0.2.1", 3),
        all_on("allow beats block on the same source, even over every limit")
            .block("192.0.2.0/24")
            .allow("192.0.2.1")
            .repeat(3, "UDP from the allowed /32", v4(A4).dns(), counted(R::PassAllowlist, C::Udp))
            .step("UDP from the blocked /24", v4(B4).dns(), drops(R::DropBlocklist, C::Udp))
            .hit(Allow, "192.0.2.1", 3)
            .hit(Block, "192.0.2.0/24", 1),
    ]
}

/// Every defence's table, in monitor mode. Rows whose steps all pass are
/// left out: monitor mode changes nothing for them.
fn monitor_rows() -> Vec<Row> {
    [
        rate_limit_rows(),
        amplification_rows(),
        port_cap_rows(),
        icmp_rows(),
        fragment_rows(),
        precedence_rows(),
    ]
    .into_iter()
    .flatten()
    .filter(|r| r.steps.iter().any(|s| s.verdict != PASS))
    .map(Row::monitored)
    .collect()
}

// --------------------------------------------------------------- runner

fn event_name(event: u32) -> &'static str {
    match event {
        EVENT_SOURCE_INSERT => "source_insert",
        EVENT_SAMPLE => "sample",
        EVENT_SAMPLE_CAPPED => "sample_capped",
        EVENT_SAMPLE_LOST => "sample_lost",
        EVENT_SYN_NO_LISTENER => "syn_no_listener",
        _ => "(unused)",
    }
}

fn show_events(events: &Events) -> String {
    let moved: Vec<String> = (0..EVENT_ENTRIES)
        .filter(|e| events.get(*e) != 0)
        .map(|e| format!("{}: {}", event_name(e), events.get(e)))
        .collect();
    format!("{{{}}}", moved.join(", "))
}

fn load() -> Result<Harness> {
    Harness::load().context("loading the XDP object")
}

fn apply(h: &mut Harness, row: &Row) -> Result<()> {
    h.set_config(row.config)?;
    let mut ports: Vec<(u16, u32)> = Vec::new();
    for &(port, flags) in &row.ports {
        match ports.iter_mut().find(|(p, _)| *p == port) {
            Some((_, f)) => *f |= flags,
            None => ports.push((port, flags)),
        }
    }
    for (port, flags) in ports {
        h.set_port_flags(port, flags)?;
    }
    for (list, prefix) in &row.rules {
        match list {
            List::Allow => h.allow(*prefix)?,
            List::Block => h.block(*prefix)?,
        }
    }
    ensure!(h.config()? == row.config, "CONFIG did not read back");
    Ok(())
}

/// Runs one frame and checks the verdict, the output frame and that
/// exactly `cell` moved by this one packet. Returns the output frame.
fn run_step(h: &mut Harness, frame: &[u8], verdict: Verdict, cell: (R, C)) -> Result<Vec<u8>> {
    let ((got, out), moved) = h.delta(|h| h.run(frame))?;
    ensure!(got == verdict, "verdict {got:?}, expected {verdict:?}");
    if verdict == TX {
        check_syn_ack(frame, &out).context("the XDP_TX frame is not the expected SYN-ACK")?;
    } else {
        ensure!(
            out == frame,
            "the program changed the frame ({} bytes in, {} out)",
            frame.len(),
            out.len()
        );
    }
    let expected = vec![(
        cell,
        Counter {
            packets: 1,
            bytes: frame.len() as u64,
        },
    )];
    ensure!(
        moved.nonzero().collect::<Vec<_>>() == expected,
        "counters moved {moved}, expected only {}/{} by 1 packet of {} bytes",
        cell.0.name(),
        cell.1.name(),
        frame.len()
    );
    Ok(out)
}

/// Runs a row on a freshly loaded program and checks everything it promises.
fn check_row(row: &Row) -> Result<()> {
    let mut h = load()?;
    apply(&mut h, row)?;
    let events_before = h.events()?;
    for (i, step) in row.steps.iter().enumerate() {
        let frame = step.packet.build();
        run_step(&mut h, &frame, step.verdict, step.cell)
            .with_context(|| format!("step {} ({})", i + 1, step.what))?;
    }
    let moved = h.events()?.delta(&events_before);
    let mut expected = Events::default();
    for &(event, count) in &row.events {
        expected.0[event as usize] += count;
    }
    ensure!(
        moved == expected,
        "events moved {}, expected {}",
        show_events(&moved),
        show_events(&expected)
    );
    for (list, prefix) in &row.rules {
        let hits = h.rule_hits(*list, *prefix)?;
        let want = row
            .hits
            .iter()
            .find(|(l, p, _)| l == list && p == prefix)
            .map_or(0, |(_, _, n)| *n);
        ensure!(
            hits.packets == want,
            "{list:?} rule {prefix} counted {} packets, expected {want}",
            hits.packets
        );
    }
    Ok(())
}

/// Runs every row and reports all failing rows by name, not just the first.
fn run_rows(test: &str, rows: Vec<Row>) {
    if !bpf_ready(test) {
        return;
    }
    let failures = failures(&rows);
    assert!(
        failures.is_empty(),
        "{test}: {} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    eprintln!("{test}: {} rows passed", rows.len());
}

fn failures(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter_map(|row| {
            check_row(row)
                .err()
                .map(|e| format!("  [{}] {e:#}", row.name))
        })
        .collect()
}

#[test]
fn per_source_rate_limits() {
    run_rows("per_source_rate_limits", rate_limit_rows());
}

#[test]
fn amplification_drop() {
    run_rows("amplification_drop", amplification_rows());
}

#[test]
fn udp_port_cap() {
    run_rows("udp_port_cap", port_cap_rows());
}

#[test]
fn icmp_limit_keeps_pmtu_discovery() {
    run_rows("icmp_limit_keeps_pmtu_discovery", icmp_rows());
}

#[test]
fn fragment_policy() {
    run_rows("fragment_policy", fragment_rows());
}

#[test]
fn blocklist_and_allowlist_precedence() {
    run_rows("blocklist_and_allowlist_precedence", precedence_rows());
}

#[test]
fn monitor_mode_every_defence() {
    run_rows("monitor_mode_every_defence", monitor_rows());
}

/// The per-source table's keys: the class, the family, IPv4 in the first
/// four bytes, IPv6 cut to its /64; the value is a time in the future.
#[test]
fn source_table_keys() -> Result<()> {
    if !bpf_ready("source_table_keys") {
        return Ok(());
    }
    let mut h = load()?;
    h.set_config(Config {
        syn: SLOW,
        udp: SLOW,
        ..config(FLAG_RATE_LIMIT)
    })?;
    for p in [
        v4(A4).syn(),
        v4(A4).dns(),
        v6(A6).syn(),
        v6(A6_SAME_64).syn(),
        v6(B6).dns(),
    ] {
        h.run(&p.build())?;
    }
    let key = |addr: &[u8], class: C, family: u8| {
        let mut k = SourceKey {
            class: class as u8,
            family,
            ..SourceKey::default()
        };
        k.addr[..addr.len()].copy_from_slice(addr);
        k
    };
    let a6: Ipv6Addr = A6.parse()?;
    let b6: Ipv6Addr = B6.parse()?;
    let mut expected = vec![
        key(&[192, 0, 2, 1], C::TcpSyn, 4),
        key(&[192, 0, 2, 1], C::Udp, 4),
        key(&a6.octets()[..8], C::TcpSyn, 6),
        key(&b6.octets()[..8], C::Udp, 6),
    ];
    let mut got = h.sources()?;
    let order = |k: &SourceKey| (k.family, k.class, k.addr);
    expected.sort_by_key(order);
    got.sort_by_key(order);
    ensure!(
        got == expected,
        "SOURCES holds {got:?}, expected {expected:?}"
    );
    let events = h.events()?;
    ensure!(
        events.get(EVENT_SOURCE_INSERT) == 4,
        "{}",
        show_events(&events)
    );
    // Two SYNs from A6's /64 booked two intervals from about now.
    let a6_syn = key(&a6.octets()[..8], C::TcpSyn, 6);
    let tat = h.source_state(&a6_syn)?.context("no state for A6's /64")?;
    // bpf_ktime_get_ns is CLOCK_MONOTONIC.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid timespec to fill.
    ensure!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0);
    let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    ensure!(
        tat > now + SLOW.interval_ns && tat <= now + 2 * SLOW.interval_ns,
        "A6's theoretical arrival time {tat} is not 1..2 intervals after now ({now})"
    );
    Ok(())
}

/// The config is read per packet: turning a defence on and off needs no reload.
#[test]
fn defences_switch_at_run_time() -> Result<()> {
    if !bpf_ready("defences_switch_at_run_time") {
        return Ok(());
    }
    let mut h = load()?;
    h.set_port_flags(123, PORT_UDP_AMP_SOURCE)?;
    let frame = v4(A4).udp_from(123, RANDOM_PORT).build();
    let cell = (R::DropAmplification, C::Udp);
    for (i, (flags, verdict, cell)) in [
        (0, PASS, (R::Pass, C::Udp)),
        (FLAG_AMP_DROP, DROP, cell),
        (FLAG_AMP_DROP | FLAG_MONITOR, PASS, cell),
        (FLAG_AMP_DROP, DROP, cell),
        (0, PASS, (R::Pass, C::Udp)),
    ]
    .into_iter()
    .enumerate()
    {
        h.set_config(config(flags))?;
        run_step(&mut h, &frame, verdict, cell)
            .with_context(|| format!("switch {} (flags {flags:#x})", i + 1))?;
    }
    Ok(())
}

// ------------------------------------------------------------- sampling

/// Runs `f` on a thread pinned to one CPU: sampling's per-second cap and
/// window are per CPU, so an exact count needs every run on the same one.
fn on_one_cpu<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    use nix::{
        sched::{sched_getaffinity, sched_setaffinity, CpuSet},
        unistd::Pid,
    };
    std::thread::spawn(move || {
        let allowed = sched_getaffinity(Pid::from_raw(0))?;
        let cpu = (0..CpuSet::count())
            .find(|c| allowed.is_set(*c).unwrap_or(false))
            .ok_or_else(|| anyhow!("no CPU in this thread's affinity mask"))?;
        let mut one = CpuSet::new();
        one.set(cpu)?;
        sched_setaffinity(Pid::from_raw(0), &one)?;
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn sample_of(p: &Packet, reason: R, class: C) -> Sample {
    let frame = p.build();
    let (l3, _) = l3_offset(&frame);
    let ip = &frame[l3..];
    let mut s = Sample {
        len: frame.len() as u16,
        reason: reason as u8,
        class: class as u8,
        ..Sample::default()
    };
    let l4 = if ip[0] >> 4 == 4 {
        s.family = 4;
        s.src[..4].copy_from_slice(&ip[12..16]);
        s.dst[..4].copy_from_slice(&ip[16..20]);
        s.proto = ip[9];
        s.ttl = ip[8];
        let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
        (!fragment).then(|| &ip[usize::from(ip[0] & 0x0f) * 4..])
    } else {
        s.family = 6;
        s.src.copy_from_slice(&ip[8..24]);
        s.dst.copy_from_slice(&ip[24..40]);
        s.ttl = ip[7];
        // The samples below use at most one fragment header.
        if ip[6] == proto::FRAGMENT {
            s.proto = ip[40];
            let offset = u16::from_be_bytes([ip[42], ip[43]]) & 0xfff8;
            (offset == 0).then(|| &ip[48..])
        } else {
            s.proto = ip[6];
            Some(&ip[40..])
        }
    };
    if let Some(l4) = l4 {
        if s.proto == proto::TCP || s.proto == proto::UDP {
            s.src_port = u16::from_be_bytes([l4[0], l4[1]]);
            s.dst_port = u16::from_be_bytes([l4[2], l4[3]]);
        }
        if s.proto == proto::TCP {
            s.tcp_flags = l4[13];
        }
    }
    s
}

/// 1 in 1 with a cap of 5 per second: 10 packets give exactly the first 5
/// samples, the other 5 are counted as capped.
#[test]
fn sampling_with_a_hard_cap() -> Result<()> {
    if !bpf_ready("sampling_with_a_hard_cap") {
        return Ok(());
    }
    on_one_cpu(|| {
        let mut h = load()?;
        h.set_config(Config {
            sample_every: 1,
            sample_max_per_sec: 5,
            frag_policy: FRAG_DROP,
            ..config(FLAG_SAMPLE | FLAG_AMP_DROP)
        })?;
        h.set_port_flags(1900, PORT_UDP_AMP_SOURCE)?;
        h.block("198.51.100.0/24")?;
        let runs = [
            (
                v4(A4)
                    .ttl(33)
                    .tcp(40000, 443)
                    .tcp_flags(tcp_flags::SYN | tcp_flags::FIN),
                pass(C::TcpSyn),
            ),
            (
                v6(A6).hop_limit(7).udp_from(1900, 5353),
                drops(R::DropAmplification, C::Udp),
            ),
            (
                v4("198.51.100.9").ttl(250).ping4(),
                drops(R::DropBlocklist, C::Icmp),
            ),
            (v6(B6).later_fragment(), drops(R::DropFragment, C::Fragment)),
            (tagged4(B4).ack(), pass(C::Tcp)),
        ];
        let events_before = h.events()?;
        let mut expected = Vec::new();
        for (i, (p, (verdict, reason, class))) in runs.into_iter().enumerate() {
            run_step(&mut h, &p.build(), verdict, (reason, class))
                .with_context(|| format!("sampled packet {}", i + 1))?;
            expected.push(sample_of(&p, reason, class));
        }
        for i in 0..5 {
            run_step(&mut h, &v4(C4).dns().build(), PASS, (R::Pass, C::Udp))
                .with_context(|| format!("capped packet {}", i + 1))?;
        }
        let samples = h.read_samples()?;
        ensure!(
            samples.len() == 5,
            "{} samples in the ring buffer, expected 5: {samples:#?}",
            samples.len()
        );
        for (i, (got, want)) in samples.iter().zip(&expected).enumerate() {
            ensure!(
                got == want,
                "sample {}: got {got:#?}\nexpected {want:#?}",
                i + 1
            );
        }
        let moved = h.events()?.delta(&events_before);
        let mut want = Events::default();
        want.0[EVENT_SAMPLE as usize] = 5;
        want.0[EVENT_SAMPLE_CAPPED as usize] = 5;
        ensure!(
            moved == want,
            "events moved {}, expected {}",
            show_events(&moved),
            show_events(&want)
        );
        // The cap is per second: after the window has passed, sampling resumes.
        std::thread::sleep(Duration::from_millis(1100));
        h.run(&v4(D4).dns().build())?;
        let after = h.read_samples()?;
        ensure!(
            after == vec![sample_of(&v4(D4).dns(), R::Pass, C::Udp)],
            "after one second: {after:#?}"
        );
        Ok(())
    })
}

/// Sampling off (flag off, or 1 in 0) writes nothing and counts nothing.
#[test]
fn sampling_off() -> Result<()> {
    if !bpf_ready("sampling_off") {
        return Ok(());
    }
    for (name, cfg) in [
        (
            "FLAG_SAMPLE off",
            Config {
                sample_every: 1,
                sample_max_per_sec: 100,
                ..config(0)
            },
        ),
        (
            "sample_every 0",
            Config {
                sample_every: 0,
                sample_max_per_sec: 100,
                ..config(FLAG_SAMPLE)
            },
        ),
    ] {
        let mut h = load()?;
        h.set_config(cfg)?;
        for _ in 0..10 {
            h.run(&v4(A4).dns().build())?;
        }
        let samples = h.read_samples()?;
        ensure!(samples.is_empty(), "{name}: {} samples", samples.len());
        let events = h.events()?;
        ensure!(
            events == Events::default(),
            "{name}: events {}",
            show_events(&events)
        );
    }
    Ok(())
}

/// 1 in 4 over 2000 packets: about 500 samples (binomial; the bounds are
/// more than 7 standard deviations wide).
#[test]
fn sampling_one_in_n() -> Result<()> {
    if !bpf_ready("sampling_one_in_n") {
        return Ok(());
    }
    on_one_cpu(|| {
        let mut h = load()?;
        h.set_config(Config {
            sample_every: 4,
            sample_max_per_sec: 100_000,
            ..config(FLAG_SAMPLE)
        })?;
        let frame = v6(A6).dns().build();
        for _ in 0..2000 {
            h.run(&frame)?;
        }
        let n = h.read_samples()?.len() as u64;
        ensure!((360..=640).contains(&n), "{n} samples of 2000 at 1 in 4");
        let events = h.events()?;
        ensure!(
            events.get(EVENT_SAMPLE) == n && events.get(EVENT_SAMPLE_CAPPED) == 0,
            "events {} for {n} samples",
            show_events(&events)
        );
        Ok(())
    })
}

// ------------------------------------------------------------ SYN cookies

/// Ports in the private namespace.
const P4: u16 = 8080; // IPv4 listener (0.0.0.0)
const P6: u16 = 8081; // IPv6-only listener ([::], IPV6_V6ONLY)
const PDUAL: u16 = 8082; // dual-stack listener ([::] accepting IPv4 too)
const PNONE: u16 = 8083; // protected, nothing listens
const POPEN: u16 = 8084; // unprotected, dual-stack listener
const PFRESH: u16 = 8085; // protected listener no SYN is ever answered for

const PROTECTED: [u16; 5] = [P4, P6, PDUAL, PNONE, PFRESH];
const SYSCTL_SYNCOOKIES: &str = "/proc/sys/net/ipv4/tcp_syncookies";

fn read_syncookies() -> Result<String> {
    Ok(std::fs::read_to_string(SYSCTL_SYNCOOKIES)?
        .trim()
        .to_string())
}

/// Written from a thread in a private namespace, this is that namespace's
/// sysctl (net sysctls are resolved through the writing task's namespace).
fn set_syncookies(value: u8) -> Result<()> {
    std::fs::write(SYSCTL_SYNCOOKIES, value.to_string())
        .with_context(|| format!("writing {SYSCTL_SYNCOOKIES}"))?;
    ensure!(
        read_syncookies()? == value.to_string(),
        "sysctl did not read back"
    );
    Ok(())
}

fn loopback_up() -> Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket and ifreq for SIOCGIFFLAGS / SIOCSIFFLAGS.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            bail!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            bail!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `f` on a thread in a private network namespace (loopback up,
/// `tcp_syncookies = 2`), checking that the host's sysctl stays as it was.
fn in_private_netns<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let host_before = read_syncookies()?;
    let result = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare(CLONE_NEWNET)")?;
        loopback_up()?;
        set_syncookies(2)?;
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let host_after = read_syncookies()?;
    ensure!(
        host_after == host_before,
        "the host's tcp_syncookies changed from {host_before} to {host_after}"
    );
    result
}

fn listen_v6_only(port: u16) -> Result<TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrIn6,
    };
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    bind(fd.as_raw_fd(), &addr)?;
    listen(&fd, Backlog::new(128)?)?;
    Ok(TcpListener::from(fd))
}

/// The listeners the cookie tests need, open for as long as this lives.
fn listeners() -> Result<Vec<TcpListener>> {
    let bind = |a: &str| TcpListener::bind(a).with_context(|| format!("listen on {a}"));
    Ok(vec![
        bind(&format!("0.0.0.0:{P4}"))?,
        listen_v6_only(P6)?,
        bind(&format!("[::]:{PDUAL}"))?,
        bind(&format!("[::]:{POPEN}"))?,
        bind(&format!("[::]:{PFRESH}"))?,
    ])
}

fn cookie_config(extra: u32) -> Config {
    config(FLAG_SYN_COOKIES | extra)
}

fn cookie_row(name: impl Into<String>, cfg: Config) -> Row {
    PROTECTED
        .iter()
        .fold(row(name, cfg), |r, p| r.port(*p, PORT_TCP_SYN_COOKIES))
}

fn cookie_harness(cfg: Config) -> Result<Harness> {
    let mut h = load()?;
    apply(&mut h, &cookie_row("", cfg))?;
    Ok(h)
}

// Independent checksum arithmetic (not the packet builder's): sum all
// 16-bit big-endian words in a u64, fold at the end.
fn ones_complement_sum(parts: &[&[u8]]) -> u16 {
    let bytes = parts.concat();
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let hi = u64::from(bytes[i]) << 8;
        let lo = bytes.get(i + 1).map_or(0, |b| u64::from(*b));
        sum += hi | lo;
        i += 2;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn checksum(parts: &[&[u8]]) -> u16 {
    !ones_complement_sum(parts)
}

/// TCP pseudo-header for either family.
fn pseudo_header(src: &[u8], dst: &[u8], tcp_len: usize) -> Vec<u8> {
    let mut p = [src, dst].concat();
    if src.len() == 4 {
        p.extend_from_slice(&[0, proto::TCP]);
        p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    } else {
        p.extend_from_slice(&(tcp_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto::TCP]);
    }
    p
}

/// Offset of the IP header behind any VLAN tags, and the EtherType.
fn l3_offset(frame: &[u8]) -> (usize, u16) {
    let mut off = 12;
    loop {
        let t = u16::from_be_bytes([frame[off], frame[off + 1]]);
        if t == ETH_P_8021Q || t == ETH_P_8021AD {
            off += 4;
        } else {
            return (off + 2, t);
        }
    }
}

/// The MSS the kernel encodes in a cookie: the largest entry of its table
/// not above the client's MSS (net/ipv4/syncookies.c, net/ipv6/syncookies.c),
/// the first entry if none is; without an MSS option the client's MSS is the
/// default clamp (536 for IPv4, 1220 for IPv6).
fn cookie_mss(v6: bool, client_mss: Option<u16>) -> u16 {
    let table: &[u16] = if v6 {
        &[1280 - 60, 1480 - 60, 1500 - 60, 9000 - 60]
    } else {
        &[536, 1300, 1440, 1460]
    };
    let mss = client_mss.unwrap_or(table[0]);
    *table.iter().rev().find(|m| **m <= mss).unwrap_or(&table[0])
}

/// The MSS option value in a TCP options area, if any.
fn mss_option(options: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let len = usize::from(*options.get(i + 1)?);
                if kind == 2 && len == 4 {
                    return Some(u16::from_be_bytes([options[i + 2], options[i + 3]]));
                }
                i += len.max(2);
            }
        }
    }
    None
}

/// The addresses, ports, sequence number and options of a SYN frame.
struct SynFacts {
    l3: usize,
    v6: bool,
    src: Vec<u8>,
    dst: Vec<u8>,
    tcp: usize,
    sport: [u8; 2],
    dport: [u8; 2],
    seq: u32,
    options: Vec<u8>,
}

fn syn_facts(frame: &[u8]) -> SynFacts {
    let (l3, ether_type) = l3_offset(frame);
    let v6 = ether_type == ETH_P_IPV6;
    assert!(v6 || ether_type == ETH_P_IP);
    let (src, dst, tcp) = if v6 {
        (
            frame[l3 + 8..l3 + 24].to_vec(),
            frame[l3 + 24..l3 + 40].to_vec(),
            l3 + 40,
        )
    } else {
        let ihl = usize::from(frame[l3] & 0x0f) * 4;
        (
            frame[l3 + 12..l3 + 16].to_vec(),
            frame[l3 + 16..l3 + 20].to_vec(),
            l3 + ihl,
        )
    };
    let doff = usize::from(frame[tcp + 12] >> 4) * 4;
    SynFacts {
        l3,
        v6,
        src,
        dst,
        tcp,
        sport: [frame[tcp], frame[tcp + 1]],
        dport: [frame[tcp + 2], frame[tcp + 3]],
        seq: u32::from_be_bytes(frame[tcp + 4..tcp + 8].try_into().unwrap()),
        options: frame[tcp + 20..tcp + doff].to_vec(),
    }
}

/// Checks that `out` is exactly the SYN-ACK for `syn` (whatever cookie the
/// kernel chose) and returns the cookie.
fn check_syn_ack(syn: &[u8], out: &[u8]) -> Result<u32> {
    let s = syn_facts(syn);
    let ip_len = if s.v6 { 40 } else { 20 };
    let with_options = !s.options.is_empty();
    let tcp_len = if with_options { 24 } else { 20 };
    let tcp = s.l3 + ip_len;
    ensure!(
        out.len() == tcp + tcp_len,
        "{} bytes, expected {} (headers only)",
        out.len(),
        tcp + tcp_len
    );
    let cookie = u32::from_be_bytes(out[tcp + 4..tcp + 8].try_into().unwrap());

    // The SYN-ACK, built here from the SYN.
    let mut expected = Vec::new();
    expected.extend_from_slice(&syn[6..12]);
    expected.extend_from_slice(&syn[0..6]);
    expected.extend_from_slice(&syn[12..s.l3]); // EtherType and VLAN tags as they were
    if s.v6 {
        expected.extend_from_slice(&[0x60, 0, 0, 0]);
        expected.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        expected.extend_from_slice(&[proto::TCP, 64]);
        expected.extend_from_slice(&s.dst);
        expected.extend_from_slice(&s.src);
    } else {
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto::TCP, 0, 0]); // id 0, DF, TTL 64
        ip.extend_from_slice(&s.dst);
        ip.extend_from_slice(&s.src);
        let sum = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        expected.extend_from_slice(&ip);
    }
    let mut th = Vec::new();
    th.extend_from_slice(&s.dport);
    th.extend_from_slice(&s.sport);
    th.extend_from_slice(&cookie.to_be_bytes());
    th.extend_from_slice(&s.seq.wrapping_add(1).to_be_bytes());
    th.push(((tcp_len / 4) as u8) << 4);
    th.push(tcp_flags::SYN | tcp_flags::ACK);
    th.extend_from_slice(&65535u16.to_be_bytes());
    th.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    if with_options {
        let mss = cookie_mss(s.v6, mss_option(&s.options));
        th.extend_from_slice(&[2, 4]);
        th.extend_from_slice(&mss.to_be_bytes());
    }
    let sum = checksum(&[&pseudo_header(&s.dst, &s.src, tcp_len), &th]);
    th[16..18].copy_from_slice(&sum.to_be_bytes());
    expected.extend_from_slice(&th);

    if out != expected {
        let at = out
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(out.len().min(expected.len()));
        bail!(
            "first difference at byte {at}\n   got {}\nexpect {}",
            hex(out),
            hex(&expected)
        );
    }
    // And the checksums as a receiver checks them: the sum over the header
    // (or pseudo-header and segment) including the checksum is all ones.
    if !s.v6 {
        ensure!(
            ones_complement_sum(&[&out[s.l3..s.l3 + 20]]) == 0xffff,
            "IPv4 header checksum does not verify"
        );
    }
    let (src, dst) = if s.v6 {
        (&out[s.l3 + 8..s.l3 + 24], &out[s.l3 + 24..s.l3 + 40])
    } else {
        (&out[s.l3 + 12..s.l3 + 16], &out[s.l3 + 16..s.l3 + 20])
    };
    ensure!(
        ones_complement_sum(&[&pseudo_header(src, dst, tcp_len), &out[tcp..]]) == 0xffff,
        "TCP checksum does not verify"
    );
    Ok(cookie)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The client's ACK completing the handshake a SYN (as `syn` built it) started.
fn ack_for(syn: &Packet, sport: u16, dport: u16, seq: u32, ack: u32) -> Packet {
    syn.clone()
        .tcp(sport, dport)
        .tcp_seq(seq)
        .tcp_ack_number(ack)
        .tcp_flags(tcp_flags::ACK)
}

/// A Linux-like SYN option block: MSS, SACK permitted, timestamps, window scale.
fn linux_options(mss: u16) -> Vec<u8> {
    let mut o = vec![2, 4];
    o.extend_from_slice(&mss.to_be_bytes());
    o.extend_from_slice(&[4, 2, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 3, 3, 7]);
    o
}

const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SERVER_MAC: [u8; 6] = [0x3c, 0xfd, 0xfe, 0xa1, 0xb2, 0xc3];
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

struct SynCase {
    name: &'static str,
    /// Everything below L4: Ethernet, VLAN tags, IP.
    base: Packet,
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
    pad_to: usize,
}

fn syn_case(name: &'static str, base: Packet, sport: u16, dport: u16) -> SynCase {
    SynCase {
        name,
        base,
        sport,
        dport,
        seq: 0x1234_5678,
        flags: tcp_flags::SYN,
        options: Vec::new(),
        payload: Vec::new(),
        pad_to: 0,
    }
}

impl SynCase {
    fn options(mut self, o: Vec<u8>) -> Self {
        self.options = o;
        self
    }

    fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    fn syn(&self) -> Packet {
        let mut p = self
            .base
            .clone()
            .tcp(self.sport, self.dport)
            .tcp_seq(self.seq)
            .tcp_flags(self.flags)
            .tcp_options(&self.options)
            .payload(&self.payload);
        if self.pad_to > 0 {
            p = p.pad_to(self.pad_to);
        }
        p
    }
}

#[rustfmt::skip]
fn syn_cases() -> Vec<SynCase> {
    let c4 = |src: &str| Packet::new().ipv4(src, "10.0.0.1");
    let c6 = |src: &str| Packet::new().ipv6(src, "fd00::1");
    vec![
        syn_case("v4 SYN without options", c4(A4), 41001, P4),
        syn_case("v4 SYN with Linux options (MSS 1460)", c4(A4), 41002, P4).options(linux_options(1460)),
        syn_case("v4 SYN with only MSS 1400", c4(A4), 41003, P4).options(vec![2, 4, 0x05, 0x78]),
        syn_case("v4 SYN with MSS 9000", c4(A4), 41004, P4).options(vec![2, 4, 0x23, 0x28]),
        syn_case("v4 SYN with options but no MSS", c4(A4), 41005, P4).options(vec![1, 1, 4, 2]),
        SynCase {
            payload: b"fast open data".to_vec(),
            ..syn_case("v4 SYN with options and data: trimmed to headers", c4(A4), 41006, P4)
                .options(linux_options(1460))
        },
        SynCase {
            pad_to: 60,
            ..syn_case("v4 SYN padded to 60 bytes: trimmed to headers", c4(A4), 41007, P4)
        },
        syn_case("v4 SYN, client seq 0xffffffff (ACK number wraps to 0)", c4(A4), 41008, P4).seq(u32::MAX),
        SynCase {
            flags: tcp_flags::SYN | ECE | CWR,
            ..syn_case("v4 SYN asking for ECN (SYN|ECE|CWR)", c4(A4), 41013, P4).options(linux_options(1460))
        },
        syn_case("v4 SYN with TTL 3, DF, id 7", c4(A4).ttl(3).dont_fragment().ip_id(7), 41009, P4),
        syn_case("v4 SYN from a real-looking MAC", c4(A4).src_mac(CLIENT_MAC).dst_mac(SERVER_MAC), 41014, P4),
        syn_case("v6 SYN from a real-looking MAC", c6(A6).src_mac(CLIENT_MAC).dst_mac(SERVER_MAC), 41109, P6),
        syn_case("802.1Q v4 SYN with options", Packet::new().vlan_8021q(100).ipv4(B4, "10.0.0.1"), 41010, P4)
            .options(linux_options(1460)),
        syn_case("QinQ v4 SYN", Packet::new().vlan_8021ad(10).vlan_8021q(20).ipv4(B4, "10.0.0.1"), 41011, P4),
        syn_case("v4 SYN to a dual-stack listener", c4(C4), 41012, PDUAL).options(linux_options(1460)),
        syn_case("v6 SYN without options", c6(A6), 41101, P6),
        syn_case("v6 SYN with Linux options (MSS 1440)", c6(A6), 41102, P6).options(linux_options(1440)),
        syn_case("v6 SYN with MSS 9000", c6(A6), 41103, P6).options(vec![2, 4, 0x23, 0x28]),
        syn_case("v6 SYN with options but no MSS", c6(A6), 41104, P6).options(vec![1, 1, 1, 1]),
        syn_case("v6 SYN with hop limit 1", c6(A6).hop_limit(1), 41105, P6).seq(0),
        syn_case("802.1Q v6 SYN with options", Packet::new().vlan_8021q(200).ipv6(B6, "fd00::1"), 41106, P6)
            .options(linux_options(1440)),
        syn_case("QinQ v6 SYN", Packet::new().vlan_8021ad(30).vlan_8021q(40).ipv6(B6, "fd00::1"), 41107, P6),
        syn_case("v6 SYN to a dual-stack listener", c6(C6), 41108, PDUAL),
    ]
}

/// One full handshake through the program: SYN → exact SYN-ACK (XDP_TX),
/// the client's ACK → pass_cookie_ack, and ACKs that must not validate.
fn cookie_handshake(h: &mut Harness, case: &SynCase) -> Result<()> {
    let syn = case.syn();
    let syn_frame = syn.build();
    let out = run_step(h, &syn_frame, TX, (R::TxSynCookie, C::TcpSyn)).context("SYN")?;
    let tcp = syn_facts(&syn_frame).tcp;
    let cookie = u32::from_be_bytes(out[tcp + 4..tcp + 8].try_into()?);
    let (seq, ack) = (case.seq.wrapping_add(1), cookie.wrapping_add(1));
    let (sport, dport) = (case.sport, case.dport);
    let good = ack_for(&case.base, sport, dport, seq, ack);
    // Not "ACK number off by one": the low 24 bits of a Linux cookie are a
    // hash plus the MSS index, and the kernel accepts any index inside its
    // table, so cookie + 1 validates whenever the index is not the last one.
    let bad = [
        (
            "ACK number with the cookie's counter byte off",
            ack_for(&case.base, sport, dport, seq, ack.wrapping_add(0x0100_0000)),
        ),
        (
            "ACK number with a hash bit flipped",
            ack_for(&case.base, sport, dport, seq, ack ^ 0x0080_0000),
        ),
        (
            "ACK number of a zero cookie",
            ack_for(&case.base, sport, dport, seq, 1),
        ),
        (
            "sequence number far off",
            ack_for(&case.base, sport, dport, seq.wrapping_add(0x10_0000), ack),
        ),
        (
            "another source port",
            ack_for(&case.base, sport + 500, dport, seq, ack),
        ),
    ];
    run_step(h, &good.build(), PASS, (R::PassCookieAck, C::Tcp)).context("the client's ACK")?;
    let with_data = good
        .clone()
        .tcp_flags(tcp_flags::ACK | tcp_flags::PSH)
        .payload(b"GET /");
    run_step(h, &with_data.build(), PASS, (R::PassCookieAck, C::Tcp))
        .context("the client's ACK with data")?;
    let with_timestamps = good
        .clone()
        .tcp_options(&[1, 1, 8, 10, 0, 0, 0x12, 0x35, 0, 0, 0, 0]);
    run_step(
        h,
        &with_timestamps.build(),
        PASS,
        (R::PassCookieAck, C::Tcp),
    )
    .context("the client's ACK with a timestamp option")?;
    for (what, packet) in bad {
        run_step(h, &packet.build(), DROP, (R::DropBadCookieAck, C::Tcp)).context(what)?;
    }
    Ok(())
}

#[test]
fn syn_cookies_answer_and_validate() -> Result<()> {
    if !bpf_ready("syn_cookies_answer_and_validate") {
        return Ok(());
    }
    in_private_netns(|| {
        let _listeners = listeners()?;
        let cases = syn_cases();
        let mut failures = Vec::new();
        for case in &cases {
            let mut h = cookie_harness(cookie_config(0))?;
            let before = h.events()?;
            let result = cookie_handshake(&mut h, case).and_then(|()| {
                let moved = h.events()?.delta(&before);
                ensure!(
                    moved == Events::default(),
                    "events moved {}",
                    show_events(&moved)
                );
                Ok(())
            });
            if let Err(e) = result {
                failures.push(format!("  [{}] {e:#}", case.name));
            }
        }
        ensure!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
        eprintln!(
            "syn_cookies_answer_and_validate: {} cases passed",
            cases.len()
        );
        Ok(())
    })
}

#[rustfmt::skip]
fn cookie_rows() -> Vec<Row> {
    let c4 = |src: &str| Packet::new().ipv4(src, "10.0.0.1");
    let c6 = |src: &str| Packet::new().ipv6(src, "fd00::1");
    let syn_to = |p: Packet, dport: u16| p.tcp(42000, dport).tcp_flags(tcp_flags::SYN);
    let tcp_to = |p: Packet, dport: u16, flags: u8| {
        p.tcp(42000, dport)
            .tcp_seq(1000)
            .tcp_ack_number(2000)
            .tcp_flags(flags)
    };
    let on = cookie_config(0);
    vec![
        cookie_row("SYN to an unprotected port with a listener passes", on)
            .step("v4 SYN", syn_to(c4(A4), POPEN), pass(C::TcpSyn))
            .step("v6 SYN", syn_to(c6(A6), POPEN), pass(C::TcpSyn)),
        cookie_row("SYN to a protected port without a listener passes to the stack", on)
            .step("v4 SYN", syn_to(c4(A4), PNONE), pass(C::TcpSyn))
            .step("v6 SYN", syn_to(c6(A6), PNONE), pass(C::TcpSyn))
            .step("v6 SYN to the IPv4-only listener's port", syn_to(c6(A6), P4), pass(C::TcpSyn))
            .step("v4 SYN to the IPv6-only listener's port", syn_to(c4(A4), P6), pass(C::TcpSyn))
            .event(EVENT_SYN_NO_LISTENER, 4),
        cookie_row("SYNs the program leaves to the stack: IPv4 options, IPv6 extension headers", on)
            .step("v4 SYN with IP options", syn_to(c4(A4).ipv4_options(&[1, 1, 1, 1]), P4), pass(C::TcpSyn))
            .step("v6 SYN after a hop-by-hop header", syn_to(c6(A6).hop_by_hop(), P6), pass(C::TcpSyn)),
        cookie_row("ACK to a protected port with no listener and no connection drops", on)
            .step("v4 ACK", tcp_to(c4(A4), PNONE, tcp_flags::ACK), drops(R::DropBadCookieAck, C::Tcp))
            .step("v6 ACK", tcp_to(c6(A6), PNONE, tcp_flags::ACK), drops(R::DropBadCookieAck, C::Tcp))
            .step("v4 FIN+ACK", tcp_to(c4(A4), PNONE, tcp_flags::FIN | tcp_flags::ACK), drops(R::DropBadCookieAck, C::Tcp)),
        cookie_row("ACK to a listener that never sent a cookie drops", on)
            .step("v4 ACK", tcp_to(c4(A4), PFRESH, tcp_flags::ACK), drops(R::DropBadCookieAck, C::Tcp))
            .step("v6 ACK", tcp_to(c6(A6), PFRESH, tcp_flags::ACK), drops(R::DropBadCookieAck, C::Tcp)),
        cookie_row("segments that are not plain ACKs are not judged", on)
            .step("RST", tcp_to(c4(A4), PNONE, tcp_flags::RST), pass(C::Tcp))
            .step("RST+ACK", tcp_to(c4(A4), PNONE, tcp_flags::RST | tcp_flags::ACK), pass(C::Tcp))
            .step("SYN+ACK", tcp_to(c6(A6), P6, tcp_flags::SYN | tcp_flags::ACK), pass(C::Tcp))
            .step("no flags", tcp_to(c4(A4), P4, 0), pass(C::Tcp)),
        cookie_row("SYN+FIN is refused by the kernel's cookie helper: left to the stack", on)
            .step("v4 SYN+FIN", tcp_to(c4(A4), P4, tcp_flags::SYN | tcp_flags::FIN).tcp_ack_number(0), pass(C::TcpSyn))
            .step("v6 SYN+RST", tcp_to(c6(A6), P6, tcp_flags::SYN | tcp_flags::RST).tcp_ack_number(0), pass(C::TcpSyn)),
        cookie_row("ACK to an unprotected port is not judged", on)
            .step("v4 ACK, no connection", tcp_to(c4(A4), 9, tcp_flags::ACK), pass(C::Tcp))
            .step("v6 ACK to a listener", tcp_to(c6(A6), POPEN, tcp_flags::ACK), pass(C::Tcp)),
        cookie_row("FLAG_SYN_COOKIES off: protected ports are not answered or judged", config(0))
            .step("v4 SYN", syn_to(c4(A4), P4), pass(C::TcpSyn))
            .step("v6 SYN", syn_to(c6(A6), P6), pass(C::TcpSyn))
            .step("v4 ACK", tcp_to(c4(A4), PNONE, tcp_flags::ACK), pass(C::Tcp)),
        cookie_row("per-source SYN limit comes before the cookie", Config {
            syn: ONE,
            ..cookie_config(FLAG_RATE_LIMIT)
        })
            .step("v4 SYN answered", syn_to(c4(A4), P4), answered())
            .step("v4 SYN over its rate", syn_to(c4(A4), P4), drops(R::DropSynRate, C::TcpSyn))
            .step("v6 SYN answered", syn_to(c6(A6), P6), answered())
            .step("v6 SYN over its rate", syn_to(c6(A6), P6), drops(R::DropSynRate, C::TcpSyn))
            .event(EVENT_SOURCE_INSERT, 2),
        cookie_row("monitor: SYN counted as answered, passed unchanged", cookie_config(FLAG_MONITOR))
            .step("v4 SYN", syn_to(c4(A4), P4), counted(R::TxSynCookie, C::TcpSyn))
            .step("v6 SYN with options", syn_to(c6(A6), P6).tcp_options(&linux_options(1440)), counted(R::TxSynCookie, C::TcpSyn))
            .step("802.1Q v4 SYN", syn_to(Packet::new().vlan_8021q(3).ipv4(A4, "10.0.0.1"), PDUAL), counted(R::TxSynCookie, C::TcpSyn)),
        cookie_row("monitor: bad ACKs counted as dropped, passed", cookie_config(FLAG_MONITOR))
            .step("v4 ACK, no listener", tcp_to(c4(A4), PNONE, tcp_flags::ACK), counted(R::DropBadCookieAck, C::Tcp))
            .step("v6 ACK, listener that sent no cookie", tcp_to(c6(A6), PFRESH, tcp_flags::ACK), counted(R::DropBadCookieAck, C::Tcp)),
        cookie_row("monitor: SYN over its rate counted, passed", Config {
            syn: ONE,
            ..cookie_config(FLAG_RATE_LIMIT | FLAG_MONITOR)
        })
            .step("SYN", syn_to(c4(A4), P4), counted(R::TxSynCookie, C::TcpSyn))
            .step("SYN over its rate", syn_to(c4(A4), P4), counted(R::DropSynRate, C::TcpSyn))
            .event(EVENT_SOURCE_INSERT, 1),
    ]
}

#[test]
fn syn_cookie_rows() -> Result<()> {
    if !bpf_ready("syn_cookie_rows") {
        return Ok(());
    }
    in_private_netns(|| {
        let _listeners = listeners()?;
        let rows = cookie_rows();
        let failures = failures(&rows);
        ensure!(
            failures.is_empty(),
            "{} of {} rows failed:\n{}",
            failures.len(),
            rows.len(),
            failures.join("\n")
        );
        eprintln!("syn_cookie_rows: {} rows passed", rows.len());
        Ok(())
    })
}

/// Segments of an established connection are the stack's: an ACK passes
/// unjudged, and a SYN on its 4-tuple is not answered with a cookie.
#[test]
fn syn_cookies_leave_established_connections_alone() -> Result<()> {
    if !bpf_ready("syn_cookies_leave_established_connections_alone") {
        return Ok(());
    }
    in_private_netns(|| {
        let _listeners = listeners()?;
        let mut rows = Vec::new();
        let mut conns = Vec::new();
        for (server, family) in [
            (SocketAddr::from(([127, 0, 0, 1], P4)), "v4"),
            (SocketAddr::from((Ipv6Addr::LOCALHOST, P6)), "v6"),
        ] {
            let client = TcpStream::connect_timeout(&server, Duration::from_secs(2))
                .with_context(|| format!("connecting to {server}"))?;
            let local = client.local_addr()?;
            conns.push(client);
            let base = Packet::new();
            let base = match (local.ip(), server.ip()) {
                (std::net::IpAddr::V4(l), std::net::IpAddr::V4(s)) => {
                    base.ipv4(&l.to_string(), &s.to_string())
                }
                (l, s) => base.ipv6(&l.to_string(), &s.to_string()),
            };
            let seg = |flags: u8| {
                base.clone()
                    .tcp(local.port(), server.port())
                    .tcp_seq(99)
                    .tcp_ack_number(7)
                    .tcp_flags(flags)
            };
            rows.push(
                cookie_row(
                    format!("{family} established connection on a protected port"),
                    cookie_config(0),
                )
                .step("ACK", seg(tcp_flags::ACK), pass(C::Tcp))
                .step(
                    "FIN+ACK",
                    seg(tcp_flags::FIN | tcp_flags::ACK),
                    pass(C::Tcp),
                )
                .step("SYN on its 4-tuple", seg(tcp_flags::SYN), pass(C::TcpSyn)),
            );
        }
        let failures = failures(&rows);
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    })
}

/// `bpf_tcp_gen_syncookie` only answers while `tcp_syncookies` is 2 (or the
/// listen queue is full): otherwise the SYN goes to the stack untouched.
#[test]
fn syn_cookies_need_the_sysctl() -> Result<()> {
    if !bpf_ready("syn_cookies_need_the_sysctl") {
        return Ok(());
    }
    in_private_netns(|| {
        let _listeners = listeners()?;
        let syn = Packet::new()
            .ipv4(A4, "10.0.0.1")
            .tcp(43000, P4)
            .tcp_flags(tcp_flags::SYN)
            .build();
        for (value, verdict, cell) in [
            (1, PASS, (R::Pass, C::TcpSyn)),
            (0, PASS, (R::Pass, C::TcpSyn)),
            (2, TX, (R::TxSynCookie, C::TcpSyn)),
        ] {
            set_syncookies(value)?;
            let mut h = cookie_harness(cookie_config(0))?;
            let before = h.events()?;
            run_step(&mut h, &syn, verdict, cell)
                .with_context(|| format!("tcp_syncookies = {value}"))?;
            let moved = h.events()?.delta(&before);
            ensure!(
                moved == Events::default(),
                "tcp_syncookies = {value}: events moved {}",
                show_events(&moved)
            );
        }
        Ok(())
    })
}

/// Monitor mode must count what enforcing mode would have done. For a SYN to
/// a protected port with no listener, enforcing mode passes it (pass, and
/// EVENT_SYN_NO_LISTENER); monitor mode counts tx_syn_cookie without looking
/// for a listener. Ignored: a known XDP bug (see the report in issue 3).
#[test]
fn monitor_counts_syn_cookies_as_enforcing_would() -> Result<()> {
    if !bpf_ready("monitor_counts_syn_cookies_as_enforcing_would") {
        return Ok(());
    }
    in_private_netns(|| {
        let _listeners = listeners()?;
        let c4 = Packet::new().ipv4(A4, "10.0.0.1");
        let rows = vec![
            cookie_row(
                "monitor: SYN to a protected port without a listener",
                cookie_config(FLAG_MONITOR),
            )
            .step(
                "v4 SYN",
                c4.clone().tcp(42000, PNONE).tcp_flags(tcp_flags::SYN),
                pass(C::TcpSyn),
            )
            .event(EVENT_SYN_NO_LISTENER, 1),
            cookie_row(
                "monitor: SYN with IPv4 options (enforcing leaves it to the stack)",
                cookie_config(FLAG_MONITOR),
            )
            .step(
                "v4 SYN",
                c4.ipv4_options(&[1, 1, 1, 1])
                    .tcp(42000, P4)
                    .tcp_flags(tcp_flags::SYN),
                pass(C::TcpSyn),
            ),
        ];
        let failures = failures(&rows);
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    })
}

/// A valid cookie ACK is valid whatever IPv4 options or IPv6 extension
/// headers it carries: the kernel's cookie check reads only the addresses,
/// ports and sequence numbers. Such a client's SYN is left to the stack
/// (which answers with its own cookie under `tcp_syncookies = 2`), so
/// dropping its ACK means it can never connect. The cookie here comes from
/// a plain SYN on the same 4-tuple and sequence number (options are not part
/// of a cookie). Ignored: a known XDP bug (see the report in issue 3).
#[test]
fn cookie_ack_with_ip_options_or_extension_headers() -> Result<()> {
    if !bpf_ready("cookie_ack_with_ip_options_or_extension_headers") {
        return Ok(());
    }
    in_private_netns(|| {
        let _listeners = listeners()?;
        let mut failures = Vec::new();
        for (name, plain, with_options, dport) in [
            (
                "v4 ACK with IPv4 options (NOPs)",
                Packet::new().ipv4(A4, "10.0.0.1"),
                Packet::new()
                    .ipv4(A4, "10.0.0.1")
                    .ipv4_options(&[1, 1, 1, 1]),
                P4,
            ),
            (
                "v6 ACK after a destination-options header",
                Packet::new().ipv6(A6, "fd00::1"),
                Packet::new().ipv6(A6, "fd00::1").dest_opts(),
                P6,
            ),
        ] {
            let mut h = cookie_harness(cookie_config(0))?;
            let case = syn_case(name, plain, 44000, dport);
            let syn = case.syn().build();
            let result = run_step(&mut h, &syn, TX, (R::TxSynCookie, C::TcpSyn))
                .context("plain SYN")
                .and_then(|out| {
                    let tcp = syn_facts(&syn).tcp;
                    let cookie = u32::from_be_bytes(out[tcp + 4..tcp + 8].try_into()?);
                    let seq = case.seq.wrapping_add(1);
                    let plain_ack = ack_for(&case.base, 44000, dport, seq, cookie.wrapping_add(1));
                    let ack = ack_for(&with_options, 44000, dport, seq, cookie.wrapping_add(1));
                    run_step(&mut h, &plain_ack.build(), PASS, (R::PassCookieAck, C::Tcp))
                        .context("the same ACK without options")?;
                    run_step(&mut h, &ack.build(), PASS, (R::PassCookieAck, C::Tcp))
                        .context("the ACK with options")?;
                    Ok(())
                });
            if let Err(e) = result {
                failures.push(format!("  [{name}] {e:#}"));
            }
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    })
}

/// This file's checksum arithmetic against known values: RFC 1071's
/// example, and a SYN whose TCP checksum (0x271a) and an IPv4 header whose
/// checksum (0xb861) were computed independently.
#[test]
fn own_checksum_matches_known_values() {
    let rfc1071 = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(ones_complement_sum(&[&rfc1071]), 0xddf2);
    assert_eq!(checksum(&[&rfc1071]), !0xddf2);
    let header = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(checksum(&[&header]), 0xb861);
    let syn = Packet::new()
        .ipv4("192.0.2.1", "198.51.100.2")
        .tcp(40000, 80)
        .tcp_flags(tcp_flags::SYN)
        .build();
    let mut segment = syn[34..].to_vec();
    segment[16..18].fill(0);
    let pseudo = pseudo_header(&[192, 0, 2, 1], &[198, 51, 100, 2], segment.len());
    assert_eq!(checksum(&[&pseudo, &segment]), 0x271a);
    // Odd lengths pad with a zero byte.
    assert_eq!(ones_complement_sum(&[&[0x12, 0x34, 0x56]]), 0x6834);
}
