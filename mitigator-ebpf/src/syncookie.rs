//! SYN cookies answered from XDP, using the kernel's own cookie code.
//!
//! For a SYN to a protected port we look up the local listener
//! (`bpf_skc_lookup_tcp`) and have the kernel generate a cookie for it
//! (`bpf_tcp_gen_syncookie`). That call also marks the listener as having
//! sent cookies recently, so when the client's ACK arrives the kernel's
//! normal cookie check accepts it and creates the connection: no state is
//! kept for a SYN, and a spoofed SYN flood never reaches the listen queue.
//! The frame is turned into the SYN-ACK in place and sent back (XDP_TX).
//!
//! For an ACK to a protected port we check the cookie here too, so a flood
//! of forged ACKs is dropped before the stack; ACKs of existing connections
//! pass untouched.
//!
//! The SYN-ACK carries only an MSS option (as the kernel's own cookies do
//! without timestamps), so connections completed through a cookie run
//! without window scaling or SACK.

use core::{mem::size_of, ptr::write_unaligned};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, tcphdr},
    helpers::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie, bpf_tcp_gen_syncookie,
        bpf_xdp_adjust_tail,
    },
    programs::XdpContext,
};
use mitigator_common::{Reason, EVENT_SYN_NO_LISTENER};

use crate::{
    maps::event,
    parse::{frame_len, ptr_at, Addrs, Packet, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN},
};

const BPF_F_CURRENT_NETNS: u64 = u64::MAX;
const TCP_LISTEN: u32 = 10;
const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const TTL: u8 = 64;
/// Receive window advertised in the SYN-ACK (no scaling: see module docs).
const WINDOW: u16 = 65535;

/// A listening or connected socket for the packet's 4-tuple, released on drop.
struct Sock(*mut bpf_sock);

impl Drop for Sock {
    #[inline(always)]
    fn drop(&mut self) {
        unsafe { bpf_sk_release(self.0 as *mut _) };
    }
}

impl Sock {
    #[inline(always)]
    fn lookup(ctx: &XdpContext, pkt: &Packet) -> Option<Sock> {
        let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
        let sport = pkt.src_port.to_be();
        let dport = pkt.dst_port.to_be();
        let size = match &pkt.addrs {
            Addrs::V4 { src, dst } => {
                let t = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
                t.saddr = u32::from_ne_bytes(*src);
                t.daddr = u32::from_ne_bytes(*dst);
                t.sport = sport;
                t.dport = dport;
                size_of::<u32>() * 2 + size_of::<u16>() * 2
            }
            Addrs::V6 { src, dst } => {
                let t = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
                t.saddr = words(src);
                t.daddr = words(dst);
                t.sport = sport;
                t.dport = dport;
                size_of::<u32>() * 8 + size_of::<u16>() * 2
            }
        };
        let sk = unsafe {
            bpf_skc_lookup_tcp(
                ctx.ctx as *mut _,
                &mut tuple,
                size as u32,
                BPF_F_CURRENT_NETNS,
                0,
            )
        };
        if sk.is_null() {
            None
        } else {
            Some(Sock(sk))
        }
    }

    #[inline(always)]
    fn is_listener(&self) -> bool {
        unsafe { (*self.0).state == TCP_LISTEN }
    }
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The kernel requires `th_len == doff * 4` and the verifier constant
/// sizes, so each (IP header length, TCP header length) pair gets its own call.
#[inline(always)]
fn gen_cookie_sized<const IPL: usize, const N: usize>(
    ctx: &XdpContext,
    sk: &Sock,
    pkt: &Packet,
) -> i64 {
    let (Some(ip), Some(th)) = (
        ptr_at::<[u8; IPL]>(ctx, pkt.l3_off),
        ptr_at::<[u8; N]>(ctx, pkt.l4_off),
    ) else {
        return -1;
    };
    unsafe {
        bpf_tcp_gen_syncookie(
            sk.0 as *mut _,
            ip as *mut _,
            IPL as u32,
            th as *mut tcphdr,
            N as u32,
        )
    }
}

#[inline(always)]
fn gen_cookie_ip<const IPL: usize>(ctx: &XdpContext, sk: &Sock, pkt: &Packet) -> i64 {
    match pkt.tcp_doff {
        5 => gen_cookie_sized::<IPL, 20>(ctx, sk, pkt),
        6 => gen_cookie_sized::<IPL, 24>(ctx, sk, pkt),
        7 => gen_cookie_sized::<IPL, 28>(ctx, sk, pkt),
        8 => gen_cookie_sized::<IPL, 32>(ctx, sk, pkt),
        9 => gen_cookie_sized::<IPL, 36>(ctx, sk, pkt),
        10 => gen_cookie_sized::<IPL, 40>(ctx, sk, pkt),
        11 => gen_cookie_sized::<IPL, 44>(ctx, sk, pkt),
        12 => gen_cookie_sized::<IPL, 48>(ctx, sk, pkt),
        13 => gen_cookie_sized::<IPL, 52>(ctx, sk, pkt),
        14 => gen_cookie_sized::<IPL, 56>(ctx, sk, pkt),
        15 => gen_cookie_sized::<IPL, 60>(ctx, sk, pkt),
        _ => -1,
    }
}

#[inline(always)]
fn gen_cookie(ctx: &XdpContext, sk: &Sock, pkt: &Packet) -> i64 {
    match pkt.addrs {
        Addrs::V4 { .. } => gen_cookie_ip::<IPV4_HDR_LEN>(ctx, sk, pkt),
        Addrs::V6 { .. } => gen_cookie_ip::<IPV6_HDR_LEN>(ctx, sk, pkt),
    }
}

#[inline(always)]
fn check_cookie<const IPL: usize>(ctx: &XdpContext, sk: &Sock, pkt: &Packet) -> bool {
    let (Some(ip), Some(th)) = (
        ptr_at::<[u8; IPL]>(ctx, pkt.l3_off),
        ptr_at::<[u8; 20]>(ctx, pkt.l4_off),
    ) else {
        return false;
    };
    unsafe {
        bpf_tcp_check_syncookie(
            sk.0 as *mut _,
            ip as *mut _,
            IPL as u32,
            th as *mut tcphdr,
            20,
        ) == 0
    }
}

/// Answers a SYN with a cookie SYN-ACK. `None` when we leave the SYN to the
/// stack: no listener, IPv4 options or IPv6 extension headers, or the
/// kernel declined (cookies disabled by sysctl). In monitor mode every check
/// runs but the frame is left as it is.
#[inline(always)]
pub fn answer_syn(ctx: &XdpContext, pkt: &Packet, monitor: bool) -> Option<Reason> {
    let (v6, ip_len) = match pkt.addrs {
        Addrs::V4 { .. } => (false, IPV4_HDR_LEN),
        Addrs::V6 { .. } => (true, IPV6_HDR_LEN),
    };
    if pkt.l4_off != pkt.l3_off + ip_len {
        return None;
    }
    let Some(sk) = Sock::lookup(ctx, pkt) else {
        event(EVENT_SYN_NO_LISTENER);
        return None;
    };
    if !sk.is_listener() {
        return None;
    }
    let cookie = gen_cookie(ctx, &sk, pkt);
    drop(sk);
    if cookie < 0 {
        return None;
    }
    if monitor {
        return Some(Reason::TxSynCookie);
    }
    let mss = (cookie >> 32) as u16;
    let client_seq = {
        let th = ptr_at::<[u8; 20]>(ctx, pkt.l4_off)?;
        unsafe { u32::from_be_bytes([(*th)[4], (*th)[5], (*th)[6], (*th)[7]]) }
    };
    // Options: MSS only, if the client sent options at all.
    let tcp_len = if pkt.tcp_doff > 5 { 24 } else { 20 };
    let tcp = syn_ack_header(pkt, cookie as u32, client_seq.wrapping_add(1), tcp_len, mss);

    // Trim anything after the new TCP header (options we drop, SYN payload).
    let new_len = pkt.l4_off + tcp_len;
    let old_len = frame_len(ctx);
    if old_len > new_len {
        let delta = new_len as i32 - old_len as i32;
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return None;
        }
    }
    swap_macs(ctx)?;
    let sum = if v6 {
        write_ipv6(ctx, pkt, tcp_len as u16)?
    } else {
        write_ipv4(ctx, pkt, tcp_len as u16)?
    };
    let csum = checksum_fold(sum_words(&tcp, sum));
    let mut tcp = tcp;
    tcp[16] = (csum >> 8) as u8;
    tcp[17] = csum as u8;
    if tcp_len == 24 {
        let p = ptr_at::<[u8; 24]>(ctx, pkt.l4_off)? as *mut [u8; 24];
        unsafe { write_unaligned(p, tcp) };
    } else {
        let p = ptr_at::<[u8; 20]>(ctx, pkt.l4_off)? as *mut [u8; 20];
        let mut short = [0u8; 20];
        short.copy_from_slice(&tcp[..20]);
        unsafe { write_unaligned(p, short) };
    }
    Some(Reason::TxSynCookie)
}

/// The SYN-ACK's TCP header (checksum zero), 20 or 24 bytes used.
#[inline(always)]
fn syn_ack_header(pkt: &Packet, seq: u32, ack: u32, tcp_len: usize, mss: u16) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..2].copy_from_slice(&pkt.dst_port.to_be_bytes());
    h[2..4].copy_from_slice(&pkt.src_port.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = ((tcp_len / 4) as u8) << 4;
    h[13] = TCP_FLAG_SYN | TCP_FLAG_ACK;
    h[14..16].copy_from_slice(&WINDOW.to_be_bytes());
    if tcp_len == 24 {
        h[20] = 2; // MSS option: kind 2, length 4
        h[21] = 4;
        h[22..24].copy_from_slice(&mss.to_be_bytes());
    }
    h
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Option<()> {
    let eth = ptr_at::<[u8; 12]>(ctx, 0)? as *mut [u8; 12];
    unsafe {
        let old = *eth;
        let mut new = [0u8; 12];
        new[..6].copy_from_slice(&old[6..]);
        new[6..].copy_from_slice(&old[..6]);
        write_unaligned(eth, new);
    }
    Some(())
}

/// Rewrites the IPv4 header for the reply; returns the TCP pseudo-header sum.
#[inline(always)]
fn write_ipv4(ctx: &XdpContext, pkt: &Packet, tcp_len: u16) -> Option<u32> {
    let Addrs::V4 { src, dst } = pkt.addrs else {
        return None;
    };
    let mut h = [0u8; IPV4_HDR_LEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(IPV4_HDR_LEN as u16 + tcp_len).to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = TTL;
    h[9] = 6;
    h[12..16].copy_from_slice(&dst);
    h[16..20].copy_from_slice(&src);
    let csum = checksum_fold(sum_words(&h, 0));
    h[10] = (csum >> 8) as u8;
    h[11] = csum as u8;
    let p = ptr_at::<[u8; IPV4_HDR_LEN]>(ctx, pkt.l3_off)? as *mut [u8; IPV4_HDR_LEN];
    unsafe { write_unaligned(p, h) };
    Some(sum_words(&dst, sum_words(&src, 6 + tcp_len as u32)))
}

/// Rewrites the IPv6 header for the reply; returns the TCP pseudo-header sum.
#[inline(always)]
fn write_ipv6(ctx: &XdpContext, pkt: &Packet, tcp_len: u16) -> Option<u32> {
    let Addrs::V6 { src, dst } = pkt.addrs else {
        return None;
    };
    let mut h = [0u8; IPV6_HDR_LEN];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&tcp_len.to_be_bytes());
    h[6] = 6;
    h[7] = TTL;
    h[8..24].copy_from_slice(&dst);
    h[24..40].copy_from_slice(&src);
    let p = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, pkt.l3_off)? as *mut [u8; IPV6_HDR_LEN];
    unsafe { write_unaligned(p, h) };
    Some(sum_words(&dst, sum_words(&src, 6 + tcp_len as u32)))
}

/// One's-complement sum of big-endian 16-bit words (even length).
#[inline(always)]
fn sum_words<const N: usize>(bytes: &[u8; N], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    acc
}

#[inline(always)]
fn checksum_fold(acc: u32) -> u16 {
    let a = (acc & 0xffff) + (acc >> 16);
    let a = (a & 0xffff) + (a >> 16);
    !(a as u16)
}

/// Checks an ACK to a protected port. `None`: not ours to judge (an
/// existing connection, or not a plain ACK) — continue the normal path.
#[inline(always)]
pub fn check_ack(ctx: &XdpContext, pkt: &Packet) -> Option<Reason> {
    if pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST) != 0 || pkt.tcp_flags & TCP_FLAG_ACK == 0 {
        return None;
    }
    let Some(sk) = Sock::lookup(ctx, pkt) else {
        // No connection and no listener: the stack would only answer RST.
        return Some(Reason::DropBadCookieAck);
    };
    if !sk.is_listener() {
        return None;
    }
    // The kernel's check reads only addresses, ports and sequence numbers,
    // so IPv4 options and IPv6 extension headers do not matter: the fixed
    // header and the real TCP offset are enough.
    let ok = match pkt.addrs {
        Addrs::V4 { .. } => check_cookie::<IPV4_HDR_LEN>(ctx, &sk, pkt),
        Addrs::V6 { .. } => check_cookie::<IPV6_HDR_LEN>(ctx, &sk, pkt),
    };
    Some(if ok {
        Reason::PassCookieAck
    } else {
        Reason::DropBadCookieAck
    })
}
