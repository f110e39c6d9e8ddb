//! Header parsing. Each step checks its own bounds against `data_end`
//! before reading, so a truncated or malformed frame ends in a defined
//! verdict (`Parsed::Bad`), never in a verifier-rejected or aborted read.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use mitigator_common::{Class, Ipv4Addr, Ipv6Addr, Reason};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// How many VLAN tags we look through (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;
/// How many IPv6 extension headers we walk before giving up on the packet.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// No real header stack reaches this far into a frame; the bound also lets
/// the verifier see that every variable offset stays small.
const MAX_HEADER_OFFSET: usize = 4096;

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

pub enum Addrs {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

/// What the decision steps need to know about a parsed packet. Ports are
/// host order; offsets are from the start of the frame.
pub struct Packet {
    pub addrs: Addrs,
    pub class: Class,
    pub proto: u8,
    pub ttl: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// TCP data offset in 32-bit words (5..=15), 0 when not TCP.
    pub tcp_doff: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// L4 facts, when the packet has an L4 header we read.
struct L4 {
    class: Class,
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
    tcp_doff: u8,
    icmp_type: u8,
    icmp_code: u8,
}

impl L4 {
    const NONE: L4 = L4 {
        class: Class::Other,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        tcp_doff: 0,
        icmp_type: 0,
        icmp_code: 0,
    };
}

#[inline(always)]
fn packet(addrs: Addrs, proto: u8, ttl: u8, l3_off: usize, l4_off: usize, l4: L4) -> Parsed {
    Parsed::Ip(Packet {
        addrs,
        class: l4.class,
        proto,
        ttl,
        l3_off,
        l4_off,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        tcp_flags: l4.tcp_flags,
        tcp_doff: l4.tcp_doff,
        icmp_type: l4.icmp_type,
        icmp_code: l4.icmp_code,
    })
}

pub enum Parsed {
    Ip(Packet),
    NonIp,
    Bad(Reason, Class),
}

const MALFORMED: Parsed = Parsed::Bad(Reason::DropMalformed, Class::Other);

/// A pointer to a `T` at `off` bytes into the frame, if the whole `T` fits.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off > MAX_HEADER_OFFSET || start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return MALFORMED;
    };
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut off = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, off) else {
            return MALFORMED;
        };
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        off += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, off),
        ETH_P_IPV6 => parse_ipv6(ctx, off),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, off) else {
        return MALFORMED;
    };
    let (vihl, tot_len, frags, proto, ttl, src, dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).ttl,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || off + tot_len > frame_len(ctx) {
        return MALFORMED;
    }
    let addrs = Addrs::V4 { src, dst };
    let l4_off = off + ihl;
    // A non-first fragment carries no L4 header: classify it as such.
    if frags & 0x1fff != 0 {
        let l4 = L4 {
            class: Class::Fragment,
            ..L4::NONE
        };
        return packet(addrs, proto, ttl, off, l4_off, l4);
    }
    let icmp = proto == IPPROTO_ICMP;
    match parse_l4(ctx, l4_off, off + tot_len, proto, icmp) {
        Some(l4) => packet(addrs, proto, ttl, off, l4_off, l4),
        None => MALFORMED,
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, off) else {
        return MALFORMED;
    };
    let (version, payload_len, mut next, hop_limit, src, dst) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
            (*ip).hop_limit,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    if version != 6 || off + Ipv6Hdr::LEN + payload_len > frame_len(ctx) {
        return MALFORMED;
    }
    let addrs = Addrs::V6 { src, dst };
    let l3_off = off;
    let end = off + Ipv6Hdr::LEN + payload_len;
    let mut off = off + Ipv6Hdr::LEN;
    let mut non_first_fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(h) = ptr_at::<[u8; 2]>(ctx, off) else {
                    return MALFORMED;
                };
                let (nh, len) = unsafe { ((*h)[0], (*h)[1]) };
                next = nh;
                off += (len as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Some(h) = ptr_at::<[u8; 8]>(ctx, off) else {
                    return MALFORMED;
                };
                let (nh, frag) = unsafe { ((*h)[0], u16::from_be_bytes([(*h)[2], (*h)[3]])) };
                next = nh;
                non_first_fragment = frag & 0xfff8 != 0;
                off += 8;
            }
            _ => break,
        }
    }
    if is_ipv6_ext_header(next) {
        return Parsed::Bad(Reason::DropExtChain, Class::Other);
    }
    // Extension headers that run past the payload length read padding.
    if off > end {
        return MALFORMED;
    }
    if non_first_fragment {
        let l4 = L4 {
            class: Class::Fragment,
            ..L4::NONE
        };
        return packet(addrs, next, hop_limit, l3_off, off, l4);
    }
    let icmp = next == IPPROTO_ICMPV6;
    match parse_l4(ctx, off, end, next, icmp) {
        Some(l4) => packet(addrs, next, hop_limit, l3_off, off, l4),
        None => MALFORMED,
    }
}

/// `v`, with LLVM unable to see where it came from. The caller already
/// checked `end <= frame length`; without this LLVM uses that to delete a
/// later `ptr_at` bounds check as redundant, which the verifier rejects.
#[inline(always)]
fn opaque(mut v: usize) -> usize {
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) v, options(nomem, nostack)) };
    v
}

#[inline(always)]
fn is_ipv6_ext_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
    )
}

/// The L4 facts at `off`, or `None` if the header is truncated or
/// malformed. Protocols we do not inspect are `Class::Other`. `end` is
/// where the IP datagram ends (by its length field): bytes after it are
/// Ethernet padding, never an L4 header.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, off: usize, end: usize, proto: u8, icmp: bool) -> Option<L4> {
    let end = opaque(end);
    if icmp {
        if off + 4 > end {
            return None;
        }
        let h = ptr_at::<[u8; 4]>(ctx, off)?;
        let (icmp_type, icmp_code) = unsafe { ((*h)[0], (*h)[1]) };
        return Some(L4 {
            class: Class::Icmp,
            icmp_type,
            icmp_code,
            ..L4::NONE
        });
    }
    match proto {
        IPPROTO_TCP => {
            let h = ptr_at::<[u8; 20]>(ctx, off)?;
            let (src_port, dst_port, doff, flags) = unsafe {
                (
                    u16::from_be_bytes([(*h)[0], (*h)[1]]),
                    u16::from_be_bytes([(*h)[2], (*h)[3]]),
                    (*h)[12] >> 4,
                    (*h)[13],
                )
            };
            if doff < 5 || off + doff as usize * 4 > end {
                return None;
            }
            let class = if flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0 {
                Class::TcpSyn
            } else {
                Class::Tcp
            };
            Some(L4 {
                class,
                src_port,
                dst_port,
                tcp_flags: flags,
                tcp_doff: doff,
                ..L4::NONE
            })
        }
        IPPROTO_UDP => {
            if off + 8 > end {
                return None;
            }
            let h = ptr_at::<[u8; 8]>(ctx, off)?;
            let (src_port, dst_port) = unsafe {
                (
                    u16::from_be_bytes([(*h)[0], (*h)[1]]),
                    u16::from_be_bytes([(*h)[2], (*h)[3]]),
                )
            };
            Some(L4 {
                class: Class::Udp,
                src_port,
                dst_port,
                ..L4::NONE
            })
        }
        _ => Some(L4::NONE),
    }
}
