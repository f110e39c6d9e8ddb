//! The XDP program's behaviour as a table: each row is a frame, the rules
//! and mode it meets, the verdict it must get and the one counter cell it
//! must move. Rows run through BPF_PROG_TEST_RUN. A row that sets rules or
//! monitor mode gets a freshly loaded program, so nothing leaks into the
//! next row; rows without setup share one (counters are compared as deltas).
//!
//! Every row checks: the verdict, that exactly its (reason, class) cell
//! moved (by `times` packets and `times × frame length` bytes), that the
//! frame came back unchanged, and the hit counter of every rule it set up
//! (the rules it names with `hit` moved by `times`, all others stayed 0).
//!
//! Frames shorter than 14 bytes cannot go through test-run (the kernel
//! rejects them with EINVAL); `test_run_rejects_frames_shorter_than_ethernet`
//! pins that down.

use anyhow::{ensure, Result};
use mitigator_common::{Class as C, Counter, Reason as R};
use mitigator_tests::{
    packet::{proto, tcp_flags, ExtHeader, Packet, ETH_HLEN, ETH_P_LLDP},
    testrun::{bpf_ready, Harness, List, Verdict},
};

const PASS: Verdict = Verdict::Pass;
const DROP: Verdict = Verdict::Drop;

const SRC4: &str = "192.0.2.10";
const DST4: &str = "203.0.113.1";
const SRC6: &str = "2001:db8:a::10";
const DST6: &str = "2001:db8:ffff::1";

// ---------------------------------------------------------------- rows

struct Row {
    name: String,
    packet: Packet,
    rules: Vec<(List, &'static str)>,
    monitor: bool,
    times: u64,
    verdict: Verdict,
    cell: (R, C),
    /// Rules whose hit counters must move by `times`; every other rule in
    /// `rules` must stay at zero.
    hits: Vec<(List, &'static str)>,
}

fn row(name: impl Into<String>, packet: Packet, verdict: Verdict, reason: R, class: C) -> Row {
    Row {
        name: name.into(),
        packet,
        rules: Vec::new(),
        monitor: false,
        times: 1,
        verdict,
        cell: (reason, class),
        hits: Vec::new(),
    }
}

impl Row {
    fn block(mut self, prefix: &'static str) -> Self {
        self.rules.push((List::Block, prefix));
        self
    }

    fn allow(mut self, prefix: &'static str) -> Self {
        self.rules.push((List::Allow, prefix));
        self
    }

    /// Expect this rule (already set up) to count the packet.
    fn hit(mut self, list: List, prefix: &'static str) -> Self {
        assert!(
            self.rules.contains(&(list, prefix)),
            "{}: hit on a rule it does not set up",
            self.name
        );
        self.hits.push((list, prefix));
        self
    }

    fn monitor(mut self) -> Self {
        self.monitor = true;
        self
    }

    fn times(mut self, times: u64) -> Self {
        self.times = times;
        self
    }
}

// ------------------------------------------------------------- frames

fn v4(src: &str) -> Packet {
    Packet::new().ipv4(src, DST4)
}

fn v6(src: &str) -> Packet {
    Packet::new().ipv6(src, DST6)
}

/// Short names for the L4 layers the table uses over and over.
trait L4Shortcuts {
    fn syn(self) -> Self;
    fn ack(self) -> Self;
    fn dns(self) -> Self;
    fn ping4(self) -> Self;
    fn ping6(self) -> Self;
}

impl L4Shortcuts for Packet {
    fn syn(self) -> Self {
        self.tcp(40000, 443).tcp_flags(tcp_flags::SYN)
    }

    fn ack(self) -> Self {
        self.tcp(40000, 443)
            .tcp_flags(tcp_flags::ACK | tcp_flags::PSH)
            .tcp_ack_number(7)
            .payload(b"GET / HTTP/1.1\r\n")
    }

    fn dns(self) -> Self {
        self.udp(53000, 53).payload(&[0xab; 29])
    }

    fn ping4(self) -> Self {
        self.icmp(8, 0).payload(b"ping")
    }

    fn ping6(self) -> Self {
        self.icmpv6(128, 0).payload(b"ping")
    }
}

/// A TCP SYN header, as bytes a frame's trailer can carry.
fn syn_header_bytes() -> Vec<u8> {
    let frame = v4(SRC4).syn().build();
    frame[ETH_HLEN + 20..].to_vec()
}

// --------------------------------------------------------------- tables

fn clean_rows() -> Vec<Row> {
    vec![
        row("v4 TCP SYN", v4(SRC4).syn(), PASS, R::Pass, C::TcpSyn),
        row(
            "v4 TCP ACK with data",
            v4(SRC4).ack(),
            PASS,
            R::Pass,
            C::Tcp,
        ),
        row(
            "v4 TCP SYN+ACK is not a SYN",
            v4(SRC4)
                .tcp(443, 40000)
                .tcp_flags(tcp_flags::SYN | tcp_flags::ACK),
            PASS,
            R::Pass,
            C::Tcp,
        ),
        row("v4 UDP", v4(SRC4).dns(), PASS, R::Pass, C::Udp),
        row("v4 ICMP echo", v4(SRC4).ping4(), PASS, R::Pass, C::Icmp),
        row(
            "v4 GRE is unclassified",
            v4(SRC4).ip_proto(proto::GRE).payload(&[0; 8]),
            PASS,
            R::Pass,
            C::Other,
        ),
        row(
            "v4 TCP SYN with 40 bytes of options (data offset 15)",
            v4(SRC4).syn().tcp_options(&[1; 40]),
            PASS,
            R::Pass,
            C::TcpSyn,
        ),
        row(
            "v4 UDP with IP options (IHL 6)",
            v4(SRC4).ipv4_options(&[0x94, 4, 0, 0]).dns(),
            PASS,
            R::Pass,
            C::Udp,
        ),
        row(
            "v4 TCP SYN with IHL 15",
            v4(SRC4).ipv4_options(&[1; 40]).syn(),
            PASS,
            R::Pass,
            C::TcpSyn,
        ),
        row(
            "v4 UDP in a frame padded to 60 bytes",
            v4(SRC4).udp(1, 2).payload(b"x").pad_to(60),
            PASS,
            R::Pass,
            C::Udp,
        ),
        row("v6 TCP SYN", v6(SRC6).syn(), PASS, R::Pass, C::TcpSyn),
        row(
            "v6 TCP ACK with data",
            v6(SRC6).ack(),
            PASS,
            R::Pass,
            C::Tcp,
        ),
        row("v6 UDP", v6(SRC6).dns(), PASS, R::Pass, C::Udp),
        row("v6 ICMPv6 echo", v6(SRC6).ping6(), PASS, R::Pass, C::Icmp),
        row(
            "v6 no next header is unclassified",
            v6(SRC6),
            PASS,
            R::Pass,
            C::Other,
        ),
    ]
}

fn prefix_rows() -> Vec<Row> {
    use List::{Allow, Block};
    vec![
        row(
            "v4 source in a blocked /24",
            v4("198.51.100.7").dns(),
            DROP,
            R::DropBlocklist,
            C::Udp,
        )
        .block("198.51.100.0/24")
        .hit(Block, "198.51.100.0/24"),
        row(
            "v4 source next to a blocked /24",
            v4("198.51.101.7").dns(),
            PASS,
            R::Pass,
            C::Udp,
        )
        .block("198.51.100.0/24"),
        row(
            "v4 destination in a blocked prefix does not matter",
            v4(SRC4).dns(),
            PASS,
            R::Pass,
            C::Udp,
        )
        .block("203.0.113.0/24"),
        row(
            "v4 allowed /24 inside a blocked /16",
            v4("10.1.2.3").syn(),
            PASS,
            R::PassAllowlist,
            C::TcpSyn,
        )
        .block("10.1.0.0/16")
        .allow("10.1.2.0/24")
        .hit(Allow, "10.1.2.0/24"),
        row(
            "v4 blocked /16 outside its allowed /24",
            v4("10.1.3.3").syn(),
            DROP,
            R::DropBlocklist,
            C::TcpSyn,
        )
        .block("10.1.0.0/16")
        .allow("10.1.2.0/24")
        .hit(Block, "10.1.0.0/16"),
        row(
            "v4 /32 inside a blocked /8 hits the /32",
            v4("10.9.9.9").ack(),
            DROP,
            R::DropBlocklist,
            C::Tcp,
        )
        .block("10.0.0.0/8")
        .block("10.9.9.9/32")
        .hit(Block, "10.9.9.9/32"),
        row(
            "v4 next to a blocked /32 hits the /8",
            v4("10.9.9.8").ack(),
            DROP,
            R::DropBlocklist,
            C::Tcp,
        )
        .block("10.0.0.0/8")
        .block("10.9.9.9/32")
        .hit(Block, "10.0.0.0/8"),
        row(
            "v4 blocked /32 (bare address)",
            v4("192.0.2.1").ping4(),
            DROP,
            R::DropBlocklist,
            C::Icmp,
        )
        .block("192.0.2.1")
        .hit(Block, "192.0.2.1"),
        row(
            "v4 neighbour of a blocked /32",
            v4("192.0.2.2").ping4(),
            PASS,
            R::Pass,
            C::Icmp,
        )
        .block("192.0.2.1"),
        row(
            "v4 0.0.0.0/0 blocks every v4 source",
            v4("1.2.3.4").dns(),
            DROP,
            R::DropBlocklist,
            C::Udp,
        )
        .block("0.0.0.0/0")
        .hit(Block, "0.0.0.0/0"),
        row(
            "v4 0.0.0.0/0 does not block v6",
            v6(SRC6).dns(),
            PASS,
            R::Pass,
            C::Udp,
        )
        .block("0.0.0.0/0"),
        row(
            "v6 ::/0 blocks every v6 source",
            v6("2001:db8:7::7").syn(),
            DROP,
            R::DropBlocklist,
            C::TcpSyn,
        )
        .block("::/0")
        .hit(Block, "::/0"),
        row(
            "v6 ::/0 does not block v4",
            v4(SRC4).syn(),
            PASS,
            R::Pass,
            C::TcpSyn,
        )
        .block("::/0"),
        row(
            "v6 blocked /128",
            v6("2001:db8:bad::1").dns(),
            DROP,
            R::DropBlocklist,
            C::Udp,
        )
        .block("2001:db8:bad::1/128")
        .hit(Block, "2001:db8:bad::1/128"),
        row(
            "v6 neighbour of a blocked /128",
            v6("2001:db8:bad::2").dns(),
            PASS,
            R::Pass,
            C::Udp,
        )
        .block("2001:db8:bad::1/128"),
        row(
            "v6 allowed /48 inside a blocked /32",
            v6("2001:db8:1::5").ack(),
            PASS,
            R::PassAllowlist,
            C::Tcp,
        )
        .block("2001:db8::/32")
        .allow("2001:db8:1::/48")
        .hit(Allow, "2001:db8:1::/48"),
        row(
            "v6 blocked /32 outside its allowed /48",
            v6("2001:db8:2::5").ack(),
            DROP,
            R::DropBlocklist,
            C::Tcp,
        )
        .block("2001:db8::/32")
        .allow("2001:db8:1::/48")
        .hit(Block, "2001:db8::/32"),
        row(
            "v6 blocked /48 inside a blocked /32 hits the /48",
            v6("2001:db8:dead::9").ping6(),
            DROP,
            R::DropBlocklist,
            C::Icmp,
        )
        .block("2001:db8::/32")
        .block("2001:db8:dead::/48")
        .hit(Block, "2001:db8:dead::/48"),
        row(
            "v4 allow beats block on the same prefix",
            v4("198.51.100.9").dns(),
            PASS,
            R::PassAllowlist,
            C::Udp,
        )
        .block("198.51.100.0/24")
        .allow("198.51.100.0/24")
        .hit(Allow, "198.51.100.0/24"),
        row(
            "v6 allow beats block on the same prefix",
            v6("2001:db8:5::1").dns(),
            PASS,
            R::PassAllowlist,
            C::Udp,
        )
        .block("2001:db8:5::/48")
        .allow("2001:db8:5::/48")
        .hit(Allow, "2001:db8:5::/48"),
        row(
            "v4 allow 0.0.0.0/0 beats a more specific block",
            v4("198.51.100.9").dns(),
            PASS,
            R::PassAllowlist,
            C::Udp,
        )
        .block("198.51.100.0/24")
        .allow("0.0.0.0/0")
        .hit(Allow, "0.0.0.0/0"),
        row(
            "v4 rule hit counter counts every packet",
            v4("198.51.100.7").syn(),
            DROP,
            R::DropBlocklist,
            C::TcpSyn,
        )
        .block("198.51.100.0/24")
        .hit(Block, "198.51.100.0/24")
        .times(5),
        row(
            "v6 rule hit counter counts every packet",
            v6("2001:db8:bad::1").syn(),
            DROP,
            R::DropBlocklist,
            C::TcpSyn,
        )
        .block("2001:db8:bad::/64")
        .hit(Block, "2001:db8:bad::/64")
        .times(3),
    ]
}

fn vlan_rows() -> Vec<Row> {
    use List::Block;
    let blocked4 = "198.51.100.66";
    let blocked6 = "2001:db8:bad::66";
    vec![
        row(
            "802.1Q clean v4 UDP",
            Packet::new().vlan_8021q(10).ipv4(SRC4, DST4).dns(),
            PASS,
            R::Pass,
            C::Udp,
        )
        .block("198.51.100.0/24"),
        row(
            "802.1Q blocked v4 UDP",
            Packet::new().vlan_8021q(10).ipv4(blocked4, DST4).dns(),
            DROP,
            R::DropBlocklist,
            C::Udp,
        )
        .block("198.51.100.0/24")
        .hit(Block, "198.51.100.0/24"),
        row(
            "802.1ad clean v4 SYN",
            Packet::new().vlan_8021ad(20).ipv4(SRC4, DST4).syn(),
            PASS,
            R::Pass,
            C::TcpSyn,
        )
        .block("198.51.100.0/24"),
        row(
            "802.1ad blocked v4 SYN",
            Packet::new().vlan_8021ad(20).ipv4(blocked4, DST4).syn(),
            DROP,
            R::DropBlocklist,
            C::TcpSyn,
        )
        .block("198.51.100.0/24")
        .hit(Block, "198.51.100.0/24"),
        row(
            "802.1Q clean v6 ICMPv6",
            Packet::new().vlan_8021q(30).ipv6(SRC6, DST6).ping6(),
            PASS,
            R::Pass,
            C::Icmp,
        )
        .block("2001:db8:bad::/48"),
        row(
            "802.1Q blocked v6 ICMPv6",
            Packet::new().vlan_8021q(30).ipv6(blocked6, DST6).ping6(),
            DROP,
            R::DropBlocklist,
            C::Icmp,
        )
        .block("2001:db8:bad::/48")
        .hit(Block, "2001:db8:bad::/48"),
        row(
            "QinQ (802.1ad + 802.1Q) clean v4 ACK",
            Packet::new()
                .vlan_8021ad(100)
                .vlan_8021q(200)
                .ipv4(SRC4, DST4)
                .ack(),
            PASS,
            R::Pass,
            C::Tcp,
        )
        .block("198.51.100.0/24"),
        row(
            "QinQ (802.1ad + 802.1Q) blocked v4 ACK",
            Packet::new()
                .vlan_8021ad(100)
                .vlan_8021q(200)
                .ipv4(blocked4, DST4)
                .ack(),
            DROP,
            R::DropBlocklist,
            C::Tcp,
        )
        .block("198.51.100.0/24")
        .hit(Block, "198.51.100.0/24"),
        row(
            "QinQ (802.1ad + 802.1Q) clean v6 UDP",
            Packet::new()
                .vlan_8021ad(100)
                .vlan_8021q(200)
                .ipv6(SRC6, DST6)
                .dns(),
            PASS,
            R::Pass,
            C::Udp,
        )
        .block("2001:db8:bad::/48"),
        row(
            "QinQ (802.1ad + 802.1Q) blocked v6 UDP",
            Packet::new()
                .vlan_8021ad(100)
                .vlan_8021q(200)
                .ipv6(blocked6, DST6)
                .dns(),
            DROP,
            R::DropBlocklist,
            C::Udp,
        )
        .block("2001:db8:bad::/48")
        .hit(Block, "2001:db8:bad::/48"),
        row(
            "double 802.1Q blocked v4 UDP",
            Packet::new()
                .vlan_8021q(1)
                .vlan_8021q(2)
                .ipv4(blocked4, DST4)
                .dns(),
            DROP,
            R::DropBlocklist,
            C::Udp,
        )
        .block("198.51.100.0/24")
        .hit(Block, "198.51.100.0/24"),
        row(
            "three VLAN tags are not parsed: non-IP, even from a blocked source",
            Packet::new()
                .vlan_8021ad(1)
                .vlan_8021q(2)
                .vlan_8021q(3)
                .ipv4(blocked4, DST4)
                .dns(),
            PASS,
            R::PassNonIp,
            C::Other,
        )
        .block("198.51.100.0/24"),
        row(
            "ARP inside 802.1Q",
            Packet::new().vlan_8021q(10).arp_request(SRC4, DST4),
            PASS,
            R::PassNonIp,
            C::Other,
        ),
    ]
}

fn ipv6_ext_rows() -> Vec<Row> {
    use List::Block;
    let seven = [
        ExtHeader::HopByHop { len: 0 },
        ExtHeader::DestOpts { len: 0 },
        ExtHeader::Routing { len: 0 },
        ExtHeader::Fragment {
            offset: 0,
            more: true,
        },
        ExtHeader::DestOpts { len: 0 },
        ExtHeader::DestOpts { len: 1 },
        ExtHeader::DestOpts { len: 0 },
    ];
    let chain = |n: usize| seven[..n].iter().fold(v6(SRC6), |p, h| p.ext_header(*h));
    vec![
        row(
            "v6 hop-by-hop + TCP SYN",
            v6(SRC6).hop_by_hop().syn(),
            PASS,
            R::Pass,
            C::TcpSyn,
        ),
        row(
            "v6 routing + UDP",
            v6(SRC6).routing().dns(),
            PASS,
            R::Pass,
            C::Udp,
        ),
        row(
            "v6 destination options + ICMPv6",
            v6(SRC6).dest_opts().ping6(),
            PASS,
            R::Pass,
            C::Icmp,
        ),
        row(
            "v6 long options headers (16 and 24 bytes) + UDP",
            v6(SRC6)
                .ext_header(ExtHeader::HopByHop { len: 1 })
                .ext_header(ExtHeader::DestOpts { len: 2 })
                .dns(),
            PASS,
            R::Pass,
            C::Udp,
        ),
        row(
            "v6 first fragment (offset 0, M) + UDP",
            v6(SRC6).ipv6_fragment(0, true).dns(),
            PASS,
            R::Pass,
            C::Udp,
        ),
        row(
            "v6 atomic fragment (offset 0, no M) + ACK",
            v6(SRC6).ipv6_fragment(0, false).ack(),
            PASS,
            R::Pass,
            C::Tcp,
        ),
        row(
            "v6 non-first fragment (offset 185, M)",
            v6(SRC6)
                .ipv6_fragment(185, true)
                .ip_proto(proto::UDP)
                .payload(&[0x55; 64]),
            PASS,
            R::Pass,
            C::Fragment,
        ),
        row(
            "v6 last fragment (offset 370, no M)",
            v6(SRC6)
                .ipv6_fragment(370, false)
                .ip_proto(proto::TCP)
                .payload(&[0x55; 3]),
            PASS,
            R::Pass,
            C::Fragment,
        ),
        row(
            "v6 blocked non-first fragment",
            v6("2001:db8:bad::1")
                .ipv6_fragment(185, false)
                .ip_proto(proto::UDP)
                .payload(&[0; 16]),
            DROP,
            R::DropBlocklist,
            C::Fragment,
        )
        .block("2001:db8:bad::/48")
        .hit(Block, "2001:db8:bad::/48"),
        row(
            "v6 blocked hop-by-hop + UDP",
            v6("2001:db8:bad::1").hop_by_hop().dns(),
            DROP,
            R::DropBlocklist,
            C::Udp,
        )
        .block("2001:db8:bad::/48")
        .hit(Block, "2001:db8:bad::/48"),
        row(
            "v6 chain of 6 extension headers + UDP",
            chain(6).dns(),
            PASS,
            R::Pass,
            C::Udp,
        ),
        row(
            "v6 chain of 7 extension headers",
            chain(7).dns(),
            DROP,
            R::DropExtChain,
            C::Other,
        ),
        row(
            "v6 chain of 7 from a blocked source: the parser drops it first",
            chain(7).dns(),
            DROP,
            R::DropExtChain,
            C::Other,
        )
        .block("::/0"),
    ]
}

fn fragment_rows() -> Vec<Row> {
    use List::Block;
    vec![
        row(
            "v4 first fragment (MF) + UDP",
            v4(SRC4).ipv4_fragment(0, true).dns(),
            PASS,
            R::Pass,
            C::Udp,
        ),
        row(
            "v4 first fragment (MF) + SYN",
            v4(SRC4).ipv4_fragment(0, true).syn(),
            PASS,
            R::Pass,
            C::TcpSyn,
        ),
        row(
            "v4 DF + ACK is not a fragment",
            v4(SRC4).dont_fragment().ack(),
            PASS,
            R::Pass,
            C::Tcp,
        ),
        row(
            "v4 non-first fragment (offset 185, MF)",
            v4(SRC4)
                .ipv4_fragment(185, true)
                .ip_proto(proto::UDP)
                .payload(&[0x55; 64]),
            PASS,
            R::Pass,
            C::Fragment,
        ),
        row(
            "v4 last fragment with 3 bytes is not parsed as TCP",
            v4(SRC4)
                .ipv4_fragment(185, false)
                .ip_proto(proto::TCP)
                .payload(&[0x55; 3]),
            PASS,
            R::Pass,
            C::Fragment,
        ),
        row(
            "v4 blocked non-first fragment",
            v4("198.51.100.3")
                .ipv4_fragment(1, true)
                .ip_proto(proto::UDP)
                .payload(&[0; 8]),
            DROP,
            R::DropBlocklist,
            C::Fragment,
        )
        .block("198.51.100.0/24")
        .hit(Block, "198.51.100.0/24"),
    ]
}

fn malformed_rows() -> Vec<Row> {
    let bad = |name: &str, packet: Packet| row(name, packet, DROP, R::DropMalformed, C::Other);
    let v4_total = |l4_len: u16| v4(SRC4).ipv4_total_len(20 + l4_len);
    let v6_payload = |l4_len: u16| v6(SRC6).ipv6_payload_len(l4_len);
    vec![
        bad("v4 IHL 4", v4(SRC4).ihl(4).syn()),
        bad("v4 IHL 0", v4(SRC4).ihl(0).dns()),
        bad("v4 IHL 6 without the options", v4(SRC4).ihl(6).syn()),
        bad(
            "v4 total length larger than the frame",
            v4(SRC4).ipv4_total_len(1500).dns(),
        ),
        bad(
            "v4 total length one byte past the frame",
            v4(SRC4).ipv4_total_len(20 + 8 + 29 + 1).dns(),
        ),
        bad(
            "v4 total length smaller than the header",
            v4(SRC4).ipv4_total_len(19).dns(),
        ),
        bad(
            "v4 version 6 in an IPv4 EtherType",
            v4(SRC4).ip_version(6).dns(),
        ),
        bad("v4 version 0", v4(SRC4).ip_version(0).syn()),
        bad(
            "v6 version 4 in an IPv6 EtherType",
            v6(SRC6).ip_version(4).dns(),
        ),
        bad(
            "v6 payload length larger than the frame",
            v6(SRC6).ipv6_payload_len(1000).dns(),
        ),
        bad("v4 TCP data offset 4", v4(SRC4).syn().tcp_data_offset(4)),
        bad(
            "v4 TCP data offset 15 without the options",
            v4(SRC4).syn().tcp_data_offset(15),
        ),
        bad("v6 TCP data offset 0", v6(SRC6).syn().tcp_data_offset(0)),
        bad(
            "v4 TCP header of 19 bytes, lengths consistent",
            v4_total(19).syn().truncate(ETH_HLEN + 20 + 19),
        ),
        bad(
            "v4 UDP header of 7 bytes, lengths consistent",
            v4_total(7).udp(1, 2).truncate(ETH_HLEN + 20 + 7),
        ),
        bad(
            "v4 ICMP header of 3 bytes, lengths consistent",
            v4_total(3).icmp(8, 0).truncate(ETH_HLEN + 20 + 3),
        ),
        bad(
            "v6 TCP header of 10 bytes, lengths consistent",
            v6_payload(10).syn().truncate(ETH_HLEN + 40 + 10),
        ),
        bad(
            "v6 hop-by-hop header cut short, lengths consistent",
            v6_payload(4).hop_by_hop().dns().truncate(ETH_HLEN + 40 + 4),
        ),
        bad(
            "v6 fragment header cut short, lengths consistent",
            v6_payload(6)
                .ipv6_fragment(0, true)
                .dns()
                .truncate(ETH_HLEN + 40 + 6),
        ),
        bad(
            "v4 total length 20 says no TCP header; zero padding after it",
            v4_total(0).ip_proto(proto::TCP).pad_to(60),
        ),
        bad(
            "v4 total length 20 says no TCP header; padding looks like a SYN",
            v4_total(0)
                .ip_proto(proto::TCP)
                .trailer(&syn_header_bytes()),
        ),
        bad(
            "v6 payload length 0 says no UDP header; padding looks like UDP",
            v6_payload(0)
                .ip_proto(proto::UDP)
                .trailer(&[0x12, 0x34, 0, 53, 0, 8, 0, 0]),
        ),
        bad(
            "802.1Q tag cut short",
            Packet::new()
                .vlan_8021q(5)
                .ipv4(SRC4, DST4)
                .dns()
                .truncate(ETH_HLEN + 2),
        ),
    ]
}

/// Frames cut at every length from the Ethernet header to one byte short
/// of whole: every header boundary and every point inside each header.
fn truncation_rows() -> Vec<Row> {
    let bases = [
        (
            "v4 TCP SYN with IP and TCP options",
            v4(SRC4).ipv4_options(&[1; 8]).syn().tcp_options(&[1; 4]),
        ),
        ("v4 UDP", v4(SRC4).dns()),
        ("v4 ICMP", v4(SRC4).ping4()),
        (
            "QinQ v4 ACK",
            Packet::new()
                .vlan_8021ad(1)
                .vlan_8021q(2)
                .ipv4(SRC4, DST4)
                .ack(),
        ),
        ("v6 TCP SYN", v6(SRC6).syn()),
        (
            "v6 hop-by-hop/routing/dest-opts/fragment + UDP",
            v6(SRC6)
                .hop_by_hop()
                .routing()
                .dest_opts()
                .ipv6_fragment(0, true)
                .dns(),
        ),
        (
            "802.1Q v6 ICMPv6",
            Packet::new().vlan_8021q(3).ipv6(SRC6, DST6).ping6(),
        ),
    ];
    let mut rows = Vec::new();
    for (name, packet) in bases {
        let (frame, layers) = packet.build_with_layers();
        for len in ETH_HLEN..frame.len() {
            let layer = layers
                .iter()
                .find(|l| l.start <= len && len < l.end())
                .expect("inside the frame");
            let at = match len - layer.start {
                0 => format!("at the start of {}", layer.name),
                n => format!("{n} bytes into {}", layer.name),
            };
            let cut = packet.clone().truncate(len);
            rows.push(row(
                format!("{name} cut to {len} bytes ({at})"),
                cut,
                DROP,
                R::DropMalformed,
                C::Other,
            ));
        }
    }
    rows
}

fn non_ip_rows() -> Vec<Row> {
    vec![
        row(
            "ARP request",
            Packet::new().arp_request(SRC4, DST4),
            PASS,
            R::PassNonIp,
            C::Other,
        ),
        row(
            "ARP from a blocked sender is still non-IP",
            Packet::new().arp_request("198.51.100.1", DST4),
            PASS,
            R::PassNonIp,
            C::Other,
        )
        .block("0.0.0.0/0"),
        row(
            "LLDP",
            Packet::new().ether_type(ETH_P_LLDP).payload(&[0; 46]),
            PASS,
            R::PassNonIp,
            C::Other,
        ),
        row(
            "bare 14-byte Ethernet header",
            Packet::new().ether_type(0x9000),
            PASS,
            R::PassNonIp,
            C::Other,
        ),
    ]
}

fn monitor_rows() -> Vec<Row> {
    use List::{Allow, Block};
    vec![
        row(
            "monitor: blocked v4 SYN passes, drop counted",
            v4("198.51.100.7").syn(),
            PASS,
            R::DropBlocklist,
            C::TcpSyn,
        )
        .block("198.51.100.0/24")
        .hit(Block, "198.51.100.0/24")
        .monitor(),
        row(
            "monitor: blocked v6 UDP passes, drop counted",
            v6("2001:db8:bad::1").dns(),
            PASS,
            R::DropBlocklist,
            C::Udp,
        )
        .block("2001:db8:bad::/48")
        .hit(Block, "2001:db8:bad::/48")
        .monitor(),
        row(
            "monitor: malformed frame passes, drop counted",
            v4(SRC4).ihl(4).dns(),
            PASS,
            R::DropMalformed,
            C::Other,
        )
        .monitor(),
        row(
            "monitor: 7-header chain passes, drop counted",
            v6(SRC6)
                .hop_by_hop()
                .dest_opts()
                .routing()
                .dest_opts()
                .dest_opts()
                .dest_opts()
                .dest_opts()
                .dns(),
            PASS,
            R::DropExtChain,
            C::Other,
        )
        .monitor(),
        row(
            "monitor: allowlisted source",
            v4("10.0.0.1").ack(),
            PASS,
            R::PassAllowlist,
            C::Tcp,
        )
        .allow("10.0.0.0/8")
        .hit(Allow, "10.0.0.0/8")
        .monitor(),
        row(
            "monitor: clean source",
            v6(SRC6).syn(),
            PASS,
            R::Pass,
            C::TcpSyn,
        )
        .monitor(),
    ]
}

// --------------------------------------------------------------- runner

impl Row {
    /// Rules and monitor mode stay in the maps, so such rows need a program
    /// of their own; the rest can share one (counters are compared as deltas).
    fn needs_own_program(&self) -> bool {
        !self.rules.is_empty() || self.monitor
    }
}

/// Sets the row up in `harness`, runs it and checks everything it promises.
fn check(harness: &mut Harness, row: &Row) -> Result<()> {
    for (list, prefix) in &row.rules {
        match list {
            List::Allow => harness.allow(*prefix)?,
            List::Block => harness.block(*prefix)?,
        }
    }
    harness.set_monitor(row.monitor)?;
    let frame = row.packet.build();

    let (outputs, moved) = harness.delta(|h| {
        (0..row.times)
            .map(|_| h.run(&frame))
            .collect::<Result<Vec<_>>>()
    })?;

    for (verdict, output) in &outputs {
        ensure!(
            *verdict == row.verdict,
            "verdict {verdict:?}, expected {:?}",
            row.verdict
        );
        ensure!(*output == frame, "the program changed the frame");
    }
    let bytes = frame.len() as u64;
    let expected = vec![(
        row.cell,
        Counter {
            packets: row.times,
            bytes: row.times * bytes,
        },
    )];
    ensure!(
        moved.nonzero().collect::<Vec<_>>() == expected,
        "counters moved {moved}, expected only {}/{} by {} packets",
        row.cell.0.name(),
        row.cell.1.name(),
        row.times
    );
    for (list, prefix) in &row.rules {
        let hits = harness.rule_hits(*list, *prefix)?;
        let expected = if row.hits.contains(&(*list, *prefix)) {
            row.times
        } else {
            0
        };
        ensure!(
            hits.packets == expected && hits.bytes == expected * bytes,
            "{list:?} rule {prefix} counted {} packets / {} bytes, expected {expected} packets",
            hits.packets,
            hits.bytes
        );
    }
    Ok(())
}

fn load(test: &str) -> Harness {
    Harness::load().unwrap_or_else(|e| panic!("{test}: loading the XDP object: {e:#}"))
}

/// Runs every row and reports all failing rows by name, not just the first.
fn run_table(test: &str, rows: Vec<Row>) {
    if !bpf_ready(test) {
        return;
    }
    let mut shared = load(test);
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let result = if row.needs_own_program() {
                check(&mut load(test), row)
            } else {
                check(&mut shared, row)
            };
            result.err().map(|e| format!("  [{}] {e:#}", row.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{test}: {} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    eprintln!("{test}: {} rows passed", rows.len());
}

#[test]
fn clean_traffic() {
    run_table("clean_traffic", clean_rows());
}

#[test]
fn prefixes_and_longest_match() {
    run_table("prefixes_and_longest_match", prefix_rows());
}

#[test]
fn vlan_tags() {
    run_table("vlan_tags", vlan_rows());
}

#[test]
fn ipv6_extension_headers() {
    run_table("ipv6_extension_headers", ipv6_ext_rows());
}

#[test]
fn ip_fragments() {
    run_table("ip_fragments", fragment_rows());
}

#[test]
fn malformed_headers() {
    run_table("malformed_headers", malformed_rows());
}

#[test]
fn truncated_frames() {
    run_table("truncated_frames", truncation_rows());
}

#[test]
fn non_ip() {
    run_table("non_ip", non_ip_rows());
}

#[test]
fn monitor_mode() {
    run_table("monitor_mode", monitor_rows());
}

/// Turning monitor mode off again restores drops (the flag is read per packet).
#[test]
fn monitor_mode_toggles_without_reload() -> Result<()> {
    let Some(mut harness) = Harness::for_test("monitor_mode_toggles_without_reload") else {
        return Ok(());
    };
    harness.block("198.51.100.0/24")?;
    let frame = v4("198.51.100.1").dns().build();
    for (monitor, expected) in [(true, PASS), (false, DROP), (true, PASS)] {
        harness.set_monitor(monitor)?;
        let (verdict, _) = harness.run(&frame)?;
        ensure!(
            verdict == expected,
            "monitor={monitor}: verdict {verdict:?}, expected {expected:?}"
        );
    }
    let drops = harness.counters()?.get(R::DropBlocklist, C::Udp);
    ensure!(
        drops.packets == 3,
        "drop_blocklist/udp counted {} packets, expected 3",
        drops.packets
    );
    Ok(())
}

/// The kernel refuses XDP test-run input shorter than ETH_HLEN, so the
/// program's handling of such frames cannot be exercised here.
#[test]
fn test_run_rejects_frames_shorter_than_ethernet() -> Result<()> {
    let Some(mut harness) = Harness::for_test("test_run_rejects_frames_shorter_than_ethernet")
    else {
        return Ok(());
    };
    let full = v4(SRC4).dns().build();
    let (results, moved) = harness.delta(|h| {
        Ok((1..ETH_HLEN)
            .map(|len| (len, h.run(&full[..len])))
            .collect::<Vec<_>>())
    })?;
    for (len, result) in results {
        ensure!(
            result.is_err(),
            "a {len}-byte frame was accepted by test-run: {result:?}"
        );
    }
    ensure!(
        moved.nonzero().count() == 0,
        "rejected frames moved counters: {moved}"
    );
    Ok(())
}
