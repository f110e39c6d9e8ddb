//! A BPF_PROG_TEST_RUN harness around the built XDP object: load it, feed it
//! frames, set rules and monitor mode, and read counters back.
//!
//! Every BPF test starts with [`Harness::for_test`] (or [`bpf_ready`]): it
//! skips with a printed reason when the machine cannot run BPF (not root, or
//! the object is not built), except under CI or an explicit
//! `MITIGATOR_EBPF_OBJECT`, where the same condition is a hard failure so a
//! broken pipeline can never pass by skipping everything.
//!
//! The kernel rejects test-run input shorter than an Ethernet header (14
//! bytes) with EINVAL, so frames shorter than that cannot be fed through
//! here; the program's own bounds checks for them are unreachable from tests.

use std::{collections::BTreeMap, fmt, io::Write, net::IpAddr, path::PathBuf, sync::OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, PerCpuArray, RingBuf,
    },
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, Pod,
};
use ipnet::IpNet;
use mitigator_common::{
    counter_index, maps, Class, Config, Counter, Reason, RuleValue, Sample, SourceKey,
    EVENT_ENTRIES, FLAG_MONITOR,
};

/// Environment variable naming the object to test (and making skips fatal).
pub const OBJECT_ENV: &str = "MITIGATOR_EBPF_OBJECT";

/// Room for the program to grow a frame (XDP_TX replies) in the output buffer.
const OUTPUT_HEADROOM: usize = 512;

/// The XDP return code of a test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Unknown(u32),
}

impl From<u32> for Verdict {
    fn from(code: u32) -> Self {
        match code {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            other => Verdict::Unknown(other),
        }
    }
}

/// Which trie a rule lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Allow,
    Block,
}

impl List {
    fn map_name(self, net: &IpNet) -> &'static str {
        match (self, net) {
            (List::Allow, IpNet::V4(_)) => maps::MAP_ALLOW_V4,
            (List::Allow, IpNet::V6(_)) => maps::MAP_ALLOW_V6,
            (List::Block, IpNet::V4(_)) => maps::MAP_BLOCK_V4,
            (List::Block, IpNet::V6(_)) => maps::MAP_BLOCK_V6,
        }
    }
}

/// Anything a rule prefix can be given as: `"10.0.0.0/8"`, a bare address
/// (`/32` or `/128`), an `IpNet`, or `(address, prefix length)`.
pub trait IntoPrefix {
    fn into_prefix(self) -> Result<IpNet>;
}

impl IntoPrefix for &str {
    fn into_prefix(self) -> Result<IpNet> {
        if let Ok(net) = self.parse::<IpNet>() {
            return Ok(net);
        }
        let addr: IpAddr = self
            .parse()
            .with_context(|| format!("bad prefix {self:?}"))?;
        Ok(IpNet::from(addr))
    }
}

impl IntoPrefix for IpNet {
    fn into_prefix(self) -> Result<IpNet> {
        Ok(self)
    }
}

impl<A: Into<IpAddr>> IntoPrefix for (A, u8) {
    fn into_prefix(self) -> Result<IpNet> {
        let (addr, len) = (self.0.into(), self.1);
        IpNet::new(addr, len).with_context(|| format!("bad prefix {addr}/{len}"))
    }
}

/// Counter cells summed over CPUs, keyed by (reason, class).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(BTreeMap<(Reason, Class), Counter>);

impl Counters {
    pub fn get(&self, reason: Reason, class: Class) -> Counter {
        self.0.get(&(reason, class)).copied().unwrap_or_default()
    }

    /// Cells with at least one packet.
    pub fn nonzero(&self) -> impl Iterator<Item = ((Reason, Class), Counter)> + '_ {
        self.0
            .iter()
            .filter(|(_, c)| c.packets != 0 || c.bytes != 0)
            .map(|(k, c)| (*k, *c))
    }

    pub fn total_packets(&self) -> u64 {
        self.0.values().map(|c| c.packets).sum()
    }

    /// What changed since `before`: only the cells that moved.
    pub fn delta(&self, before: &Counters) -> Counters {
        let cells = self.0.iter().filter_map(|(key, now)| {
            let then = before.0.get(key).copied().unwrap_or_default();
            let moved = Counter {
                packets: now
                    .packets
                    .checked_sub(then.packets)
                    .expect("packet counter went backwards"),
                bytes: now
                    .bytes
                    .checked_sub(then.bytes)
                    .expect("byte counter went backwards"),
            };
            (moved != Counter::default()).then_some((*key, moved))
        });
        Counters(cells.collect())
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cells: Vec<String> = self
            .nonzero()
            .map(|((r, c), v)| {
                format!(
                    "{}/{}: {} pkts {} bytes",
                    r.name(),
                    c.name(),
                    v.packets,
                    v.bytes
                )
            })
            .collect();
        if cells.is_empty() {
            return f.write_str("{}");
        }
        write!(f, "{{{}}}", cells.join(", "))
    }
}

/// The `EVENTS` counters summed over CPUs, indexed by `EVENT_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events(pub [u64; EVENT_ENTRIES as usize]);

impl Events {
    pub fn get(&self, event: u32) -> u64 {
        self.0[event as usize]
    }

    /// What moved since `before`, per event.
    pub fn delta(&self, before: &Events) -> Events {
        let mut moved = [0u64; EVENT_ENTRIES as usize];
        for (i, m) in moved.iter_mut().enumerate() {
            *m = self.0[i]
                .checked_sub(before.0[i])
                .expect("event counter went backwards");
        }
        Events(moved)
    }
}

/// Where the XDP object is: `$MITIGATOR_EBPF_OBJECT`, else the workspace build output.
pub fn object_path() -> PathBuf {
    if let Some(path) = object_from_env() {
        return path;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/ebpf/bpfel-unknown-none/release/mitigator")
}

/// `$MITIGATOR_EBPF_OBJECT`, if set to something (empty counts as unset).
fn object_from_env() -> Option<PathBuf> {
    std::env::var_os(OBJECT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Under CI, or when a specific object was asked for, a test that cannot
/// run must fail instead of skipping.
fn skipping_is_an_error() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    ci || object_from_env().is_some()
}

/// Why BPF tests cannot run here, if they cannot.
fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let path = object_path();
    if !path.is_file() {
        return Some(format!(
            "object not built ({}) — run cargo xtask build",
            path.display()
        ));
    }
    None
}

/// The gate every BPF test goes through: true if it can run; false (after
/// printing why) if it should skip; panics if skipping is not allowed.
pub fn bpf_ready(test: &str) -> bool {
    let Some(reason) = unavailable_reason() else {
        return true;
    };
    if skipping_is_an_error() {
        panic!("{test}: {reason} (CI or {OBJECT_ENV} is set: this is a failure, not a skip)");
    }
    // Straight to stderr: libtest captures eprintln! of passing tests, and
    // a skip must be visible.
    let _ = writeln!(std::io::stderr(), "SKIP: {test}: {reason}");
    false
}

/// The object's bytes, read once per test binary, in a u64-aligned buffer
/// (the ELF parser reads headers in place).
fn object_bytes() -> Result<&'static [u8]> {
    static OBJECT: OnceLock<Vec<u64>> = OnceLock::new();
    if let Some(words) = OBJECT.get() {
        return Ok(bytemuck::cast_slice(words));
    }
    let path = object_path();
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
    let words = OBJECT.get_or_init(|| words);
    Ok(&bytemuck::cast_slice(words)[..bytes.len()])
}

/// One loaded copy of the XDP program with its own, empty maps.
pub struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    /// The gate plus a load: `None` means "skipped" (the reason is printed).
    pub fn for_test(test: &str) -> Option<Harness> {
        if !bpf_ready(test) {
            return None;
        }
        Some(Harness::load().unwrap_or_else(|e| panic!("{test}: loading the XDP object: {e:#}")))
    }

    pub fn load() -> Result<Harness> {
        let mut ebpf = Ebpf::load(object_bytes()?).context("Ebpf::load")?;
        let program: &mut Xdp = ebpf
            .program_mut(maps::PROGRAM_NAME)
            .ok_or_else(|| anyhow!("no program {:?} in the object", maps::PROGRAM_NAME))?
            .try_into()?;
        program
            .load()
            .context("loading the XDP program (verifier)")?;
        Ok(Harness { ebpf })
    }

    fn program(&self) -> Result<&Xdp> {
        let program = self
            .ebpf
            .program(maps::PROGRAM_NAME)
            .expect("checked at load");
        Ok(program.try_into()?)
    }

    /// Runs one frame through the program: the verdict and the frame as the
    /// program left it.
    pub fn run(&self, frame: &[u8]) -> Result<(Verdict, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + OUTPUT_HEADROOM];
        let result = self
            .program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))?;
        out.truncate(result.data_size_out as usize);
        Ok((Verdict::from(result.return_value), out))
    }

    pub fn block(&mut self, prefix: impl IntoPrefix) -> Result<()> {
        self.insert_rule(List::Block, prefix.into_prefix()?)
    }

    pub fn allow(&mut self, prefix: impl IntoPrefix) -> Result<()> {
        self.insert_rule(List::Allow, prefix.into_prefix()?)
    }

    /// Adds a rule with zeroed hit counters. Host bits are cleared, as the
    /// daemon does, so the trie key is canonical.
    pub fn insert_rule(&mut self, list: List, net: IpNet) -> Result<()> {
        let net = net.trunc();
        let map = self.map_mut(list.map_name(&net))?;
        let len = u32::from(net.prefix_len());
        match net {
            IpNet::V4(n) => insert(map, Key::new(len, n.addr().octets())),
            IpNet::V6(n) => insert(map, Key::new(len, n.addr().octets())),
        }
        .with_context(|| format!("inserting {list:?} rule {net}"))
    }

    /// The hit counters of exactly this rule (not a longest-prefix lookup).
    pub fn rule_hits(&self, list: List, prefix: impl IntoPrefix) -> Result<RuleValue> {
        let net = prefix.into_prefix()?.trunc();
        let map = self.map(list.map_name(&net))?;
        let len = u32::from(net.prefix_len());
        match net {
            IpNet::V4(n) => exact_value(map, len, n.addr().octets()),
            IpNet::V6(n) => exact_value(map, len, n.addr().octets()),
        }
        .with_context(|| format!("reading {list:?} rule {net}"))
    }

    pub fn set_monitor(&mut self, on: bool) -> Result<()> {
        let mut array: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(maps::MAP_CONFIG)?)?;
        // Read-modify-write: only the monitor bit changes.
        let mut config = array.get(&0, 0)?;
        config.flags = if on {
            config.flags | FLAG_MONITOR
        } else {
            config.flags & !FLAG_MONITOR
        };
        array.set(0, config, 0)?;
        Ok(())
    }

    /// Replaces the whole run-time configuration (the `CONFIG` map entry).
    pub fn set_config(&mut self, config: Config) -> Result<()> {
        let mut array: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(maps::MAP_CONFIG)?)?;
        array.set(0, config, 0)?;
        Ok(())
    }

    /// The run-time configuration as the program reads it.
    pub fn config(&self) -> Result<Config> {
        let array: Array<&MapData, Config> = Array::try_from(self.map(maps::MAP_CONFIG)?)?;
        Ok(array.get(&0, 0)?)
    }

    /// Sets the `PORT_*` flags of one port (replacing what it had).
    pub fn set_port_flags(&mut self, port: u16, flags: u32) -> Result<()> {
        let mut array: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::MAP_PORTS)?)?;
        array.set(u32::from(port), flags, 0)?;
        Ok(())
    }

    pub fn port_flags(&self, port: u16) -> Result<u32> {
        let array: Array<&MapData, u32> = Array::try_from(self.map(maps::MAP_PORTS)?)?;
        Ok(array.get(&u32::from(port), 0)?)
    }

    /// The `EVENTS` counters (index `EVENT_*`), summed over CPUs.
    pub fn events(&self) -> Result<Events> {
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(maps::MAP_EVENTS)?)?;
        let mut events = [0u64; EVENT_ENTRIES as usize];
        for (index, total) in events.iter_mut().enumerate() {
            *total = array.get(&(index as u32), 0)?.iter().sum();
        }
        Ok(Events(events))
    }

    /// Drains the `SAMPLES` ring buffer: every sample not read before, oldest first.
    pub fn read_samples(&mut self) -> Result<Vec<Sample>> {
        let mut ring: RingBuf<&mut MapData> = RingBuf::try_from(self.map_mut(maps::MAP_SAMPLES)?)?;
        let mut samples = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() != std::mem::size_of::<Sample>() {
                bail!(
                    "ring buffer record of {} bytes, a Sample is {}",
                    item.len(),
                    std::mem::size_of::<Sample>()
                );
            }
            samples.push(bytemuck::pod_read_unaligned(&item));
        }
        Ok(samples)
    }

    /// The per-source GCRA state (theoretical arrival time, ns) of one key.
    pub fn source_state(&self, key: &SourceKey) -> Result<Option<u64>> {
        let table: HashMap<&MapData, SourceKey, u64> =
            HashMap::try_from(self.map(maps::MAP_SOURCES)?)?;
        match table.get(key, 0) {
            Ok(tat) => Ok(Some(tat)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every key in the per-source table.
    pub fn sources(&self) -> Result<Vec<SourceKey>> {
        let table: HashMap<&MapData, SourceKey, u64> =
            HashMap::try_from(self.map(maps::MAP_SOURCES)?)?;
        Ok(table.keys().collect::<Result<Vec<_>, _>>()?)
    }

    /// Every (reason, class) cell, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let array: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.map(maps::MAP_COUNTERS)?)?;
        let mut cells = BTreeMap::new();
        for reason in Reason::ALL {
            for class in Class::ALL {
                let per_cpu = array.get(&counter_index(reason, class), 0)?;
                let sum = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
                cells.insert((reason, class), sum);
            }
        }
        Ok(Counters(cells))
    }

    /// Runs `f` and returns its result with the counter cells it moved.
    pub fn delta<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<(T, Counters)> {
        let before = self.counters()?;
        let value = f(self)?;
        Ok((value, self.counters()?.delta(&before)))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("no map {name:?} in the object"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("no map {name:?} in the object"))
    }
}

fn insert<K: Pod>(map: &mut aya::maps::Map, key: Key<K>) -> Result<()> {
    let mut trie: LpmTrie<&mut MapData, K, RuleValue> = LpmTrie::try_from(map)?;
    trie.insert(&key, RuleValue::default(), 0)?;
    Ok(())
}

fn exact_value<K: Pod + PartialEq>(map: &aya::maps::Map, len: u32, data: K) -> Result<RuleValue> {
    let trie: LpmTrie<&MapData, K, RuleValue> = LpmTrie::try_from(map)?;
    for entry in trie.iter() {
        let (key, value) = entry?;
        if key.prefix_len() == len && key.data() == data {
            return Ok(value);
        }
    }
    bail!("no such rule")
}
