//! A bounded sample of packet headers for userspace detection: one packet
//! in `sample_every`, at most `sample_max_per_sec` per CPU per second.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use mitigator_common::{
    Config, Reason, Sample, EVENT_SAMPLE, EVENT_SAMPLE_CAPPED, EVENT_SAMPLE_LOST, FLAG_SAMPLE,
};

use crate::{
    limits::now_ns,
    maps::{event, SAMPLES, SAMPLE_WINDOW},
    parse::{Addrs, Packet},
};

const WINDOW_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn maybe_sample(cfg: &Config, pkt: &Packet, reason: Reason, len: u64) {
    if !cfg.has(FLAG_SAMPLE) || cfg.sample_every == 0 {
        return;
    }
    if unsafe { bpf_get_prandom_u32() } % cfg.sample_every != 0 {
        return;
    }
    let Some(window) = SAMPLE_WINDOW.get_ptr_mut(0) else {
        return;
    };
    let now = now_ns();
    unsafe {
        if now.wrapping_sub((*window)[0]) >= WINDOW_NS {
            (*window)[0] = now;
            (*window)[1] = 0;
        }
        if (*window)[1] >= cfg.sample_max_per_sec as u64 {
            event(EVENT_SAMPLE_CAPPED);
            return;
        }
        (*window)[1] += 1;
    }
    let Some(mut entry) = SAMPLES.reserve::<Sample>(0) else {
        event(EVENT_SAMPLE_LOST);
        return;
    };
    let mut s = Sample {
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        len: if len > u16::MAX as u64 {
            u16::MAX
        } else {
            len as u16
        },
        proto: pkt.proto,
        tcp_flags: pkt.tcp_flags,
        ttl: pkt.ttl,
        reason: reason as u8,
        class: pkt.class as u8,
        ..Sample::default()
    };
    match &pkt.addrs {
        Addrs::V4 { src, dst } => {
            s.family = 4;
            s.src[..4].copy_from_slice(src);
            s.dst[..4].copy_from_slice(dst);
        }
        Addrs::V6 { src, dst } => {
            s.family = 6;
            s.src = *src;
            s.dst = *dst;
        }
    }
    entry.write(s);
    entry.submit(0);
    event(EVENT_SAMPLE);
}
