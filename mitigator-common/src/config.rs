//! Run-time configuration the daemon writes into the single-entry `CONFIG`
//! array; the XDP program reads it on every packet, so a change takes effect
//! without reloading the program.

use crate::assert_layout;

/// Count every decision but let every packet pass (dry run).
pub const FLAG_MONITOR: u32 = 1 << 0;
/// Answer SYNs to protected TCP ports with SYN cookies from XDP.
pub const FLAG_SYN_COOKIES: u32 = 1 << 1;
/// Drop UDP from amplification source ports unless sent to a service port.
pub const FLAG_AMP_DROP: u32 = 1 << 2;
/// Per-source token buckets for SYN, UDP and ICMP (and fragments).
pub const FLAG_RATE_LIMIT: u32 = 1 << 3;
/// Per-destination-port aggregate cap for UDP.
pub const FLAG_PORT_CAP: u32 = 1 << 4;
/// Copy a sample of packet headers to the ring buffer.
pub const FLAG_SAMPLE: u32 = 1 << 5;

/// What to do with non-first IP fragments.
pub const FRAG_PASS: u32 = 0;
pub const FRAG_RATE_LIMIT: u32 = 1;
pub const FRAG_DROP: u32 = 2;

/// A rate limit as GCRA parameters, precomputed by the daemon so the
/// program needs no division: one packet costs `interval_ns` of credit and
/// up to `tolerance_ns` of credit may be borrowed (the burst).
/// `interval_ns == 0` means no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Gcra {
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}
assert_layout!(Gcra, 16, 8);

impl Gcra {
    /// `rate` packets per second with bursts of up to `burst` packets.
    pub const fn per_second(rate: u32, burst: u32) -> Self {
        if rate == 0 {
            return Self {
                interval_ns: 0,
                tolerance_ns: 0,
            };
        }
        let interval_ns = 1_000_000_000 / rate as u64;
        let burst = if burst == 0 { 1 } else { burst };
        Self {
            interval_ns: if interval_ns == 0 { 1 } else { interval_ns },
            tolerance_ns: interval_ns * (burst as u64 - 1),
        }
    }

    pub const fn is_off(&self) -> bool {
        self.interval_ns == 0
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Config {
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `FRAG_*` policy for non-first fragments.
    pub frag_policy: u32,
    /// Per-source limits (with `FLAG_RATE_LIMIT`).
    pub syn: Gcra,
    pub udp: Gcra,
    pub icmp: Gcra,
    /// Per-source limit for fragments (with `FRAG_RATE_LIMIT`).
    pub frag: Gcra,
    /// Aggregate budget for ICMP fragmentation-needed / packet-too-big, kept
    /// apart from the ICMP limit so path-MTU discovery never breaks.
    pub pmtu: Gcra,
    /// Aggregate cap per UDP destination port (with `FLAG_PORT_CAP`).
    pub udp_port: Gcra,
    /// Sample one packet in `sample_every` (with `FLAG_SAMPLE`).
    pub sample_every: u32,
    /// Hard cap on samples per second.
    pub sample_max_per_sec: u32,
}
assert_layout!(Config, 112, 8);

impl Config {
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// Per-port flags in the `PORTS` array (index = port number).
/// TCP port protected by SYN cookies.
pub const PORT_TCP_SYN_COOKIES: u32 = 1 << 0;
/// UDP service port: replies from amplification ports to it are legitimate.
pub const PORT_UDP_SERVICE: u32 = 1 << 1;
/// UDP source port of a well-known amplification vector.
pub const PORT_UDP_AMP_SOURCE: u32 = 1 << 2;

/// Default amplification source ports: chargen, DNS, portmap, NTP, NetBIOS,
/// SNMP, CLDAP, SSDP, WS-Discovery, mDNS, memcached, and a few more common
/// reflectors (QOTD, RIPv1, Apple Remote Desktop, Ubiquiti discovery).
pub const DEFAULT_AMP_PORTS: [u16; 15] = [
    17, 19, 53, 111, 123, 137, 161, 389, 520, 1900, 3283, 3702, 5353, 10001, 11211,
];

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Gcra {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_from_rate_and_burst() {
        assert!(Gcra::per_second(0, 10).is_off());
        let g = Gcra::per_second(100, 20);
        assert_eq!(g.interval_ns, 10_000_000);
        assert_eq!(g.tolerance_ns, 190_000_000);
        let g = Gcra::per_second(1, 0);
        assert_eq!(
            g,
            Gcra {
                interval_ns: 1_000_000_000,
                tolerance_ns: 0
            }
        );
        // Faster than 1 packet/ns still costs something.
        assert_eq!(Gcra::per_second(u32::MAX, 1).interval_ns, 1);
    }
}
