//! Header samples sent to userspace through the `SAMPLES` ring buffer, and
//! the key of the per-source rate-limit table.

use crate::assert_layout;

/// What detection needs from one packet. Addresses are network order;
/// IPv4 addresses sit in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Sample {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host order.
    pub src_port: u16,
    pub dst_port: u16,
    /// Frame length.
    pub len: u16,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ttl: u8,
    /// `Reason` as u8.
    pub reason: u8,
    /// `Class` as u8.
    pub class: u8,
}
assert_layout!(Sample, 44, 2);

/// Key of `SOURCES`: the source (IPv6 by its /64, since one host owns a
/// whole /64) and the class being limited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SourceKey {
    pub addr: [u8; 16],
    pub class: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
assert_layout!(SourceKey, 20, 1);

#[cfg(feature = "user")]
unsafe impl aya::Pod for SourceKey {}
