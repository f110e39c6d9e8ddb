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

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

pub enum Addrs {
    V4 { src: Ipv4Addr },
    V6 { src: Ipv6Addr },
}

pub struct Packet {
    pub addrs: Addrs,
    pub class: Class,
}

pub enum Parsed {
    Ip(Packet),
    NonIp,
    Bad(Reason, Class),
}

const MALFORMED: Parsed = Parsed::Bad(Reason::DropMalformed, Class::Other);

/// A pointer to a `T` at `off` bytes into the frame, if the whole `T` fits.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off > MAX_HEADER_OFFSET || start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
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
    let (vihl, tot_len, frags, proto, src) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).src_addr,
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || off + tot_len > frame_len(ctx) {
        return MALFORMED;
    }
    let addrs = Addrs::V4 { src };
    // A non-first fragment carries no L4 header: classify it as such.
    if frags & 0x1fff != 0 {
        return Parsed::Ip(Packet { addrs, class: Class::Fragment });
    }
    let icmp = proto == IPPROTO_ICMP;
    match classify_l4(ctx, off + ihl, proto, icmp) {
        Some(class) => Parsed::Ip(Packet { addrs, class }),
        None => MALFORMED,
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, off) else {
        return MALFORMED;
    };
    let (version, payload_len, mut next, src) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
            (*ip).src_addr,
        )
    };
    if version != 6 || off + Ipv6Hdr::LEN + payload_len > frame_len(ctx) {
        return MALFORMED;
    }
    let addrs = Addrs::V6 { src };
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
    if non_first_fragment {
        return Parsed::Ip(Packet { addrs, class: Class::Fragment });
    }
    let icmp = next == IPPROTO_ICMPV6;
    match classify_l4(ctx, off, next, icmp) {
        Some(class) => Parsed::Ip(Packet { addrs, class }),
        None => MALFORMED,
    }
}

#[inline(always)]
fn is_ipv6_ext_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
    )
}

/// The class of the L4 header at `off`, or `None` if it is truncated or
/// malformed. Protocols we do not inspect are `Class::Other`.
#[inline(always)]
fn classify_l4(ctx: &XdpContext, off: usize, proto: u8, icmp: bool) -> Option<Class> {
    if icmp {
        ptr_at::<[u8; 4]>(ctx, off)?;
        return Some(Class::Icmp);
    }
    match proto {
        IPPROTO_TCP => {
            // Bytes 12..14 of the TCP header: data offset and flags.
            let h = ptr_at::<[u8; 20]>(ctx, off)?;
            let (doff, flags) = unsafe { (((*h)[12] >> 4) as usize * 4, (*h)[13]) };
            if doff < 20 || off + doff > frame_len(ctx) {
                return None;
            }
            if flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0 {
                Some(Class::TcpSyn)
            } else {
                Some(Class::Tcp)
            }
        }
        IPPROTO_UDP => {
            ptr_at::<[u8; 8]>(ctx, off)?;
            Some(Class::Udp)
        }
        _ => Some(Class::Other),
    }
}
