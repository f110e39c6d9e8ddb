//! Deterministic synthetic blocklists shaped like real ones: mostly host
//! routes and /24s (IPv4) or /128s, /64s and /48s (IPv6), at random
//! addresses outside the ranges the bench's own traffic uses (10.0.0.0/8,
//! 2001:db8::/32), plus the one prefix the "blocked" source lives in.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

/// The blocked IPv4 source and the prefix that covers it.
pub const BLOCKED_V4: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 7);
pub const BLOCKED_V4_NET: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 66, 0, 0), 24);
pub const BLOCKED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 7);
pub const BLOCKED_V6_NET: (Ipv6Addr, u32) = (Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 0), 48);

#[derive(Clone, Copy, Debug)]
pub struct V4Prefix {
    pub addr: [u8; 4],
    pub len: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct V6Prefix {
    pub addr: [u8; 16],
    pub len: u32,
}

/// splitmix64: small, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn mask_v4(addr: u32, len: u32) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - len))
    }
}

/// `n` distinct IPv4 prefixes (the last one covers `BLOCKED_V4`).
pub fn v4(n: usize, seed: u64) -> Vec<V4Prefix> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    while out.len() + 1 < n {
        let r = rng.next();
        let addr = (r >> 32) as u32;
        let first = addr >> 24;
        if first == 0 || first == 10 || first == 127 || first >= 224 {
            continue;
        }
        let len = match r % 100 {
            0..=59 => 32,
            60..=84 => 24,
            _ => 16 + (r >> 8) as u32 % 8,
        };
        let p = V4Prefix {
            addr: mask_v4(addr, len).to_be_bytes(),
            len,
        };
        if seen.insert((p.addr, p.len)) {
            out.push(p);
        }
    }
    out.push(V4Prefix {
        addr: BLOCKED_V4_NET.0.octets(),
        len: BLOCKED_V4_NET.1,
    });
    out
}

/// `n` distinct IPv6 prefixes in 2000::/3 (the last one covers `BLOCKED_V6`).
pub fn v6(n: usize, seed: u64) -> Vec<V6Prefix> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    while out.len() + 1 < n {
        let hi = rng.next();
        let lo = rng.next();
        let mut a = ((hi as u128) << 64 | lo as u128) & !(0xe000u128 << 112);
        a |= 0x2000u128 << 112;
        if (a >> 96) as u32 == 0x2001_0db8 {
            continue;
        }
        let len = match lo % 100 {
            0..=49 => 128,
            50..=79 => 64,
            _ => 48,
        };
        let masked = if len == 128 {
            a
        } else {
            a & (u128::MAX << (128 - len))
        };
        let p = V6Prefix {
            addr: masked.to_be_bytes(),
            len,
        };
        if seen.insert((p.addr, p.len)) {
            out.push(p);
        }
    }
    out.push(V6Prefix {
        addr: BLOCKED_V6_NET.0.octets(),
        len: BLOCKED_V6_NET.1,
    });
    out
}

/// The prefixes as text, one per line (for `mitigator block --from-file`).
pub fn v4_text(prefixes: &[V4Prefix]) -> String {
    let mut s = String::with_capacity(prefixes.len() * 18);
    for p in prefixes {
        s.push_str(&format!("{}/{}\n", Ipv4Addr::from(p.addr), p.len));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_prefixes_avoid_the_bench_range_and_end_with_the_blocked_net() {
        let p = v4(10_000, 1);
        assert_eq!(p.len(), 10_000);
        let distinct: HashSet<_> = p.iter().map(|p| (p.addr, p.len)).collect();
        assert_eq!(distinct.len(), 10_000);
        assert!(p[..p.len() - 1].iter().all(|p| p.addr[0] != 10));
        assert_eq!(p.last().unwrap().addr, [10, 66, 0, 0]);
        assert!(p
            .iter()
            .all(|p| mask_v4(u32::from_be_bytes(p.addr), p.len) == u32::from_be_bytes(p.addr)));
    }

    #[test]
    fn v6_prefixes_avoid_documentation_range() {
        let p = v6(1000, 2);
        assert!(p[..p.len() - 1]
            .iter()
            .all(|p| p.addr[..4] != [0x20, 0x01, 0x0d, 0xb8]));
        assert!(p[..p.len() - 1].iter().all(|p| p.addr[0] & 0xe0 == 0x20));
    }
}
