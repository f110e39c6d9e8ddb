//! The only module that talks to aya: load the XDP object, attach it (or
//! adopt the one a previous daemon left pinned), and read and write its maps.
//!
//! Maps and the program link are pinned under `<pin root>/<interface>/`, so
//! enforcement survives the daemon: a restart reuses the same maps (rules and
//! counters intact) and swaps the new program into the pinned link
//! atomically, without a moment in which packets go unfiltered.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, MapError, PerCpuArray},
    programs::{links::FdLink, links::PinnedLink, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use ipnet::IpNet;
use mitigator_common::{
    counter_index, Class, Config, Counter, Reason, RuleValue, SourceKey, ALLOW_V4_CAPACITY,
    ALLOW_V6_CAPACITY, BLOCK_V4_CAPACITY, BLOCK_V6_CAPACITY, EVENT_ENTRIES, EVENT_SAMPLE,
    EVENT_SAMPLE_CAPPED, EVENT_SAMPLE_LOST, EVENT_SOURCE_INSERT, EVENT_SYN_NO_LISTENER,
    MAP_AGGREGATE, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_BLOCK_V4, MAP_BLOCK_V6, MAP_CONFIG,
    MAP_COUNTERS, MAP_EVENTS, MAP_PORTS, MAP_SAMPLES, MAP_SAMPLE_WINDOW, MAP_SOURCES, PORT_ENTRIES,
    PROGRAM_NAME,
};
use tracing::{info, warn};

use crate::rules::RuleKind;

/// The XDP object built by `cargo xtask build`, embedded at compile time
/// (empty when the crate was built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mitigator.bpf.o"));

/// Default root under bpffs for pinned maps and links.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/mitigator";

/// Every map is pinned, so rules, counters, rate-limit state and config
/// all carry over to the next daemon.
const PINNED_MAPS: [&str; 12] = [
    MAP_ALLOW_V4,
    MAP_ALLOW_V6,
    MAP_BLOCK_V4,
    MAP_BLOCK_V6,
    MAP_COUNTERS,
    MAP_CONFIG,
    MAP_PORTS,
    MAP_SOURCES,
    MAP_AGGREGATE,
    MAP_EVENTS,
    MAP_SAMPLES,
    MAP_SAMPLE_WINDOW,
];
/// The link is pinned as `link-native` or `link-skb`: bpffs holds only BPF
/// objects, so the attach mode is recorded in the pin's name.
const LINK_PINS: [(&str, &str); 2] = [("link-native", "native"), ("link-skb", "skb")];

/// The embedded XDP object, if this binary has one.
pub fn embedded_object() -> Option<&'static [u8]> {
    (!OBJECT.is_empty()).then_some(OBJECT)
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("this mitigator binary was built without its eBPF object; build it with `cargo xtask build`")]
    NoObject,
    #[error("unknown network interface '{0}'")]
    UnknownInterface(String),
    #[error("cannot load the XDP program: {0}")]
    Load(String),
    #[error("cannot attach XDP to '{iface}' in {mode} mode: {reason}")]
    Attach {
        iface: String,
        mode: &'static str,
        reason: String,
    },
    #[error("the {map} map is full ({capacity} entries): remove rules or raise the limit")]
    MapFull { map: &'static str, capacity: u32 },
    #[error("map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("bpffs at {path}: {reason}")]
    Pin { path: String, reason: String },
}

type Result<T> = std::result::Result<T, DatapathError>;

/// How to attach: `Auto` tries native and falls back to generic with a warning.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Native,
    Skb,
}

pub struct DatapathOptions {
    pub iface: String,
    pub mode: AttachMode,
    pub pin_root: PathBuf,
    /// Capacity of the per-source rate-limit table (an LRU).
    pub source_capacity: u32,
}

/// How full one map is, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// Per-CPU event counters summed (see `mitigator_common::EVENT_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Events {
    pub sources_inserted: u64,
    pub samples: u64,
    pub samples_capped: u64,
    pub samples_lost: u64,
    pub syn_no_listener: u64,
}

pub struct Datapath {
    iface: String,
    pin_dir: PathBuf,
    /// `native` or `skb`, as actually attached (or as adopted).
    attached_mode: &'static str,
    adopted: bool,
    allow_v4: LpmTrie<MapData, [u8; 4], RuleValue>,
    allow_v6: LpmTrie<MapData, [u8; 16], RuleValue>,
    block_v4: LpmTrie<MapData, [u8; 4], RuleValue>,
    block_v6: LpmTrie<MapData, [u8; 16], RuleValue>,
    counters: PerCpuArray<MapData, Counter>,
    config: Array<MapData, Config>,
    ports: Array<MapData, u32>,
    sources: aya::maps::HashMap<MapData, SourceKey, u64>,
    events: PerCpuArray<MapData, u64>,
    samples: Option<aya::maps::RingBuf<MapData>>,
    source_capacity: u32,
    /// Keeps the program loaded while we run; the pinned link keeps it attached.
    _ebpf: Ebpf,
    link: Option<PinnedLink>,
}

impl Datapath {
    /// Loads the program and attaches it to `iface`, or adopts a pinned link
    /// left by an earlier daemon on the same interface.
    pub fn open(opts: &DatapathOptions) -> Result<Self> {
        let object = embedded_object().ok_or(DatapathError::NoObject)?;
        if nix::net::if_::if_nametoindex(opts.iface.as_str()).is_err() {
            return Err(DatapathError::UnknownInterface(opts.iface.clone()));
        }
        ensure_bpffs(&opts.pin_root)?;
        let pin_dir = opts.pin_root.join(&opts.iface);
        std::fs::create_dir_all(&pin_dir).map_err(|e| pin_err(&pin_dir, e))?;

        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_SOURCES, opts.source_capacity.max(1));
        let paths: Vec<(&str, PathBuf)> =
            PINNED_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).map_err(|e| {
            DatapathError::Load(format!(
                "{e} (if {} holds maps from an incompatible version, stop with --detach-on-exit or remove it)",
                pin_dir.display()
            ))
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| DatapathError::Load(format!("no program '{PROGRAM_NAME}' in object")))?
            .try_into()
            .map_err(|e: ProgramError| DatapathError::Load(e.to_string()))?;
        prog.load()
            .map_err(|e| DatapathError::Load(e.to_string()))?;

        let adopted_link = LINK_PINS
            .iter()
            .find_map(|(file, mode)| adopt(prog, &pin_dir.join(file)).map(|l| (l, *mode)));
        let (link, attached_mode, adopted) = match adopted_link {
            Some((link, mode)) => (link, mode, true),
            None => {
                let (link, mode) = attach(prog, &opts.iface, opts.mode, &pin_dir)?;
                (link, mode, false)
            }
        };

        let mut dp = Self {
            iface: opts.iface.clone(),
            pin_dir,
            attached_mode,
            adopted,
            allow_v4: take_map(&mut ebpf, MAP_ALLOW_V4)?,
            allow_v6: take_map(&mut ebpf, MAP_ALLOW_V6)?,
            block_v4: take_map(&mut ebpf, MAP_BLOCK_V4)?,
            block_v6: take_map(&mut ebpf, MAP_BLOCK_V6)?,
            counters: take_map(&mut ebpf, MAP_COUNTERS)?,
            config: take_map(&mut ebpf, MAP_CONFIG)?,
            ports: take_map(&mut ebpf, MAP_PORTS)?,
            sources: take_map(&mut ebpf, MAP_SOURCES)?,
            events: take_map(&mut ebpf, MAP_EVENTS)?,
            samples: Some(take_map(&mut ebpf, MAP_SAMPLES)?),
            source_capacity: opts.source_capacity.max(1),
            _ebpf: ebpf,
            link: Some(link),
        };
        // A pinned source table keeps the size it was created with.
        use aya::maps::IterableMap;
        if let Ok(info) = dp.sources.map().info() {
            let actual = info.max_entries();
            if actual != dp.source_capacity {
                warn!(
                    configured = dp.source_capacity,
                    actual,
                    "the pinned source table keeps its size; stop once with --detach-on-exit to resize it"
                );
                dp.source_capacity = actual;
            }
        }
        // Make sure the config entry exists (a fresh array is all zeros anyway).
        let cfg = dp.config()?;
        dp.set_config(cfg)?;
        Ok(dp)
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn attached_mode(&self) -> &'static str {
        self.attached_mode
    }

    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn config(&self) -> Result<Config> {
        self.config
            .get(&0, 0)
            .map_err(|e| map_err(MAP_CONFIG_NAME, e))
    }

    pub fn set_config(&mut self, cfg: Config) -> Result<()> {
        self.config
            .set(0, cfg, 0)
            .map_err(|e| map_err(MAP_CONFIG_NAME, e))
    }

    /// Replaces every port's `PORT_*` flags: ports not listed get 0.
    pub fn set_port_flags(&mut self, flags: &[(u16, u32)]) -> Result<()> {
        let mut table = vec![0u32; PORT_ENTRIES as usize];
        for (port, f) in flags {
            table[*port as usize] |= f;
        }
        for (port, f) in table.iter().enumerate() {
            let current = self
                .ports
                .get(&(port as u32), 0)
                .map_err(|e| map_err("PORTS", e))?;
            if current != *f {
                self.ports
                    .set(port as u32, *f, 0)
                    .map_err(|e| map_err("PORTS", e))?;
            }
        }
        Ok(())
    }

    /// Entries and capacity of the rule tries and the source table.
    /// Counting walks the maps, so call it at scrape/status time, not per packet.
    pub fn map_fill(&self) -> Result<Vec<MapFill>> {
        let count = |n: usize| n as u64;
        let block = self.entries(RuleKind::Block)?;
        let allow = self.entries(RuleKind::Allow)?;
        let v4 = |v: &Vec<(IpNet, RuleValue)>| {
            count(v.iter().filter(|(n, _)| matches!(n, IpNet::V4(_))).count())
        };
        let v6 = |v: &Vec<(IpNet, RuleValue)>| {
            count(v.iter().filter(|(n, _)| matches!(n, IpNet::V6(_))).count())
        };
        Ok(vec![
            MapFill {
                name: "block_v4",
                entries: v4(&block),
                capacity: BLOCK_V4_CAPACITY as u64,
            },
            MapFill {
                name: "block_v6",
                entries: v6(&block),
                capacity: BLOCK_V6_CAPACITY as u64,
            },
            MapFill {
                name: "allow_v4",
                entries: v4(&allow),
                capacity: ALLOW_V4_CAPACITY as u64,
            },
            MapFill {
                name: "allow_v6",
                entries: v6(&allow),
                capacity: ALLOW_V6_CAPACITY as u64,
            },
            MapFill {
                name: "sources",
                entries: self.sources.keys().filter(|k| k.is_ok()).count() as u64,
                capacity: self.source_capacity as u64,
            },
        ])
    }

    pub fn events(&self) -> Result<Events> {
        let mut sums = [0u64; EVENT_ENTRIES as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            let per_cpu = self
                .events
                .get(&(i as u32), 0)
                .map_err(|e| map_err("EVENTS", e))?;
            *sum = per_cpu.iter().sum();
        }
        Ok(Events {
            sources_inserted: sums[EVENT_SOURCE_INSERT as usize],
            samples: sums[EVENT_SAMPLE as usize],
            samples_capped: sums[EVENT_SAMPLE_CAPPED as usize],
            samples_lost: sums[EVENT_SAMPLE_LOST as usize],
            syn_no_listener: sums[EVENT_SYN_NO_LISTENER as usize],
        })
    }

    /// Hands the sample ring buffer to its reader (once).
    pub fn take_samples(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.samples.take()
    }

    /// Adds a prefix to the allow or block trie. An entry that is already
    /// there is left alone, so its hit counters survive a re-block.
    pub fn insert(&mut self, kind: RuleKind, net: &IpNet) -> Result<()> {
        const BPF_NOEXIST: u64 = 1;
        let value = RuleValue::default();
        let res = match (kind, net) {
            (RuleKind::Allow, IpNet::V4(n)) => self.allow_v4.insert(&key_v4(n), value, BPF_NOEXIST),
            (RuleKind::Block, IpNet::V4(n)) => self.block_v4.insert(&key_v4(n), value, BPF_NOEXIST),
            (RuleKind::Allow, IpNet::V6(n)) => self.allow_v6.insert(&key_v6(n), value, BPF_NOEXIST),
            (RuleKind::Block, IpNet::V6(n)) => self.block_v6.insert(&key_v6(n), value, BPF_NOEXIST),
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                let (map, capacity) = trie_name(kind, net);
                if matches!(errno(&e), Some(libc::ENOSPC) | Some(libc::E2BIG)) {
                    Err(DatapathError::MapFull { map, capacity })
                } else {
                    Err(map_err(map, e))
                }
            }
        }
    }

    /// Removes a prefix; removing an absent prefix is not an error.
    pub fn remove(&mut self, kind: RuleKind, net: &IpNet) -> Result<()> {
        let res = match (kind, net) {
            (RuleKind::Allow, IpNet::V4(n)) => self.allow_v4.remove(&key_v4(n)),
            (RuleKind::Block, IpNet::V4(n)) => self.block_v4.remove(&key_v4(n)),
            (RuleKind::Allow, IpNet::V6(n)) => self.allow_v6.remove(&key_v6(n)),
            (RuleKind::Block, IpNet::V6(n)) => self.block_v6.remove(&key_v6(n)),
        };
        match res {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(map_err(trie_name(kind, net).0, e)),
        }
    }

    /// Every prefix currently in the allow or block tries, with hit counters.
    pub fn entries(&self, kind: RuleKind) -> Result<Vec<(IpNet, RuleValue)>> {
        let (v4, v6) = match kind {
            RuleKind::Allow => (&self.allow_v4, &self.allow_v6),
            RuleKind::Block => (&self.block_v4, &self.block_v6),
        };
        let mut out = Vec::new();
        for item in v4.iter() {
            let (k, v) = item.map_err(|e| map_err(trie_name(kind, &v4_any()).0, e))?;
            let addr = std::net::Ipv4Addr::from(k.data());
            if let Ok(n) = ipnet::Ipv4Net::new(addr, k.prefix_len() as u8) {
                out.push((IpNet::V4(n), v));
            }
        }
        for item in v6.iter() {
            let (k, v) = item.map_err(|e| map_err(trie_name(kind, &v6_any()).0, e))?;
            let addr = std::net::Ipv6Addr::from(k.data());
            if let Ok(n) = ipnet::Ipv6Net::new(addr, k.prefix_len() as u8) {
                out.push((IpNet::V6(n), v));
            }
        }
        Ok(out)
    }

    /// Counters summed over all CPUs, one cell per (reason, class).
    pub fn counters(&self) -> Result<Vec<(Reason, Class, Counter)>> {
        let mut out = Vec::with_capacity(Reason::COUNT * Class::COUNT);
        for reason in Reason::ALL {
            for class in Class::ALL {
                let idx = counter_index(reason, class);
                let per_cpu = self
                    .counters
                    .get(&idx, 0)
                    .map_err(|e| map_err(MAP_COUNTERS_NAME, e))?;
                let sum = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
                out.push((reason, class, sum));
            }
        }
        Ok(out)
    }

    /// Detaches the program and removes every pin: enforcement stops.
    pub fn detach_and_unpin(&mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            let fd_link = link.unpin().map_err(|e| pin_err(&self.pin_dir, e))?;
            drop(fd_link);
        }
        for name in PINNED_MAPS.iter().copied() {
            let path = self.pin_dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(pin_err(&path, e)),
            }
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
        info!(iface = %self.iface, "XDP program detached and pins removed");
        Ok(())
    }
}

const MAP_CONFIG_NAME: &str = "CONFIG";
const MAP_COUNTERS_NAME: &str = "COUNTERS";

fn key_v4(n: &ipnet::Ipv4Net) -> Key<[u8; 4]> {
    Key::new(n.prefix_len() as u32, n.network().octets())
}

fn key_v6(n: &ipnet::Ipv6Net) -> Key<[u8; 16]> {
    Key::new(n.prefix_len() as u32, n.network().octets())
}

fn v4_any() -> IpNet {
    IpNet::from(IpAddr::from([0u8; 4]))
}

fn v6_any() -> IpNet {
    IpNet::from(IpAddr::from([0u8; 16]))
}

fn trie_name(kind: RuleKind, net: &IpNet) -> (&'static str, u32) {
    match (kind, net) {
        (RuleKind::Allow, IpNet::V4(_)) => ("IPv4 allowlist", ALLOW_V4_CAPACITY),
        (RuleKind::Allow, IpNet::V6(_)) => ("IPv6 allowlist", ALLOW_V6_CAPACITY),
        (RuleKind::Block, IpNet::V4(_)) => ("IPv4 blocklist", BLOCK_V4_CAPACITY),
        (RuleKind::Block, IpNet::V6(_)) => ("IPv6 blocklist", BLOCK_V6_CAPACITY),
    }
}

fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

fn map_err(map: &'static str, e: MapError) -> DatapathError {
    DatapathError::Map {
        map,
        reason: e.to_string(),
    }
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Pin {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| DatapathError::Load(format!("no map {name} in object")))?;
    T::try_from(map).map_err(|e| map_err(name, e))
}

/// Reuses the link a previous daemon pinned: the new program replaces the
/// old one inside the same link, atomically. A stale pin (its interface is
/// gone) is removed and `None` returned so we attach afresh.
fn adopt(prog: &mut Xdp, link_path: &Path) -> Option<PinnedLink> {
    if !link_path.exists() {
        return None;
    }
    let pinned = match PinnedLink::from_pin(link_path) {
        Ok(p) => p,
        Err(e) => {
            warn!(path = %link_path.display(), error = %e, "cannot open pinned link; attaching afresh");
            let _ = std::fs::remove_file(link_path);
            return None;
        }
    };
    let fd_link = FdLink::from(pinned);
    let xdp_link = match aya::programs::xdp::XdpLink::try_from(fd_link) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "pinned link is not an XDP link; attaching afresh");
            let _ = std::fs::remove_file(link_path);
            return None;
        }
    };
    let id = match prog.attach_to_link(xdp_link) {
        Ok(id) => id,
        Err(e) => {
            warn!(error = %e, "cannot update the pinned link (interface gone?); attaching afresh");
            let _ = std::fs::remove_file(link_path);
            return None;
        }
    };
    let link = prog.take_link(id).ok()?;
    let fd_link = FdLink::try_from(link).ok()?;
    // Still pinned at the same path: take the file back as our PinnedLink.
    drop(fd_link);
    match PinnedLink::from_pin(link_path) {
        Ok(p) => {
            info!(path = %link_path.display(), "adopted the pinned XDP link; enforcement never stopped");
            Some(p)
        }
        Err(_) => None,
    }
}

fn attach(
    prog: &mut Xdp,
    iface: &str,
    mode: AttachMode,
    pin_dir: &Path,
) -> Result<(PinnedLink, &'static str)> {
    let tries: &[(XdpMode, &'static str)] = match mode {
        AttachMode::Native => &[(XdpMode::Driver, "native")],
        AttachMode::Skb => &[(XdpMode::Skb, "skb")],
        AttachMode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")],
    };
    let mut last_err = String::new();
    for (i, (xdp_mode, name)) in tries.iter().enumerate() {
        match prog.attach(iface, *xdp_mode) {
            Ok(id) => {
                if i > 0 {
                    warn!(iface, error = %last_err, "native XDP unavailable; attached in generic (skb) mode, which is slower");
                }
                let link = prog.take_link(id).map_err(|e| attach_err(iface, name, e))?;
                let fd_link = FdLink::try_from(link).map_err(|e| attach_err(iface, name, e))?;
                let link_path = pin_dir.join(format!("link-{name}"));
                let pinned = fd_link
                    .pin(&link_path)
                    .map_err(|e| pin_err(&link_path, e))?;
                info!(iface, mode = name, "XDP program attached");
                return Ok((pinned, name));
            }
            Err(ProgramError::UnknownInterface { name }) => {
                return Err(DatapathError::UnknownInterface(name));
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    Err(DatapathError::Attach {
        iface: iface.to_string(),
        mode: tries.last().map(|t| t.1).unwrap_or("auto"),
        reason: last_err,
    })
}

fn attach_err(iface: &str, mode: &'static str, e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Attach {
        iface: iface.to_string(),
        mode,
        reason: e.to_string(),
    }
}

/// bpffs must be mounted for pins; a fresh mount namespace (`ip netns exec`)
/// may not have it, so mount it when the parent of the pin root is empty.
fn ensure_bpffs(pin_root: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let bpffs = pin_root.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    let is_bpffs = nix::sys::statfs::statfs(bpffs)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false);
    if is_bpffs {
        return Ok(());
    }
    std::fs::create_dir_all(bpffs).map_err(|e| pin_err(bpffs, e))?;
    nix::mount::mount(
        Some("bpf"),
        bpffs,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| pin_err(bpffs, format!("not a bpffs and mounting one failed: {e}")))?;
    warn!(path = %bpffs.display(), "mounted bpffs (it was not mounted)");
    Ok(())
}
