//! Map names and capacities, in one place for both sides.

pub const MAP_ALLOW_V4: &str = "ALLOW_V4";
pub const MAP_ALLOW_V6: &str = "ALLOW_V6";
pub const MAP_BLOCK_V4: &str = "BLOCK_V4";
pub const MAP_BLOCK_V6: &str = "BLOCK_V6";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_CONFIG: &str = "CONFIG";
/// Per-port flags (`PORT_*`), indexed by port number.
pub const MAP_PORTS: &str = "PORTS";
/// Per-source GCRA state (LRU hash, key `SourceKey`).
pub const MAP_SOURCES: &str = "SOURCES";
/// Aggregate GCRA state: one per UDP destination port, then the PMTU budget.
pub const MAP_AGGREGATE: &str = "AGGREGATE";
/// Per-CPU event counters (`EVENT_*`).
pub const MAP_EVENTS: &str = "EVENTS";
/// Ring buffer of `Sample`s.
pub const MAP_SAMPLES: &str = "SAMPLES";
/// Per-CPU sampling window state.
pub const MAP_SAMPLE_WINDOW: &str = "SAMPLE_WINDOW";
/// The XDP program's function name in the object.
pub const PROGRAM_NAME: &str = "mitigator";

/// Capacity of the IPv4 blocklist (prefixes). Tries are not preallocated,
/// so an unused capacity costs no memory.
pub const BLOCK_V4_CAPACITY: u32 = 2 * 1024 * 1024;
pub const BLOCK_V6_CAPACITY: u32 = 256 * 1024;
pub const ALLOW_V4_CAPACITY: u32 = 64 * 1024;
pub const ALLOW_V6_CAPACITY: u32 = 64 * 1024;
/// Default number of sources tracked for per-source limits (the daemon may
/// set another size at load time).
pub const DEFAULT_SOURCE_CAPACITY: u32 = 1024 * 1024;
pub const PORT_ENTRIES: u32 = 65536;
/// Index of the PMTU budget in `AGGREGATE`, after the 65536 port entries.
pub const AGGREGATE_PMTU: u32 = PORT_ENTRIES;
pub const AGGREGATE_ENTRIES: u32 = PORT_ENTRIES + 1;
/// Ring buffer size for samples (bytes, power of two).
pub const SAMPLES_BYTES: u32 = 1 << 20;

/// `EVENTS` indices.
/// A new source entered the per-source table (an LRU; once more sources
/// than its capacity have been seen, each insert evicts the least recent).
pub const EVENT_SOURCE_INSERT: u32 = 0;
/// A sample was written to the ring buffer.
pub const EVENT_SAMPLE: u32 = 1;
/// A sample was skipped because the per-second cap was reached.
pub const EVENT_SAMPLE_CAPPED: u32 = 2;
/// The ring buffer was full (userspace too slow).
pub const EVENT_SAMPLE_LOST: u32 = 3;
/// A SYN to a protected port found no listener (passed to the stack).
pub const EVENT_SYN_NO_LISTENER: u32 = 4;
pub const EVENT_ENTRIES: u32 = 8;
