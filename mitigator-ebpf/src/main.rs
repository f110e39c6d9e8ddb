//! mitigator's XDP program: parse, then the cheapest verdict first, and one
//! exit that counts every packet by (reason, class).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use mitigator_common::{counter_index, Action, Class, Reason, FLAG_MONITOR};

use crate::parse::{parse, Addrs, Parsed};

#[xdp]
pub fn mitigator(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (reason, class) = decide(&ctx);
    finish(reason, class, len)
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> (Reason, Class) {
    let pkt = match parse(ctx) {
        Parsed::Ip(pkt) => pkt,
        Parsed::NonIp => return (Reason::PassNonIp, Class::Other),
        Parsed::Bad(reason, class) => return (reason, class),
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    let class = pkt.class;
    match pkt.addrs {
        Addrs::V4 { src } => {
            if maps::allow_v4(&src, len) {
                return (Reason::PassAllowlist, class);
            }
            if maps::block_v4(&src, len) {
                return (Reason::DropBlocklist, class);
            }
        }
        Addrs::V6 { src } => {
            if maps::allow_v6(&src, len) {
                return (Reason::PassAllowlist, class);
            }
            if maps::block_v6(&src, len) {
                return (Reason::DropBlocklist, class);
            }
        }
    }
    (Reason::Pass, class)
}

/// The one exit: count, then turn the reason into an action (monitor mode
/// counts the decision but passes the packet).
#[inline(always)]
fn finish(reason: Reason, class: Class, len: u64) -> u32 {
    maps::count(counter_index(reason, class), len);
    let action = reason.action();
    if matches!(action, Action::Pass) {
        return xdp_action::XDP_PASS;
    }
    if maps::config_flags() & FLAG_MONITOR != 0 {
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
