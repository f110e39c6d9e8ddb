//! Rate limits as GCRA (generic cell rate algorithm): each limited thing
//! keeps one u64, its theoretical arrival time, so a check is a compare and
//! an add with no division. Updates from several CPUs may race; the worst
//! case is a few packets over the limit, never a wrong drop of a quiet source.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use mitigator_common::{Class, Gcra, SourceKey, EVENT_SOURCE_INSERT};

use crate::{
    maps::{event, AGGREGATE, SOURCES},
    parse::{Addrs, Packet},
};

/// Conforms if the arrival is within the tolerance; then books its cost.
#[inline(always)]
fn conforms(tat: *mut u64, now: u64, g: &Gcra) -> bool {
    let current = unsafe { *tat };
    let t = if current > now { current } else { now };
    if t - now > g.tolerance_ns {
        return false;
    }
    unsafe { *tat = t + g.interval_ns };
    true
}

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Per-source limit for `class` (IPv6 sources by /64).
#[inline(always)]
pub fn source_allows(pkt: &Packet, class: Class, g: &Gcra) -> bool {
    if g.is_off() {
        return true;
    }
    let mut key = SourceKey {
        class: class as u8,
        ..SourceKey::default()
    };
    match &pkt.addrs {
        Addrs::V4 { src, .. } => {
            key.family = 4;
            key.addr[0] = src[0];
            key.addr[1] = src[1];
            key.addr[2] = src[2];
            key.addr[3] = src[3];
        }
        Addrs::V6 { src, .. } => {
            key.family = 6;
            let mut i = 0;
            while i < 8 {
                key.addr[i] = src[i];
                i += 1;
            }
        }
    }
    let now = now_ns();
    match SOURCES.get_ptr_mut(&key) {
        Some(tat) => conforms(tat, now, g),
        None => {
            // First packet of a new source conforms; its cost is booked.
            let _ = SOURCES.insert(&key, &(now + g.interval_ns), 0);
            event(EVENT_SOURCE_INSERT);
            true
        }
    }
}

/// Aggregate limit shared by every source (a UDP port, the PMTU budget).
#[inline(always)]
pub fn aggregate_allows(index: u32, g: &Gcra) -> bool {
    if g.is_off() {
        return true;
    }
    match AGGREGATE.get_ptr_mut(index) {
        Some(tat) => conforms(tat, now_ns(), g),
        None => true,
    }
}
