//! Run-time configuration the daemon writes into the single-entry `CONFIG`
//! array; the XDP program reads it on every packet, so a change takes effect
//! without reloading the program.

use crate::assert_layout;

/// Count every decision but let every packet pass (dry run).
pub const FLAG_MONITOR: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Config {
    /// `FLAG_*` bits.
    pub flags: u32,
    pub _reserved: u32,
}
assert_layout!(Config, 8, 4);

impl Config {
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
