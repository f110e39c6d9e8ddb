//! Types shared by the XDP program and the userspace daemon.
//!
//! Every type here is `#[repr(C)]`, has no padding the compiler could leave
//! uninitialised, and is checked for size and alignment at compile time so
//! the two sides can never disagree about a map's layout. Addresses are
//! always byte arrays in network order, exactly as they sit in the packet.
#![no_std]

pub mod config;
pub mod counters;
pub mod maps;
pub mod rules;
pub mod sample;

pub use config::*;
pub use counters::*;
pub use maps::*;
pub use rules::*;
pub use sample::*;

/// Compile-time layout check: `assert_layout!(Type, size, align)`.
#[macro_export]
macro_rules! assert_layout {
    ($t:ty, $size:expr, $align:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        const _: () = assert!(core::mem::align_of::<$t>() == $align);
    };
}
