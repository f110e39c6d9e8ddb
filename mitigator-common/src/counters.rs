//! Verdict reasons and traffic classes.
//!
//! The XDP program leaves through one exit that adds the packet to the
//! per-CPU `COUNTERS` array at `counter_index(reason, class)`. One lookup per
//! packet gives userspace both views: why packets were passed or dropped, and
//! how much traffic each attack class carries.

use crate::assert_layout;

/// What the program decided for a packet, and why.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Parsed, matched nothing, passed.
    Pass = 0,
    /// Source matched the allowlist.
    PassAllowlist = 1,
    /// Not IPv4/IPv6 (ARP, LLDP, more than two VLAN tags, ...).
    PassNonIp = 2,
    /// Source matched the blocklist.
    DropBlocklist = 3,
    /// Truncated or malformed headers (bad IHL, bad lengths, short L4 header).
    DropMalformed = 4,
    /// IPv6 extension-header chain longer than the program walks.
    DropExtChain = 5,
    /// Source over its SYN rate.
    DropSynRate = 6,
    /// Source over its UDP rate.
    DropUdpRate = 7,
    /// Source over its ICMP rate.
    DropIcmpRate = 8,
    /// Source over its fragment rate (fragment policy `rate-limit`).
    DropFragRate = 9,
    /// Non-first fragment under fragment policy `drop`.
    DropFragment = 10,
    /// UDP from an amplification source port to a non-service port.
    DropAmplification = 11,
    /// UDP destination port over its aggregate cap.
    DropUdpPortCap = 12,
    /// ICMP fragmentation-needed / packet-too-big over its own budget.
    DropPmtuRate = 13,
    /// SYN to a protected port answered with a SYN cookie from XDP.
    TxSynCookie = 14,
    /// ACK carrying a valid SYN cookie, passed to the stack to complete the handshake.
    PassCookieAck = 15,
    /// ACK to a protected listener without a valid cookie (or connection).
    DropBadCookieAck = 16,
}

impl Reason {
    pub const COUNT: usize = 17;
    pub const ALL: [Reason; Self::COUNT] = [
        Reason::Pass,
        Reason::PassAllowlist,
        Reason::PassNonIp,
        Reason::DropBlocklist,
        Reason::DropMalformed,
        Reason::DropExtChain,
        Reason::DropSynRate,
        Reason::DropUdpRate,
        Reason::DropIcmpRate,
        Reason::DropFragRate,
        Reason::DropFragment,
        Reason::DropAmplification,
        Reason::DropUdpPortCap,
        Reason::DropPmtuRate,
        Reason::TxSynCookie,
        Reason::PassCookieAck,
        Reason::DropBadCookieAck,
    ];

    /// The XDP action this reason stands for (before monitor mode).
    pub const fn action(self) -> Action {
        match self {
            Reason::Pass | Reason::PassAllowlist | Reason::PassNonIp | Reason::PassCookieAck => {
                Action::Pass
            }
            Reason::TxSynCookie => Action::Tx,
            Reason::DropBlocklist
            | Reason::DropMalformed
            | Reason::DropExtChain
            | Reason::DropSynRate
            | Reason::DropUdpRate
            | Reason::DropIcmpRate
            | Reason::DropFragRate
            | Reason::DropFragment
            | Reason::DropAmplification
            | Reason::DropUdpPortCap
            | Reason::DropPmtuRate
            | Reason::DropBadCookieAck => Action::Drop,
        }
    }

    /// Stable snake_case name used in CLI output, JSON and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Pass => "pass",
            Reason::PassAllowlist => "pass_allowlist",
            Reason::PassNonIp => "pass_non_ip",
            Reason::DropBlocklist => "drop_blocklist",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropExtChain => "drop_ipv6_ext_chain",
            Reason::DropSynRate => "drop_syn_rate",
            Reason::DropUdpRate => "drop_udp_rate",
            Reason::DropIcmpRate => "drop_icmp_rate",
            Reason::DropFragRate => "drop_fragment_rate",
            Reason::DropFragment => "drop_fragment",
            Reason::DropAmplification => "drop_amplification",
            Reason::DropUdpPortCap => "drop_udp_port_cap",
            Reason::DropPmtuRate => "drop_pmtu_rate",
            Reason::TxSynCookie => "tx_syn_cookie",
            Reason::PassCookieAck => "pass_cookie_ack",
            Reason::DropBadCookieAck => "drop_bad_cookie_ack",
        }
    }

    pub fn from_u32(v: u32) -> Option<Reason> {
        Self::ALL.get(v as usize).copied()
    }
}

/// The attack class a packet belongs to, as far as it was parsed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Non-IP, unparsed, or an L4 protocol we do not classify.
    Other = 0,
    TcpSyn = 1,
    /// TCP segments without SYN (or SYN+ACK).
    Tcp = 2,
    Udp = 3,
    Icmp = 4,
    /// Non-first IP fragments (no L4 header).
    Fragment = 5,
}

impl Class {
    pub const COUNT: usize = 6;
    pub const ALL: [Class; Self::COUNT] = [
        Class::Other,
        Class::TcpSyn,
        Class::Tcp,
        Class::Udp,
        Class::Icmp,
        Class::Fragment,
    ];

    pub fn from_u32(v: u32) -> Option<Class> {
        Self::ALL.get(v as usize).copied()
    }

    pub const fn name(self) -> &'static str {
        match self {
            Class::Other => "other",
            Class::TcpSyn => "tcp_syn",
            Class::Tcp => "tcp",
            Class::Udp => "udp",
            Class::Icmp => "icmp",
            Class::Fragment => "fragment",
        }
    }
}

/// What happens to the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// Sent back out of the receiving interface (SYN cookies).
    Tx,
}

/// Number of entries in the `COUNTERS` per-CPU array.
pub const COUNTER_ENTRIES: u32 = (Reason::COUNT * Class::COUNT) as u32;

/// Index of the (reason, class) cell in `COUNTERS`.
#[inline(always)]
pub const fn counter_index(reason: Reason, class: Class) -> u32 {
    reason as u32 * Class::COUNT as u32 + class as u32
}

/// One counter cell: packets and bytes (frame length as seen by XDP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
assert_layout!(Counter, 16, 8);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indices_are_dense_and_unique() {
        let mut seen = [false; COUNTER_ENTRIES as usize];
        for r in Reason::ALL {
            for c in Class::ALL {
                let i = counter_index(r, c) as usize;
                assert!(!seen[i], "duplicate index {i}");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn all_lists_match_discriminants() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn reasons_round_trip_through_u32() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_u32(r as u32), Some(r));
        }
        assert_eq!(Reason::from_u32(Reason::COUNT as u32), None);
    }

    #[test]
    fn drop_reasons_are_named_drop() {
        for r in Reason::ALL {
            assert_eq!(
                r.action() == Action::Drop,
                r.name().starts_with("drop_"),
                "{r:?}"
            );
        }
    }
}
