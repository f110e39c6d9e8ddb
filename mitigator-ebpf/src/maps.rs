//! The program's maps and the small accessors the packet path uses.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use mitigator_common::{
    Config, Counter, Ipv4Addr, Ipv6Addr, RuleValue, SourceKey, AGGREGATE_ENTRIES,
    ALLOW_V4_CAPACITY, ALLOW_V6_CAPACITY, BLOCK_V4_CAPACITY, BLOCK_V6_CAPACITY, COUNTER_ENTRIES,
    DEFAULT_SOURCE_CAPACITY, EVENT_ENTRIES, PORT_ENTRIES, SAMPLES_BYTES,
};

#[map]
static ALLOW_V4: LpmTrie<Ipv4Addr, RuleValue> = LpmTrie::with_max_entries(ALLOW_V4_CAPACITY, 0);
#[map]
static ALLOW_V6: LpmTrie<Ipv6Addr, RuleValue> = LpmTrie::with_max_entries(ALLOW_V6_CAPACITY, 0);
#[map]
static BLOCK_V4: LpmTrie<Ipv4Addr, RuleValue> = LpmTrie::with_max_entries(BLOCK_V4_CAPACITY, 0);
#[map]
static BLOCK_V6: LpmTrie<Ipv6Addr, RuleValue> = LpmTrie::with_max_entries(BLOCK_V6_CAPACITY, 0);
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// `PORT_*` flags per port number.
#[map]
pub static PORTS: Array<u32> = Array::with_max_entries(PORT_ENTRIES, 0);
/// GCRA theoretical arrival time (ns) per (source, class). The daemon may
/// resize it at load time.
#[map]
pub static SOURCES: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(DEFAULT_SOURCE_CAPACITY, 0);
/// GCRA state per UDP destination port, then the PMTU budget.
#[map]
pub static AGGREGATE: Array<u64> = Array::with_max_entries(AGGREGATE_ENTRIES, 0);
#[map]
static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_ENTRIES, 0);
#[map]
pub static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_BYTES, 0);
/// Per-CPU sampling window: [window start ns, samples in window].
#[map]
pub static SAMPLE_WINDOW: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Atomic add: rule hit counters are shared by all CPUs. The BPF target has
/// no compare-and-swap, so core's atomics are unavailable; `lock +=` is the
/// BPF_ATOMIC add instruction.
#[inline(always)]
fn atomic_add(dst: *mut u64, v: u64) {
    unsafe {
        core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) dst, in(reg) v);
    }
}

#[inline(always)]
fn hit(value: &RuleValue, len: u64) {
    let v = value as *const RuleValue as *mut RuleValue;
    unsafe {
        atomic_add(core::ptr::addr_of_mut!((*v).packets), 1);
        atomic_add(core::ptr::addr_of_mut!((*v).bytes), len);
    }
}

#[inline(always)]
fn lookup_v4(trie: &LpmTrie<Ipv4Addr, RuleValue>, addr: &Ipv4Addr, len: u64) -> bool {
    match trie.get(Key::new(32, *addr)) {
        Some(v) => {
            hit(v, len);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn lookup_v6(trie: &LpmTrie<Ipv6Addr, RuleValue>, addr: &Ipv6Addr, len: u64) -> bool {
    match trie.get(Key::new(128, *addr)) {
        Some(v) => {
            hit(v, len);
            true
        }
        None => false,
    }
}

#[inline(always)]
pub fn allow_v4(addr: &Ipv4Addr, len: u64) -> bool {
    lookup_v4(&ALLOW_V4, addr, len)
}
#[inline(always)]
pub fn block_v4(addr: &Ipv4Addr, len: u64) -> bool {
    lookup_v4(&BLOCK_V4, addr, len)
}
#[inline(always)]
pub fn allow_v6(addr: &Ipv6Addr, len: u64) -> bool {
    lookup_v6(&ALLOW_V6, addr, len)
}
#[inline(always)]
pub fn block_v6(addr: &Ipv6Addr, len: u64) -> bool {
    lookup_v6(&BLOCK_V6, addr, len)
}

/// Per-CPU, so plain adds are race-free.
#[inline(always)]
pub fn count(index: u32, len: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

#[inline(always)]
pub fn event(index: u32) {
    if let Some(c) = EVENTS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn port_flags(port: u16) -> u32 {
    match PORTS.get(port as u32) {
        Some(f) => *f,
        None => 0,
    }
}
