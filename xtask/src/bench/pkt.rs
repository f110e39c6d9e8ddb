//! The bench's frames: Ethernet (optionally 802.1Q-tagged), IPv4 or IPv6
//! (optionally with extension headers), TCP or UDP, every length and
//! checksum filled in, padded to at least 64 bytes.
//!
//! The tests crate has a fuller builder (tests/src/packet.rs); the bench
//! keeps this small one so that `cargo xtask` never depends on test code.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const MIN_FRAME: usize = 64;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, Debug)]
pub enum L3 {
    V4(Ipv4Addr, Ipv4Addr),
    /// Addresses and the number of 8-byte extension headers (hop-by-hop,
    /// then destination options) before the L4 header.
    V6(Ipv6Addr, Ipv6Addr, usize),
}

#[derive(Clone, Debug)]
pub enum L4 {
    Udp {
        sport: u16,
        dport: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        options: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub l3: L3,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 identification (default 1).
    pub ip_id: u16,
    /// TCP urgent pointer (default 0; no URG flag is ever set).
    pub tcp_urg: u16,
}

/// The options of a Linux SYN: MSS 1460, SACK permitted, timestamps, NOP,
/// window scale 7 (20 bytes, so the TCP header is 40 bytes).
pub fn linux_syn_options() -> Vec<u8> {
    vec![
        2, 4, 0x05, 0xb4, // MSS
        4, 2, // SACK permitted
        8, 10, 0, 0, 0, 1, 0, 0, 0, 0, // timestamps
        1, // NOP
        3, 3, 7, // window scale
    ]
}

impl Frame {
    pub fn new(l3: L3, l4: L4) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            vlan: None,
            l3,
            l4,
            payload: Vec::new(),
            ip_id: 1,
            tcp_urg: 0,
        }
    }

    /// Ready for the spoofing generator (elf.rs): identification and urgent
    /// pointer set to the complement of the source address's low word.
    pub fn spoofable(mut self) -> Self {
        if let L3::V4(src, _) = self.l3 {
            let o = src.octets();
            let w = !u16::from_be_bytes([o[2], o[3]]);
            self.ip_id = w;
            self.tcp_urg = w;
        }
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let l4_header = self.l4_header();
        let seg_len = l4_header.len() + self.payload.len();
        let mut l4 = [l4_header, self.payload.clone()].concat();
        let (proto, csum_off) = match self.l4 {
            L4::Udp { .. } => (17u8, 6),
            L4::Tcp { .. } => (6u8, 16),
        };
        let pseudo = match self.l3 {
            L3::V4(s, d) => {
                let mut p = Vec::new();
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(&[0, proto]);
                p.extend_from_slice(&(seg_len as u16).to_be_bytes());
                p
            }
            L3::V6(s, d, _) => {
                let mut p = Vec::new();
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(&(seg_len as u32).to_be_bytes());
                p.extend_from_slice(&[0, 0, 0, proto]);
                p
            }
        };
        let mut sum = checksum(&[pseudo, l4.clone()].concat());
        if proto == 17 && sum == 0 {
            sum = 0xffff;
        }
        l4[csum_off..csum_off + 2].copy_from_slice(&sum.to_be_bytes());

        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(id) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
        }
        match self.l3 {
            L3::V4(s, d) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&((20 + seg_len) as u16).to_be_bytes());
                h.extend_from_slice(&self.ip_id.to_be_bytes());
                h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                let c = checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            L3::V6(s, d, ext) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                // Hop-by-hop (0), then destination options (60), then L4.
                let kinds: Vec<u8> = (0..ext).map(|i| if i == 0 { 0 } else { 60 }).collect();
                let first = kinds.first().copied().unwrap_or(proto);
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&((ext * 8 + seg_len) as u16).to_be_bytes());
                h.push(first);
                h.push(64);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                f.extend_from_slice(&h);
                for i in 0..ext {
                    let next = kinds.get(i + 1).copied().unwrap_or(proto);
                    // next header, length 0 (8 bytes), PadN option of 4 bytes.
                    f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
        }
        f.extend_from_slice(&l4);
        if f.len() < MIN_FRAME {
            f.resize(MIN_FRAME, 0);
        }
        f
    }

    fn l4_header(&self) -> Vec<u8> {
        match &self.l4 {
            L4::Udp { sport, dport } => {
                let len = (8 + self.payload.len()) as u16;
                [
                    sport.to_be_bytes(),
                    dport.to_be_bytes(),
                    len.to_be_bytes(),
                    [0, 0],
                ]
                .concat()
            }
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                options,
            } => {
                let doff = (20 + options.len()) / 4;
                let mut h = Vec::with_capacity(20 + options.len());
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&seq.to_be_bytes());
                h.extend_from_slice(&ack.to_be_bytes());
                h.push((doff as u8) << 4);
                h.push(*flags);
                h.extend_from_slice(&64240u16.to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&self.tcp_urg.to_be_bytes());
                h.extend_from_slice(options);
                h
            }
        }
    }

    /// UDP with enough payload that the frame is exactly 64 bytes (or just
    /// the headers when they are longer).
    pub fn udp64(l3: L3, sport: u16, dport: u16, vlan: Option<u16>) -> Self {
        let mut f = Frame::new(l3, L4::Udp { sport, dport });
        f.vlan = vlan;
        let headers = 14 + f.vlan.map_or(0, |_| 4) + l3_len(&l3) + 8;
        f.payload = vec![0x5a; MIN_FRAME.saturating_sub(headers)];
        f
    }
}

fn l3_len(l3: &L3) -> usize {
    match l3 {
        L3::V4(..) => 20,
        L3::V6(_, _, ext) => 40 + 8 * ext,
    }
}

/// What the spoofing generator does, in userspace: source low word `w`,
/// identification and urgent pointer `!w` (checksums stay valid for a
/// frame built with [`Frame::spoofable`]).
pub fn spoof(frame: &mut [u8], w: u16) {
    if frame.len() >= 54 {
        frame[28..30].copy_from_slice(&w.to_be_bytes());
        frame[18..20].copy_from_slice(&(!w).to_be_bytes());
        frame[52..54].copy_from_slice(&(!w).to_be_bytes());
    }
}

/// RFC 1071 Internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp64_is_64_bytes_with_valid_checksums() {
        let l3 = L3::V4("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let f = Frame::udp64(l3, 1, 2, None).build();
        assert_eq!(f.len(), 64);
        assert_eq!(checksum(&f[14..34]), 0);
        let v = Frame::udp64(l3, 1, 2, Some(7)).build();
        assert_eq!(v.len(), 64);
        assert_eq!(v[12..16], [0x81, 0x00, 0, 7]);
        assert_eq!(checksum(&v[18..38]), 0);
    }

    /// What the spoofing generator does to a frame must keep both checksums.
    #[test]
    fn spoofed_frames_keep_valid_checksums() {
        let f = Frame::new(
            L3::V4("10.99.0.5".parse().unwrap(), "10.201.0.2".parse().unwrap()),
            L4::Tcp {
                sport: 1,
                dport: 80,
                flags: TCP_SYN,
                seq: 1,
                ack: 0,
                options: linux_syn_options(),
            },
        )
        .spoofable()
        .build();
        for r in [0u16, 1, 0x1234, 0xffff] {
            let mut g = f.clone();
            g[28..30].copy_from_slice(&r.to_le_bytes());
            g[18..20].copy_from_slice(&(!r).to_le_bytes());
            g[52..54].copy_from_slice(&(!r).to_le_bytes());
            assert_eq!(checksum(&g[14..34]), 0, "IP header");
            let mut pseudo = g[26..34].to_vec();
            pseudo.extend_from_slice(&[0, 6, 0, (g.len() - 34) as u8]);
            pseudo.extend_from_slice(&g[34..]);
            assert_eq!(checksum(&pseudo), 0, "TCP");
        }
    }

    #[test]
    fn v6_ext_chain() {
        let f = Frame::udp64(
            L3::V6(
                "2001:db8::1".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
                2,
            ),
            1,
            2,
            None,
        )
        .build();
        assert_eq!(f[12..14], [0x86, 0xdd]);
        assert_eq!(f[14 + 6], 0); // hop-by-hop
        assert_eq!(f[14 + 40], 60); // then destination options
        assert_eq!(f[14 + 48], 17); // then UDP
    }
}
