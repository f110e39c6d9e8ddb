//! mitigator's XDP program: parse, then the cheapest verdict first, and one
//! exit that counts every packet by (reason, class).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod limits;
mod maps;
mod parse;
mod sample;
mod syncookie;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use mitigator_common::{
    counter_index, Action, Class, Config, Reason, AGGREGATE_PMTU, FLAG_AMP_DROP, FLAG_MONITOR,
    FLAG_PORT_CAP, FLAG_RATE_LIMIT, FLAG_SYN_COOKIES, FRAG_DROP, FRAG_RATE_LIMIT,
    PORT_TCP_SYN_COOKIES, PORT_UDP_AMP_SOURCE, PORT_UDP_SERVICE,
};

use crate::{
    limits::{aggregate_allows, source_allows},
    parse::{parse, Addrs, Packet, Parsed},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;

#[xdp]
pub fn mitigator(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    // Read once: the decision steps and the exit both need it.
    let cfg = maps::config();
    match parse(&ctx) {
        Parsed::Ip(pkt) => {
            let reason = decide(&ctx, &pkt, cfg, len);
            finish(reason, pkt.class, len, cfg, Some(&pkt))
        }
        Parsed::NonIp => finish(Reason::PassNonIp, Class::Other, len, cfg, None),
        Parsed::Bad(reason, class) => finish(reason, class, len, cfg, None),
    }
}

#[inline(always)]
fn decide(ctx: &XdpContext, pkt: &Packet, cfg: Option<&Config>, len: u64) -> Reason {
    match &pkt.addrs {
        Addrs::V4 { src, .. } => {
            if maps::allow_v4(src, len) {
                return Reason::PassAllowlist;
            }
            if maps::block_v4(src, len) {
                return Reason::DropBlocklist;
            }
        }
        Addrs::V6 { src, .. } => {
            if maps::allow_v6(src, len) {
                return Reason::PassAllowlist;
            }
            if maps::block_v6(src, len) {
                return Reason::DropBlocklist;
            }
        }
    }
    let Some(cfg) = cfg else {
        return Reason::Pass;
    };
    match pkt.class {
        Class::TcpSyn => syn(ctx, pkt, cfg),
        Class::Tcp => tcp(ctx, pkt, cfg),
        Class::Udp => udp(pkt, cfg),
        Class::Icmp => icmp(pkt, cfg),
        Class::Fragment => fragment(pkt, cfg),
        Class::Other => Reason::Pass,
    }
}

#[inline(always)]
fn syn(ctx: &XdpContext, pkt: &Packet, cfg: &Config) -> Reason {
    if cfg.has(FLAG_RATE_LIMIT) && !source_allows(pkt, Class::TcpSyn, &cfg.syn) {
        return Reason::DropSynRate;
    }
    if cfg.has(FLAG_SYN_COOKIES) && maps::port_flags(pkt.dst_port) & PORT_TCP_SYN_COOKIES != 0 {
        // Monitor mode must not rewrite the frame it is going to pass.
        if let Some(reason) = syncookie::answer_syn(ctx, pkt, cfg.has(FLAG_MONITOR)) {
            return reason;
        }
    }
    Reason::Pass
}

#[inline(always)]
fn tcp(ctx: &XdpContext, pkt: &Packet, cfg: &Config) -> Reason {
    if cfg.has(FLAG_SYN_COOKIES) && maps::port_flags(pkt.dst_port) & PORT_TCP_SYN_COOKIES != 0 {
        if let Some(reason) = syncookie::check_ack(ctx, pkt) {
            return reason;
        }
    }
    Reason::Pass
}

#[inline(always)]
fn udp(pkt: &Packet, cfg: &Config) -> Reason {
    if cfg.has(FLAG_AMP_DROP)
        && maps::port_flags(pkt.src_port) & PORT_UDP_AMP_SOURCE != 0
        && maps::port_flags(pkt.dst_port) & PORT_UDP_SERVICE == 0
    {
        return Reason::DropAmplification;
    }
    if cfg.has(FLAG_RATE_LIMIT) && !source_allows(pkt, Class::Udp, &cfg.udp) {
        return Reason::DropUdpRate;
    }
    if cfg.has(FLAG_PORT_CAP) && !aggregate_allows(pkt.dst_port as u32, &cfg.udp_port) {
        return Reason::DropUdpPortCap;
    }
    Reason::Pass
}

/// Path-MTU signals get their own aggregate budget so that limiting ICMP
/// never breaks PMTU discovery for real users.
#[inline(always)]
fn icmp(pkt: &Packet, cfg: &Config) -> Reason {
    let pmtu = match pkt.addrs {
        Addrs::V4 { .. } => pkt.icmp_type == ICMP_DEST_UNREACH && pkt.icmp_code == ICMP_FRAG_NEEDED,
        Addrs::V6 { .. } => pkt.icmp_type == ICMPV6_PACKET_TOO_BIG,
    };
    if pmtu {
        if !aggregate_allows(AGGREGATE_PMTU, &cfg.pmtu) {
            return Reason::DropPmtuRate;
        }
        return Reason::Pass;
    }
    if cfg.has(FLAG_RATE_LIMIT) && !source_allows(pkt, Class::Icmp, &cfg.icmp) {
        return Reason::DropIcmpRate;
    }
    Reason::Pass
}

#[inline(always)]
fn fragment(pkt: &Packet, cfg: &Config) -> Reason {
    match cfg.frag_policy {
        FRAG_DROP => Reason::DropFragment,
        FRAG_RATE_LIMIT if !source_allows(pkt, Class::Fragment, &cfg.frag) => Reason::DropFragRate,
        _ => Reason::Pass,
    }
}

/// The one exit: count, sample, then turn the reason into an action
/// (monitor mode counts the decision but passes the packet).
#[inline(always)]
fn finish(
    reason: Reason,
    class: Class,
    len: u64,
    cfg: Option<&Config>,
    pkt: Option<&Packet>,
) -> u32 {
    maps::count(counter_index(reason, class), len);
    if let (Some(cfg), Some(pkt)) = (cfg, pkt) {
        sample::maybe_sample(cfg, pkt, reason, len);
    }
    let action = reason.action();
    if matches!(action, Action::Pass) {
        return xdp_action::XDP_PASS;
    }
    if cfg.is_some_and(|c| c.has(FLAG_MONITOR)) {
        return xdp_action::XDP_PASS;
    }
    match action {
        Action::Drop => xdp_action::XDP_DROP,
        Action::Tx => xdp_action::XDP_TX,
        Action::Pass => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
