//! Map names and capacities, in one place for both sides.

pub const MAP_ALLOW_V4: &str = "ALLOW_V4";
pub const MAP_ALLOW_V6: &str = "ALLOW_V6";
pub const MAP_BLOCK_V4: &str = "BLOCK_V4";
pub const MAP_BLOCK_V6: &str = "BLOCK_V6";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_CONFIG: &str = "CONFIG";
/// The XDP program's function name in the object.
pub const PROGRAM_NAME: &str = "mitigator";

/// Capacity of the IPv4 blocklist (prefixes). Tries are not preallocated,
/// so an unused capacity costs no memory.
pub const BLOCK_V4_CAPACITY: u32 = 2 * 1024 * 1024;
pub const BLOCK_V6_CAPACITY: u32 = 256 * 1024;
pub const ALLOW_V4_CAPACITY: u32 = 64 * 1024;
pub const ALLOW_V6_CAPACITY: u32 = 64 * 1024;
