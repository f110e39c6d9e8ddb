//! A small fluent packet builder for test fixtures (in the spirit of Katran's
//! tester): Ethernet, up to any number of VLAN tags, IPv4 or IPv6 (with
//! extension headers), TCP / UDP / ICMP / ICMPv6 and a payload, with every
//! length and checksum filled in unless a test overrides it on purpose.
//!
//! ```
//! use mitigator_tests::packet::{Packet, tcp_flags};
//! let syn = Packet::new()
//!     .vlan_8021q(100)
//!     .ipv4("192.0.2.1", "198.51.100.2")
//!     .tcp(40000, 80)
//!     .tcp_flags(tcp_flags::SYN)
//!     .build();
//! assert_eq!(syn.len(), 14 + 4 + 20 + 20);
//! ```
//!
//! Setters that belong to a layer (`ttl`, `tcp_flags`, ...) panic when that
//! layer has not been chosen yet: a fixture that does so is a bug in the test.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const ETH_P_LLDP: u16 = 0x88CC;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;

/// IP protocol numbers (IPv4 protocol / IPv6 next header).
pub mod proto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header"; also used for IPv4 packets without an L4 layer.
    pub const NONE: u8 = 59;
    pub const DSTOPTS: u8 = 60;
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// One header (or the payload) in a built frame, for tests that cut frames
/// at header boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    pub name: &'static str,
    pub start: usize,
    pub len: usize,
}

impl Layer {
    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

/// An IPv6 extension header. Lengths are in the header's own unit: 8-byte
/// blocks beyond the first 8 bytes (`len: 0` is an 8-byte header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    HopByHop {
        len: u8,
    },
    Routing {
        len: u8,
    },
    DestOpts {
        len: u8,
    },
    /// `offset` in 8-byte units (13 bits), `more` is the M flag.
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl ExtHeader {
    pub fn proto(self) -> u8 {
        match self {
            ExtHeader::HopByHop { .. } => proto::HOPOPTS,
            ExtHeader::Routing { .. } => proto::ROUTING,
            ExtHeader::DestOpts { .. } => proto::DSTOPTS,
            ExtHeader::Fragment { .. } => proto::FRAGMENT,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExtHeader::HopByHop { .. } => "hop-by-hop",
            ExtHeader::Routing { .. } => "routing",
            ExtHeader::DestOpts { .. } => "destination-options",
            ExtHeader::Fragment { .. } => "fragment",
        }
    }

    fn encode(self, next: u8) -> Vec<u8> {
        match self {
            ExtHeader::HopByHop { len } | ExtHeader::DestOpts { len } => {
                let mut h = vec![0u8; (len as usize + 1) * 8];
                h[0] = next;
                h[1] = len;
                // One PadN option fills the rest, so the header is well formed.
                h[2] = 1;
                h[3] = (h.len() - 4) as u8;
                h
            }
            ExtHeader::Routing { len } => {
                let mut h = vec![0u8; (len as usize + 1) * 8];
                h[0] = next;
                h[1] = len;
                h[2] = 253; // experimental routing type (RFC 4727)
                h[3] = 0; // segments left: nothing to route, receivers skip it
                h
            }
            ExtHeader::Fragment { offset, more } => {
                let field = (offset & 0x1fff) << 3 | more as u16;
                let mut h = vec![next, 0];
                h.extend_from_slice(&field.to_be_bytes());
                h.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // identification
                h
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Vlan {
    tpid: u16,
    tci: u16,
}

#[derive(Clone, Debug)]
struct Ipv4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    id: u16,
    dont_fragment: bool,
    more_fragments: bool,
    /// In 8-byte units.
    frag_offset: u16,
    options: Vec<u8>,
    version: u8,
    ihl: Option<u8>,
    total_len: Option<u16>,
    proto: Option<u8>,
}

#[derive(Clone, Debug)]
struct Ipv6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    ext: Vec<ExtHeader>,
    version: u8,
    payload_len: Option<u16>,
    next_header: Option<u8>,
}

#[derive(Clone, Debug)]
enum L3 {
    None,
    V4(Ipv4),
    V6(Ipv6),
}

#[derive(Clone, Debug)]
struct Tcp {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: Vec<u8>,
    data_offset: Option<u8>,
}

#[derive(Clone, Debug)]
enum L4 {
    None,
    Tcp(Tcp),
    Udp {
        sport: u16,
        dport: u16,
        len: Option<u16>,
    },
    Icmp {
        icmp_type: u8,
        code: u8,
    },
    Icmpv6 {
        icmp_type: u8,
        code: u8,
    },
}

impl L4 {
    fn proto(&self) -> u8 {
        match self {
            L4::None => proto::NONE,
            L4::Tcp(_) => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Icmp { .. } => proto::ICMP,
            L4::Icmpv6 { .. } => proto::ICMPV6,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            L4::None => "l4",
            L4::Tcp(_) => "tcp",
            L4::Udp { .. } => "udp",
            L4::Icmp { .. } => "icmp",
            L4::Icmpv6 { .. } => "icmpv6",
        }
    }
}

/// A frame description; `build()` turns it into bytes.
#[derive(Clone, Debug)]
pub struct Packet {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlans: Vec<Vlan>,
    ether_type: Option<u16>,
    l3: L3,
    l4: L4,
    payload: Vec<u8>,
    trailer: Vec<u8>,
    truncate: Option<usize>,
}

impl Default for Packet {
    fn default() -> Self {
        Self::new()
    }
}

impl Packet {
    /// An Ethernet frame with locally administered MACs and nothing above it.
    pub fn new() -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            vlans: Vec::new(),
            ether_type: None,
            l3: L3::None,
            l4: L4::None,
            payload: Vec::new(),
            trailer: Vec::new(),
            truncate: None,
        }
    }

    // ---- Ethernet and VLAN ----

    pub fn src_mac(mut self, mac: [u8; 6]) -> Self {
        self.src_mac = mac;
        self
    }

    pub fn dst_mac(mut self, mac: [u8; 6]) -> Self {
        self.dst_mac = mac;
        self
    }

    /// Sets the innermost EtherType, overriding the one implied by the L3 layer.
    pub fn ether_type(mut self, ether_type: u16) -> Self {
        self.ether_type = Some(ether_type);
        self
    }

    /// Adds a VLAN tag; the first call is the outermost tag.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push(Vlan {
            tpid,
            tci: vid & 0x0fff,
        });
        self
    }

    pub fn vlan_8021q(self, vid: u16) -> Self {
        self.vlan(ETH_P_8021Q, vid)
    }

    pub fn vlan_8021ad(self, vid: u16) -> Self {
        self.vlan(ETH_P_8021AD, vid)
    }

    /// An ARP request (Ethernet/IPv4), as the payload of a non-IP frame.
    pub fn arp_request(self, sender: &str, target: &str) -> Self {
        let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        arp.extend_from_slice(&self.src_mac);
        arp.extend_from_slice(&ipv4_addr(sender).octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&ipv4_addr(target).octets());
        self.ether_type(ETH_P_ARP).payload(&arp)
    }

    // ---- IPv4 ----

    pub fn ipv4(mut self, src: &str, dst: &str) -> Self {
        self.l3 = L3::V4(Ipv4 {
            src: ipv4_addr(src),
            dst: ipv4_addr(dst),
            ttl: 64,
            id: 0,
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
            version: 4,
            ihl: None,
            total_len: None,
            proto: None,
        });
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.v4().ttl = ttl;
        self
    }

    pub fn ip_id(mut self, id: u16) -> Self {
        self.v4().id = id;
        self
    }

    pub fn dont_fragment(mut self) -> Self {
        self.v4().dont_fragment = true;
        self
    }

    /// Fragment offset in 8-byte units and the MF flag.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        let ip = self.v4();
        ip.frag_offset = offset & 0x1fff;
        ip.more_fragments = more;
        self
    }

    /// Raw option bytes (a multiple of 4); the IHL follows unless overridden.
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "IPv4 options must be 4n <= 40 bytes"
        );
        self.v4().options = options.to_vec();
        self
    }

    /// Writes this IHL nibble whatever the real header length is.
    pub fn ihl(mut self, ihl: u8) -> Self {
        self.v4().ihl = Some(ihl & 0x0f);
        self
    }

    pub fn ipv4_total_len(mut self, total_len: u16) -> Self {
        self.v4().total_len = Some(total_len);
        self
    }

    // ---- IPv6 ----

    pub fn ipv6(mut self, src: &str, dst: &str) -> Self {
        self.l3 = L3::V6(Ipv6 {
            src: ipv6_addr(src),
            dst: ipv6_addr(dst),
            hop_limit: 64,
            ext: Vec::new(),
            version: 6,
            payload_len: None,
            next_header: None,
        });
        self
    }

    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.v6().hop_limit = hop_limit;
        self
    }

    /// Appends an extension header to the chain (after those added before).
    pub fn ext_header(mut self, header: ExtHeader) -> Self {
        self.v6().ext.push(header);
        self
    }

    pub fn hop_by_hop(self) -> Self {
        self.ext_header(ExtHeader::HopByHop { len: 0 })
    }

    pub fn routing(self) -> Self {
        self.ext_header(ExtHeader::Routing { len: 0 })
    }

    pub fn dest_opts(self) -> Self {
        self.ext_header(ExtHeader::DestOpts { len: 0 })
    }

    /// Fragment header: offset in 8-byte units and the M flag.
    pub fn ipv6_fragment(self, offset: u16, more: bool) -> Self {
        self.ext_header(ExtHeader::Fragment { offset, more })
    }

    pub fn ipv6_payload_len(mut self, payload_len: u16) -> Self {
        self.v6().payload_len = Some(payload_len);
        self
    }

    // ---- both IP versions ----

    /// Writes this version nibble (IPv4 or IPv6 header).
    pub fn ip_version(mut self, version: u8) -> Self {
        match &mut self.l3 {
            L3::V4(ip) => ip.version = version,
            L3::V6(ip) => ip.version = version,
            L3::None => panic!("ip_version() needs .ipv4() or .ipv6() first"),
        }
        self
    }

    /// Overrides the IPv4 protocol / the last IPv6 next-header field.
    pub fn ip_proto(mut self, proto: u8) -> Self {
        match &mut self.l3 {
            L3::V4(ip) => ip.proto = Some(proto),
            L3::V6(ip) => ip.next_header = Some(proto),
            L3::None => panic!("ip_proto() needs .ipv4() or .ipv6() first"),
        }
        self
    }

    // ---- L4 ----

    /// A TCP header (no flags set, seq 1, window 65535).
    pub fn tcp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = L4::Tcp(Tcp {
            sport,
            dport,
            seq: 1,
            ack: 0,
            flags: 0,
            window: 65535,
            options: Vec::new(),
            data_offset: None,
        });
        self
    }

    pub fn tcp_flags(mut self, flags: u8) -> Self {
        self.tcp_mut().flags = flags;
        self
    }

    pub fn tcp_seq(mut self, seq: u32) -> Self {
        self.tcp_mut().seq = seq;
        self
    }

    pub fn tcp_ack_number(mut self, ack: u32) -> Self {
        self.tcp_mut().ack = ack;
        self
    }

    /// Raw option bytes (a multiple of 4); the data offset follows unless overridden.
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "TCP options must be 4n <= 40 bytes"
        );
        self.tcp_mut().options = options.to_vec();
        self
    }

    /// Writes this data-offset nibble whatever the real header length is.
    pub fn tcp_data_offset(mut self, words: u8) -> Self {
        self.tcp_mut().data_offset = Some(words & 0x0f);
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = L4::Udp {
            sport,
            dport,
            len: None,
        };
        self
    }

    pub fn udp_len(mut self, len: u16) -> Self {
        match &mut self.l4 {
            L4::Udp { len: l, .. } => *l = Some(len),
            _ => panic!("udp_len() needs .udp() first"),
        }
        self
    }

    /// ICMP with an 8-byte header (identifier 1, sequence 1).
    pub fn icmp(mut self, icmp_type: u8, code: u8) -> Self {
        self.l4 = L4::Icmp { icmp_type, code };
        self
    }

    pub fn icmpv6(mut self, icmp_type: u8, code: u8) -> Self {
        self.l4 = L4::Icmpv6 { icmp_type, code };
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    // ---- after the datagram ----

    /// Bytes after the IP datagram that its length fields do not cover.
    pub fn trailer(mut self, bytes: &[u8]) -> Self {
        self.trailer = bytes.to_vec();
        self
    }

    /// Zero-pads the frame to `len` bytes (Ethernet minimum-size padding).
    pub fn pad_to(self, len: usize) -> Self {
        let current = self.unpadded_len();
        self.trailer(&vec![0; len.saturating_sub(current)])
    }

    /// Cuts the built frame to `len` bytes, leaving every length field as it was.
    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    // ---- output ----

    pub fn build(&self) -> Vec<u8> {
        self.build_with_layers().0
    }

    /// The frame and where each header starts, before any truncation is
    /// applied to the layer list (layers are those of the whole frame).
    pub fn build_with_layers(&self) -> (Vec<u8>, Vec<Layer>) {
        let mut frame = Frame::default();
        frame.push("ethernet", &self.ethernet_header());
        for vlan in self.vlan_headers() {
            frame.push("vlan", &vlan);
        }
        let (l4_header, l4_payload) = self.l4_bytes();
        let l4_len = l4_header.len() + l4_payload.len();
        match &self.l3 {
            L3::None => {}
            L3::V4(ip) => frame.push("ipv4", &self.ipv4_header(ip, l4_len)),
            L3::V6(ip) => {
                let ext = self.ipv6_ext_headers(ip);
                let ext_len = ext.iter().map(|(_, h)| h.len()).sum::<usize>();
                frame.push("ipv6", &self.ipv6_header(ip, ext_len + l4_len));
                for (name, header) in ext {
                    frame.push(name, &header);
                }
            }
        }
        frame.push(self.l4.name(), &l4_header);
        frame.push("payload", &l4_payload);
        frame.push("trailer", &self.trailer);
        if let Some(len) = self.truncate {
            frame.bytes.truncate(len);
        }
        (frame.bytes, frame.layers)
    }

    fn unpadded_len(&self) -> usize {
        let mut copy = self.clone();
        copy.trailer.clear();
        copy.truncate = None;
        copy.build().len()
    }

    fn v4(&mut self) -> &mut Ipv4 {
        match &mut self.l3 {
            L3::V4(ip) => ip,
            _ => panic!("IPv4 setter needs .ipv4() first"),
        }
    }

    fn v6(&mut self) -> &mut Ipv6 {
        match &mut self.l3 {
            L3::V6(ip) => ip,
            _ => panic!("IPv6 setter needs .ipv6() first"),
        }
    }

    fn tcp_mut(&mut self) -> &mut Tcp {
        match &mut self.l4 {
            L4::Tcp(tcp) => tcp,
            _ => panic!("TCP setter needs .tcp() first"),
        }
    }

    /// The EtherType after the last VLAN tag.
    fn inner_ether_type(&self) -> u16 {
        self.ether_type.unwrap_or(match self.l3 {
            L3::None => ETH_P_LLDP,
            L3::V4(_) => ETH_P_IP,
            L3::V6(_) => ETH_P_IPV6,
        })
    }

    fn ethernet_header(&self) -> Vec<u8> {
        let first = self
            .vlans
            .first()
            .map_or(self.inner_ether_type(), |v| v.tpid);
        let mut h = Vec::with_capacity(ETH_HLEN);
        h.extend_from_slice(&self.dst_mac);
        h.extend_from_slice(&self.src_mac);
        h.extend_from_slice(&first.to_be_bytes());
        h
    }

    /// Each tag carries the TCI and the EtherType of whatever follows it.
    fn vlan_headers(&self) -> Vec<Vec<u8>> {
        let inner = self.inner_ether_type();
        let next_types = self.vlans.iter().skip(1).map(|v| v.tpid).chain([inner]);
        self.vlans
            .iter()
            .zip(next_types)
            .map(|(vlan, next)| [vlan.tci.to_be_bytes(), next.to_be_bytes()].concat())
            .collect()
    }

    fn ipv4_header(&self, ip: &Ipv4, l4_len: usize) -> Vec<u8> {
        let header_len = IPV4_HLEN + ip.options.len();
        let ihl = ip.ihl.unwrap_or((header_len / 4) as u8);
        let total_len = ip.total_len.unwrap_or((header_len + l4_len) as u16);
        let frags =
            (ip.dont_fragment as u16) << 14 | (ip.more_fragments as u16) << 13 | ip.frag_offset;
        let mut h = Vec::with_capacity(header_len);
        h.push(ip.version << 4 | ihl);
        h.push(0); // DSCP/ECN
        h.extend_from_slice(&total_len.to_be_bytes());
        h.extend_from_slice(&ip.id.to_be_bytes());
        h.extend_from_slice(&frags.to_be_bytes());
        h.push(ip.ttl);
        h.push(ip.proto.unwrap_or(self.l4.proto()));
        h.extend_from_slice(&[0, 0]); // checksum, filled below
        h.extend_from_slice(&ip.src.octets());
        h.extend_from_slice(&ip.dst.octets());
        h.extend_from_slice(&ip.options);
        let sum = internet_checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }

    /// The last header's next-header field: the override or the L4 protocol.
    fn ipv6_final_next_header(&self, ip: &Ipv6) -> u8 {
        ip.next_header.unwrap_or(self.l4.proto())
    }

    fn ipv6_header(&self, ip: &Ipv6, payload_len: usize) -> Vec<u8> {
        let next = ip
            .ext
            .first()
            .map_or(self.ipv6_final_next_header(ip), |e| e.proto());
        let mut h = Vec::with_capacity(IPV6_HLEN);
        h.extend_from_slice(&[ip.version << 4, 0, 0, 0]); // traffic class, flow label 0
        h.extend_from_slice(&ip.payload_len.unwrap_or(payload_len as u16).to_be_bytes());
        h.push(next);
        h.push(ip.hop_limit);
        h.extend_from_slice(&ip.src.octets());
        h.extend_from_slice(&ip.dst.octets());
        h
    }

    fn ipv6_ext_headers(&self, ip: &Ipv6) -> Vec<(&'static str, Vec<u8>)> {
        let last = self.ipv6_final_next_header(ip);
        let next_types = ip.ext.iter().skip(1).map(|e| e.proto()).chain([last]);
        ip.ext
            .iter()
            .zip(next_types)
            .map(|(e, next)| (e.name(), e.encode(next)))
            .collect()
    }

    /// The L4 header (checksum filled in) and the payload.
    fn l4_bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let mut header = match &self.l4 {
            L4::None => return (Vec::new(), self.payload.clone()),
            L4::Tcp(tcp) => tcp_header(tcp),
            L4::Udp { sport, dport, len } => {
                let len = len.unwrap_or((UDP_HLEN + self.payload.len()) as u16);
                [
                    sport.to_be_bytes(),
                    dport.to_be_bytes(),
                    len.to_be_bytes(),
                    [0, 0],
                ]
                .concat()
            }
            L4::Icmp { icmp_type, code } | L4::Icmpv6 { icmp_type, code } => {
                vec![*icmp_type, *code, 0, 0, 0, 1, 0, 1]
            }
        };
        let segment = [header.as_slice(), &self.payload].concat();
        let (offset, sum) = match &self.l4 {
            L4::Icmp { .. } => (2, internet_checksum(&segment)),
            L4::Tcp(_) => (16, self.pseudo_header_checksum(proto::TCP, &segment)),
            L4::Udp { .. } => (
                6,
                udp_checksum(self.pseudo_header_checksum(proto::UDP, &segment)),
            ),
            L4::Icmpv6 { .. } => (2, self.pseudo_header_checksum(proto::ICMPV6, &segment)),
            L4::None => unreachable!(),
        };
        header[offset..offset + 2].copy_from_slice(&sum.to_be_bytes());
        (header, self.payload.clone())
    }

    /// Checksum over the L3 pseudo-header and the segment. Without an L3
    /// layer there is no pseudo-header.
    fn pseudo_header_checksum(&self, proto: u8, segment: &[u8]) -> u16 {
        let pseudo = match &self.l3 {
            L3::None => Vec::new(),
            L3::V4(ip) => ipv4_pseudo_header(ip.src, ip.dst, proto, segment.len()),
            L3::V6(ip) => ipv6_pseudo_header(ip.src, ip.dst, proto, segment.len()),
        };
        internet_checksum(&[pseudo.as_slice(), segment].concat())
    }
}

fn tcp_header(tcp: &Tcp) -> Vec<u8> {
    let header_len = TCP_HLEN + tcp.options.len();
    let data_offset = tcp.data_offset.unwrap_or((header_len / 4) as u8);
    let mut h = Vec::with_capacity(header_len);
    h.extend_from_slice(&tcp.sport.to_be_bytes());
    h.extend_from_slice(&tcp.dport.to_be_bytes());
    h.extend_from_slice(&tcp.seq.to_be_bytes());
    h.extend_from_slice(&tcp.ack.to_be_bytes());
    h.push(data_offset << 4);
    h.push(tcp.flags);
    h.extend_from_slice(&tcp.window.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]); // checksum (filled later), urgent pointer
    h.extend_from_slice(&tcp.options);
    h
}

/// UDP sends a computed zero as 0xffff: zero on the wire means "no checksum".
fn udp_checksum(sum: u16) -> u16 {
    if sum == 0 {
        0xffff
    } else {
        sum
    }
}

pub fn ipv4_pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

pub fn ipv6_pseudo_header(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    p
}

/// The RFC 1071 Internet checksum: ones' complement of the ones' complement
/// sum of 16-bit big-endian words (an odd last byte is padded with zero).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += word as u32;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_addr(s: &str) -> Ipv4Addr {
    s.parse()
        .unwrap_or_else(|_| panic!("bad IPv4 address {s:?}"))
}

fn ipv6_addr(s: &str) -> Ipv6Addr {
    s.parse()
        .unwrap_or_else(|_| panic!("bad IPv6 address {s:?}"))
}

/// Frame bytes plus the layer list, built front to back.
#[derive(Default)]
struct Frame {
    bytes: Vec<u8>,
    layers: Vec<Layer>,
}

impl Frame {
    fn push(&mut self, name: &'static str, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.layers.push(Layer {
            name,
            start: self.bytes.len(),
            len: bytes.len(),
        });
        self.bytes.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent checksum: sum every 16-bit word in a wide integer, fold
    /// once at the end. A correct checksum makes the folded sum 0xffff.
    fn folded_sum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum: u64 = bytes
            .chunks(2)
            .map(|c| ((c[0] as u64) << 8) | c.get(1).copied().unwrap_or(0) as u64)
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    fn layer(layers: &[Layer], name: &str) -> Layer {
        *layers
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no {name} layer"))
    }

    /// The TCP/UDP/ICMPv6 segment (header + payload) of a built frame.
    fn segment(frame: &[u8], layers: &[Layer], l4: &str) -> Vec<u8> {
        frame[layer(layers, l4).start..].to_vec()
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words sum to 0xddf2, checksum is its complement.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn odd_length_is_zero_padded() {
        assert_eq!(
            internet_checksum(&[0x12, 0x34, 0x56]),
            internet_checksum(&[0x12, 0x34, 0x56, 0])
        );
    }

    #[test]
    fn ipv4_header_checksum_matches_known_value() {
        // The well-known header 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
        let frame = Packet::new()
            .ipv4("192.168.0.1", "192.168.0.199")
            .dont_fragment()
            .udp(1, 2)
            .payload(&[0; 0x73 - 28])
            .build();
        let ip = &frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
        let expected = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ip, expected);
    }

    // Known values below were computed independently (Python, RFC 768/793/4443 layouts).
    #[test]
    fn udp_v4_checksum_matches_known_value() {
        let frame = Packet::new()
            .ipv4("192.0.2.1", "198.51.100.2")
            .udp(1234, 53)
            .payload(b"hello")
            .build();
        assert_eq!(be16(&frame, ETH_HLEN + IPV4_HLEN + 6), 0xcac3);
    }

    #[test]
    fn tcp_v4_checksum_matches_known_value() {
        let frame = Packet::new()
            .ipv4("192.0.2.1", "198.51.100.2")
            .tcp(40000, 80)
            .tcp_flags(tcp_flags::SYN)
            .build();
        assert_eq!(be16(&frame, ETH_HLEN + IPV4_HLEN + 16), 0x271a);
    }

    #[test]
    fn icmp_checksums_match_known_values() {
        let v4 = Packet::new()
            .ipv4("192.0.2.1", "198.51.100.2")
            .icmp(8, 0)
            .build();
        assert_eq!(be16(&v4, ETH_HLEN + IPV4_HLEN + 2), 0xf7fd);
        let v6 = Packet::new()
            .ipv6("2001:db8::1", "2001:db8::2")
            .icmpv6(128, 0)
            .build();
        assert_eq!(be16(&v6, ETH_HLEN + IPV6_HLEN + 2), 0x2446);
    }

    #[test]
    fn v4_l4_checksums_verify_with_pseudo_header() {
        let base = Packet::new()
            .ipv4("10.1.2.3", "10.9.8.7")
            .ipv4_options(&[1, 1, 1, 1]);
        for (pkt, l4, proto) in [
            (
                base.clone()
                    .tcp(1, 2)
                    .tcp_flags(tcp_flags::ACK)
                    .payload(b"odd"),
                "tcp",
                proto::TCP,
            ),
            (base.clone().udp(3, 4).payload(b"even"), "udp", proto::UDP),
        ] {
            let (frame, layers) = pkt.build_with_layers();
            let ip_layer = layer(&layers, "ipv4");
            let ip = &frame[ip_layer.start..ip_layer.end()];
            let seg = segment(&frame, &layers, l4);
            let pseudo = [
                &ip[12..20],
                &[0, proto],
                &(seg.len() as u16).to_be_bytes()[..],
            ]
            .concat();
            assert_eq!(folded_sum(&[&pseudo, &seg]), 0xffff, "{l4}");
            assert_eq!(folded_sum(&[ip]), 0xffff, "ipv4 header with options");
        }
    }

    #[test]
    fn v6_l4_checksums_verify_with_pseudo_header_after_ext_headers() {
        let base = Packet::new()
            .ipv6("2001:db8::a", "2001:db8:1::b")
            .hop_by_hop()
            .dest_opts();
        for (pkt, l4, proto) in [
            (
                base.clone().tcp(1, 2).tcp_flags(tcp_flags::SYN),
                "tcp",
                proto::TCP,
            ),
            (base.clone().udp(3, 4).payload(b"x"), "udp", proto::UDP),
            (
                base.clone().icmpv6(128, 0).payload(b"ping"),
                "icmpv6",
                proto::ICMPV6,
            ),
        ] {
            let (frame, layers) = pkt.build_with_layers();
            let ip = &frame[layer(&layers, "ipv6").start..];
            let seg = segment(&frame, &layers, l4);
            let len = (seg.len() as u32).to_be_bytes();
            let pseudo = [&ip[8..40], &len[..], &[0, 0, 0, proto]].concat();
            assert_eq!(folded_sum(&[&pseudo, &seg]), 0xffff, "{l4}");
        }
    }

    #[test]
    fn ipv4_lengths_and_fragment_fields() {
        let frame = Packet::new()
            .ipv4("10.0.0.1", "10.0.0.2")
            .ipv4_options(&[0x94, 0x04, 0, 0]) // router alert
            .ipv4_fragment(185, true)
            .udp(1, 2)
            .payload(&[7; 10])
            .build();
        let ip = &frame[ETH_HLEN..];
        assert_eq!(ip[0], 0x46);
        assert_eq!(be16(ip, 2), 24 + 8 + 10);
        assert_eq!(be16(ip, 6), 0x2000 | 185);
        assert_eq!(be16(ip, 24 + 4), 8 + 10, "udp length");
        assert_eq!(frame.len(), ETH_HLEN + 24 + 8 + 10);
    }

    #[test]
    fn overrides_are_written_verbatim_and_checksum_still_valid() {
        let frame = Packet::new()
            .ipv4("10.0.0.1", "10.0.0.2")
            .ihl(4)
            .ipv4_total_len(1500)
            .ip_version(6)
            .ip_proto(proto::GRE)
            .build();
        let ip = &frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
        assert_eq!(ip[0], 0x64);
        assert_eq!(be16(ip, 2), 1500);
        assert_eq!(ip[9], proto::GRE);
        assert_eq!(folded_sum(&[ip]), 0xffff);
    }

    #[test]
    fn tcp_data_offset_and_options() {
        let frame = Packet::new()
            .ipv4("10.0.0.1", "10.0.0.2")
            .tcp(1, 2)
            .tcp_options(&[2, 4, 0x05, 0xb4])
            .build();
        assert_eq!(frame[ETH_HLEN + IPV4_HLEN + 12] >> 4, 6);
        let forced = Packet::new()
            .ipv4("10.0.0.1", "10.0.0.2")
            .tcp(1, 2)
            .tcp_data_offset(15)
            .build();
        assert_eq!(forced[ETH_HLEN + IPV4_HLEN + 12] >> 4, 15);
        assert_eq!(forced.len(), ETH_HLEN + IPV4_HLEN + TCP_HLEN);
    }

    #[test]
    fn ipv6_ext_chain_links_next_headers_and_counts_payload_length() {
        let (frame, layers) = Packet::new()
            .ipv6("2001:db8::1", "2001:db8::2")
            .hop_by_hop()
            .routing()
            .ext_header(ExtHeader::DestOpts { len: 1 })
            .ipv6_fragment(0x1fff, true)
            .udp(1, 2)
            .payload(b"abc")
            .build_with_layers();
        let names: Vec<_> = layers.iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            [
                "ethernet",
                "ipv6",
                "hop-by-hop",
                "routing",
                "destination-options",
                "fragment",
                "udp",
                "payload"
            ]
        );
        let ip = &frame[ETH_HLEN..];
        assert_eq!(be16(ip, 4) as usize, 8 + 8 + 16 + 8 + 8 + 3);
        assert_eq!(ip[6], proto::HOPOPTS);
        let next_of = |name| frame[layer(&layers, name).start];
        assert_eq!(next_of("hop-by-hop"), proto::ROUTING);
        assert_eq!(next_of("routing"), proto::DSTOPTS);
        assert_eq!(next_of("destination-options"), proto::FRAGMENT);
        assert_eq!(next_of("fragment"), proto::UDP);
        assert_eq!(layer(&layers, "destination-options").len, 16);
        let frag = layer(&layers, "fragment").start;
        assert_eq!(be16(&frame, frag + 2), 0x1fff << 3 | 1);
    }

    #[test]
    fn vlan_tags_chain_ether_types() {
        let frame = Packet::new()
            .vlan_8021ad(100)
            .vlan_8021q(200)
            .ipv6("::1", "::2")
            .udp(1, 2)
            .build();
        assert_eq!(be16(&frame, 12), ETH_P_8021AD);
        assert_eq!(be16(&frame, 14), 100);
        assert_eq!(be16(&frame, 16), ETH_P_8021Q);
        assert_eq!(be16(&frame, 18), 200);
        assert_eq!(be16(&frame, 20), ETH_P_IPV6);
        assert_eq!(frame[22] >> 4, 6);
    }

    #[test]
    fn layers_are_contiguous_and_cover_the_frame() {
        let (frame, layers) = Packet::new()
            .vlan_8021q(1)
            .ipv4("10.0.0.1", "10.0.0.2")
            .tcp(1, 2)
            .payload(b"data")
            .pad_to(80)
            .build_with_layers();
        assert_eq!(frame.len(), 80);
        let mut at = 0;
        for l in &layers {
            assert_eq!(l.start, at, "{l:?}");
            at = l.end();
        }
        assert_eq!(at, frame.len());
        assert_eq!(layers.last().unwrap().name, "trailer");
    }

    #[test]
    fn truncate_keeps_length_fields() {
        let full = Packet::new()
            .ipv4("10.0.0.1", "10.0.0.2")
            .udp(1, 2)
            .payload(&[1; 30]);
        let cut = full.clone().truncate(40).build();
        assert_eq!(cut.len(), 40);
        assert_eq!(cut[..], full.build()[..40]);
        assert_eq!(be16(&cut, ETH_HLEN + 2), 20 + 8 + 30);
    }

    #[test]
    fn arp_request_is_a_non_ip_frame() {
        let frame = Packet::new().arp_request("10.0.0.1", "10.0.0.2").build();
        assert_eq!(be16(&frame, 12), ETH_P_ARP);
        assert_eq!(frame.len(), ETH_HLEN + 28);
        assert_eq!(frame[ETH_HLEN + 14..ETH_HLEN + 18], [10, 0, 0, 1]);
    }
}
