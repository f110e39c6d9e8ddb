//! Values stored in the allow and block LPM tries.

use crate::assert_layout;

/// LPM trie value for an allow or block rule: a hit counter the XDP program
/// bumps atomically, so `list` can show how much each rule matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RuleValue {
    pub packets: u64,
    pub bytes: u64,
}
assert_layout!(RuleValue, 16, 8);

/// Key data of the IPv4 tries (network order); the prefix length is in aya's `Key`.
pub type Ipv4Addr = [u8; 4];
/// Key data of the IPv6 tries (network order).
pub type Ipv6Addr = [u8; 16];

#[cfg(feature = "user")]
unsafe impl aya::Pod for RuleValue {}
