//! The program's maps and the small accessors the packet path uses.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray},
};
use mitigator_common::{
    Config, Counter, Ipv4Addr, Ipv6Addr, RuleValue, ALLOW_V4_CAPACITY, ALLOW_V6_CAPACITY,
    BLOCK_V4_CAPACITY, BLOCK_V6_CAPACITY, COUNTER_ENTRIES,
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
pub fn config_flags() -> u32 {
    match CONFIG.get(0) {
        Some(c) => c.flags,
        None => 0,
    }
}
