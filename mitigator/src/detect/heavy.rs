//! Top talkers from the sampled packet headers, in bounded memory.
//!
//! Sources are aggregated at several prefix lengths (IPv4 /32 and /24, IPv6
//! /128, /64 and /48) and destinations by (address, port, protocol), for
//! all traffic and for each attack class. Each table is a weighted
//! Space-Saving summary of `capacity` counters (see [`super::spacesaving`]).
//!
//! Window: every counter decays exponentially with `half_life_secs` at each
//! [`TopTalkers::tick`], so an attacker that stopped fades out (its share
//! halves every half-life) while a new one shows within a tick.
//!
//! Estimates: a key's share is its part of the sampled weight of its scope
//! over the decay window; its packet (bit) rate is its share of sampled
//! packets (bytes) times the scope's offered rate in the last interval. That
//! rate comes from the counters (the [`Rates`] given to `tick`), which makes
//! the estimate right even when the sampler's per-second cap kicks in;
//! without rates it falls back to sampled packets times the sampling rate
//! (1 in N).
//!
//! Legitimate traffic: samples that were passed, in classes that were quiet
//! in the interval they were seen and in the next one (see `tick`), feed a
//! separate, slowly decaying summary. Auto-blocking uses it to leave alone
//! prefixes that carry a large part of the legitimate traffic.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use mitigator_common::{Action, Class, Reason, Sample};
use serde::{Deserialize, Serialize};

use super::{
    positive,
    rates::Rates,
    spacesaving::{Primary, SpaceSaving},
    AttackClass,
};

/// What ranks the talkers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weight {
    #[default]
    Packets,
    Bytes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopConfig {
    /// Counters per table (memory is bounded by about 60 tables of this many
    /// entries; the defaults take a few MB at most).
    pub capacity: usize,
    /// Half-life of the top-talker counters, seconds: how fast an attacker
    /// that stopped fades out.
    pub half_life_secs: f64,
    /// Half-life of the legitimate-traffic summary, seconds (long, so what
    /// was learned before an attack is still there during it).
    pub legit_half_life_secs: f64,
    /// Rank by packets or by bytes.
    pub weight: Weight,
}

impl Default for TopConfig {
    fn default() -> Self {
        Self {
            capacity: 1024,
            half_life_secs: 5.0,
            legit_half_life_secs: 600.0,
            weight: Weight::Packets,
        }
    }
}

impl TopConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(16..=65_536).contains(&self.capacity) {
            return Err((
                "capacity".to_string(),
                "must be between 16 and 65536".to_string(),
            ));
        }
        positive("half_life_secs", self.half_life_secs)?;
        positive("legit_half_life_secs", self.legit_half_life_secs)
    }
}

/// The prefix lengths sources are aggregated at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PrefixLevel {
    #[serde(rename = "v4/32")]
    V4Host,
    #[serde(rename = "v4/24")]
    V4Net,
    #[serde(rename = "v6/128")]
    V6Host,
    #[serde(rename = "v6/64")]
    V6Net64,
    #[serde(rename = "v6/48")]
    V6Net48,
}

impl PrefixLevel {
    pub const COUNT: usize = 5;
    pub const ALL: [PrefixLevel; Self::COUNT] = [
        PrefixLevel::V4Host,
        PrefixLevel::V4Net,
        PrefixLevel::V6Host,
        PrefixLevel::V6Net64,
        PrefixLevel::V6Net48,
    ];
    pub const V4: [PrefixLevel; 2] = [PrefixLevel::V4Host, PrefixLevel::V4Net];
    pub const V6: [PrefixLevel; 3] = [
        PrefixLevel::V6Host,
        PrefixLevel::V6Net64,
        PrefixLevel::V6Net48,
    ];

    const fn index(self) -> usize {
        self as usize
    }

    pub const fn prefix_len(self) -> u8 {
        match self {
            PrefixLevel::V4Host => 32,
            PrefixLevel::V4Net => 24,
            PrefixLevel::V6Host => 128,
            PrefixLevel::V6Net64 => 64,
            PrefixLevel::V6Net48 => 48,
        }
    }

    pub const fn is_v4(self) -> bool {
        matches!(self, PrefixLevel::V4Host | PrefixLevel::V4Net)
    }

    pub const fn name(self) -> &'static str {
        match self {
            PrefixLevel::V4Host => "v4/32",
            PrefixLevel::V4Net => "v4/24",
            PrefixLevel::V6Host => "v6/128",
            PrefixLevel::V6Net64 => "v6/64",
            PrefixLevel::V6Net48 => "v6/48",
        }
    }

    /// The prefix of this level holding `addr` (`None` for the other family).
    pub fn prefix_of(self, addr: IpAddr) -> Option<IpNet> {
        if addr.is_ipv4() != self.is_v4() {
            return None;
        }
        IpNet::new(addr, self.prefix_len()).ok().map(|n| n.trunc())
    }

    /// The level a prefix belongs to, if its length is one we track.
    pub fn of(prefix: &IpNet) -> Option<PrefixLevel> {
        PrefixLevel::ALL.into_iter().find(|l| {
            l.is_v4() == matches!(prefix, IpNet::V4(_)) && l.prefix_len() == prefix.prefix_len()
        })
    }
}

impl fmt::Display for PrefixLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// All traffic, or one attack class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    All,
    Class(AttackClass),
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::All,
        Scope::Class(AttackClass::Syn),
        Scope::Class(AttackClass::Udp),
        Scope::Class(AttackClass::Icmp),
        Scope::Class(AttackClass::Frag),
    ];

    const fn index(self) -> usize {
        match self {
            Scope::All => 0,
            Scope::Class(c) => 1 + c.index(),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Class(c) => c.name(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct DestKey {
    addr: IpAddr,
    port: u16,
    proto: u8,
}

#[derive(Clone, Debug)]
struct ScopeTables {
    sources: Vec<SpaceSaving<IpNet>>,
    /// Every sample of the scope goes here, so its totals are the scope's.
    dests: SpaceSaving<DestKey>,
    pending_samples: f64,
    pending_bytes: f64,
    /// Decayed offered packets and bytes, in step with `TopTalkers::norm`
    /// (from sample counts times the sampling rate when no rates are known).
    offered_packets: f64,
    offered_bytes: f64,
    /// Offered packets and bits per second of the last interval, from the
    /// counters.
    last_rate: Option<(f64, f64)>,
}

impl ScopeTables {
    fn new(capacity: usize, primary: Primary) -> Self {
        Self {
            sources: (0..PrefixLevel::COUNT)
                .map(|_| SpaceSaving::new(capacity, primary))
                .collect(),
            dests: SpaceSaving::new(capacity, primary),
            pending_samples: 0.0,
            pending_bytes: 0.0,
            offered_packets: 0.0,
            offered_bytes: 0.0,
            last_rate: None,
        }
    }
}

/// Legitimate (passed) samples of one interval, waiting to learn whether
/// their class was quiet.
#[derive(Clone, Debug)]
struct PendingLegit {
    levels: Vec<SpaceSaving<IpNet>>,
}

/// Number of pending-legit groups: the four attack classes, then plain TCP
/// and unclassified traffic (always committed).
const GROUPS: usize = AttackClass::COUNT + 1;
const OTHER_GROUP: usize = AttackClass::COUNT;

/// One source prefix in a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopSource {
    pub prefix: IpNet,
    /// Estimated packets per second from this prefix (in the scope).
    pub est_pps: f64,
    /// Estimated bits per second.
    pub est_bps: f64,
    /// Share (0..1) of the scope's sampled traffic (by the ranking weight).
    pub share: f64,
    /// Share (0..1) of the legitimate traffic (passed, in quiet classes).
    pub legit_share: f64,
    /// Samples behind the estimate (decayed; how much to trust it).
    pub samples: f64,
}

/// One destination (address, port, protocol) in a report. Port 0 for
/// protocols without ports and for non-first fragments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopDestination {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub est_pps: f64,
    pub est_bps: f64,
    pub share: f64,
}

/// The heaviest sources at one aggregation level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelTop {
    pub level: PrefixLevel,
    pub sources: Vec<TopSource>,
}

/// Top talkers of one scope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopScope {
    /// `all`, `syn`, `udp`, `icmp` or `frag`.
    pub scope: String,
    /// Offered rate of the scope over the decay window.
    pub pps: f64,
    pub bps: f64,
    pub sources: Vec<LevelTop>,
    pub destinations: Vec<TopDestination>,
}

/// What `mitigator top` shows: one document, ready for `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopReport {
    /// Unix seconds.
    pub at: u64,
    pub half_life_secs: f64,
    /// Sampling rate of the datapath (1 in N; 0 when sampling is off).
    pub sample_one_in: u32,
    /// Samples observed since the daemon started.
    pub samples: u64,
    pub weight: Weight,
    pub scopes: Vec<TopScope>,
}

/// Heavy hitters over the sampled headers. See the module documentation.
#[derive(Clone, Debug)]
pub struct TopTalkers {
    cfg: TopConfig,
    sample_one_in: u32,
    scopes: Vec<ScopeTables>,
    legit: Vec<SpaceSaving<IpNet>>,
    legit_total: f64,
    pending_legit: Vec<PendingLegit>,
    pending_legit_total: [f64; GROUPS],
    /// The interval before: passed samples of a quiet class wait here one
    /// more interval, and join the legitimate summary only if the next
    /// interval is quiet too (a flood that starts late in an interval
    /// leaves it under the threshold; its first packets are not legitimate).
    held_legit: Vec<PendingLegit>,
    held_legit_total: [f64; GROUPS],
    /// Decayed sum of tick lengths: offered / norm is a rate.
    norm: f64,
    last_tick_ms: Option<u64>,
    samples: u64,
}

impl TopTalkers {
    /// `sample_one_in`: the datapath's sampling rate (`Config::sample_every`).
    pub fn new(cfg: TopConfig, sample_one_in: u32) -> Self {
        let primary = match cfg.weight {
            Weight::Packets => Primary::Packets,
            Weight::Bytes => Primary::Bytes,
        };
        let k = cfg.capacity.max(16);
        // A pending table holds one interval's passed samples only.
        let pending_k = (k / 4).max(16);
        Self {
            sample_one_in,
            scopes: (0..Scope::ALL.len())
                .map(|_| ScopeTables::new(k, primary))
                .collect(),
            legit: (0..PrefixLevel::COUNT)
                .map(|_| SpaceSaving::new(k, primary))
                .collect(),
            legit_total: 0.0,
            pending_legit: (0..GROUPS)
                .map(|_| PendingLegit {
                    levels: (0..PrefixLevel::COUNT)
                        .map(|_| SpaceSaving::new(pending_k, primary))
                        .collect(),
                })
                .collect(),
            pending_legit_total: [0.0; GROUPS],
            held_legit: (0..GROUPS)
                .map(|_| PendingLegit {
                    levels: (0..PrefixLevel::COUNT)
                        .map(|_| SpaceSaving::new(pending_k, primary))
                        .collect(),
                })
                .collect(),
            held_legit_total: [0.0; GROUPS],
            norm: 0.0,
            last_tick_ms: None,
            samples: 0,
            cfg,
        }
    }

    pub fn config(&self) -> &TopConfig {
        &self.cfg
    }

    pub fn set_sample_one_in(&mut self, n: u32) {
        self.sample_one_in = n;
    }

    /// Samples observed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Counters held over all tables (bounded by the configuration,
    /// whatever the number of distinct sources).
    pub fn counters_held(&self) -> usize {
        self.scopes
            .iter()
            .map(|s| s.dests.len() + s.sources.iter().map(SpaceSaving::len).sum::<usize>())
            .sum::<usize>()
            + self.legit.iter().map(SpaceSaving::len).sum::<usize>()
            + self
                .pending_legit
                .iter()
                .chain(&self.held_legit)
                .flat_map(|p| p.levels.iter().map(SpaceSaving::len))
                .sum::<usize>()
    }

    /// The most counters the tables can ever hold.
    pub fn counters_bound(&self) -> usize {
        let k = self.cfg.capacity.max(16);
        let pending_k = (k / 4).max(16);
        Scope::ALL.len() * (PrefixLevel::COUNT + 1) * k
            + PrefixLevel::COUNT * k
            + 2 * GROUPS * PrefixLevel::COUNT * pending_k
    }

    /// Counts one sampled packet header.
    pub fn observe(&mut self, s: &Sample) {
        let (src, dst) = match s.family {
            4 => {
                let a: [u8; 4] = s.src[..4].try_into().expect("4 bytes");
                let b: [u8; 4] = s.dst[..4].try_into().expect("4 bytes");
                (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b)))
            }
            6 => (
                IpAddr::V6(Ipv6Addr::from(s.src)),
                IpAddr::V6(Ipv6Addr::from(s.dst)),
            ),
            _ => return,
        };
        self.samples += 1;
        let class = Class::from_u32(s.class as u32).and_then(AttackClass::from_class);
        let passed = Reason::from_u32(s.reason as u32).is_some_and(|r| r.action() == Action::Pass);
        let bytes = s.len as f64;
        let levels: &[PrefixLevel] = if src.is_ipv4() {
            &PrefixLevel::V4
        } else {
            &PrefixLevel::V6
        };
        let dest = DestKey {
            addr: dst,
            port: s.dst_port,
            proto: s.proto,
        };
        for scope in [Some(Scope::All), class.map(Scope::Class)]
            .into_iter()
            .flatten()
        {
            let t = &mut self.scopes[scope.index()];
            t.pending_samples += 1.0;
            t.pending_bytes += bytes;
            for &level in levels {
                if let Some(net) = level.prefix_of(src) {
                    t.sources[level.index()].add(net, 1.0, bytes);
                }
            }
            t.dests.add(dest, 1.0, bytes);
        }
        if passed {
            let group = class.map_or(OTHER_GROUP, AttackClass::index);
            for &level in levels {
                if let Some(net) = level.prefix_of(src) {
                    self.pending_legit[group].levels[level.index()].add(net, 1.0, bytes);
                }
            }
            self.pending_legit_total[group] += match self.cfg.weight {
                Weight::Packets => 1.0,
                Weight::Bytes => bytes,
            };
        }
    }

    /// Closes an interval at `now_ms` (unix milliseconds): the passed samples
    /// of plain TCP / unclassified traffic join the legitimate-traffic
    /// summary; those of the classes in `quiet` are held one more interval
    /// and join it only if the class is in `quiet` at the next tick too (a
    /// flood that starts late in an interval leaves that interval under the
    /// threshold); everything else is discarded; `rates` (the same
    /// interval's counters, when known) sets the scale of the estimates;
    /// then everything decays by the time elapsed.
    /// Call it once per interval, after the escalation step has used the
    /// interval's samples.
    pub fn tick(&mut self, now_ms: u64, rates: Option<&Rates>, quiet: &[AttackClass]) {
        for group in 0..GROUPS {
            let quiet_now = group == OTHER_GROUP || quiet.iter().any(|c| c.index() == group);
            // Held samples (a quiet interval's) are legitimate when this
            // interval is quiet too; plain TCP and unclassified traffic
            // has no attack class and is committed at once.
            if quiet_now {
                for (level, table) in self.held_legit[group].levels.iter().enumerate() {
                    self.legit[level].merge_from(table);
                }
                self.legit_total += self.held_legit_total[group];
            }
            for table in &mut self.held_legit[group].levels {
                table.clear();
            }
            self.held_legit_total[group] = 0.0;
            if quiet_now {
                if group == OTHER_GROUP {
                    for (level, table) in self.pending_legit[group].levels.iter().enumerate() {
                        self.legit[level].merge_from(table);
                    }
                    self.legit_total += self.pending_legit_total[group];
                } else {
                    std::mem::swap(&mut self.pending_legit[group], &mut self.held_legit[group]);
                    self.held_legit_total[group] = self.pending_legit_total[group];
                }
            }
            for table in &mut self.pending_legit[group].levels {
                table.clear();
            }
            self.pending_legit_total[group] = 0.0;
        }

        let dt = match self.last_tick_ms {
            Some(last) if now_ms > last => (now_ms - last) as f64 / 1000.0,
            Some(_) => return,
            None => rates.map_or(0.0, |r| r.secs),
        };
        self.last_tick_ms = Some(now_ms);
        let one_in = self.sample_one_in.max(1) as f64;
        for scope in Scope::ALL {
            let t = &mut self.scopes[scope.index()];
            let offered = rates.map(|r| match scope {
                Scope::All => &r.total,
                Scope::Class(c) => r.class(c),
            });
            match offered {
                Some(o) => {
                    t.offered_packets += o.packets as f64;
                    t.offered_bytes += o.bytes as f64;
                    t.last_rate = Some((o.pps, o.bps));
                }
                None => {
                    t.offered_packets += t.pending_samples * one_in;
                    t.offered_bytes += t.pending_bytes * one_in;
                    t.last_rate = None;
                }
            }
            t.pending_samples = 0.0;
            t.pending_bytes = 0.0;
        }
        self.norm += dt;

        let f = 0.5f64.powf(dt / self.cfg.half_life_secs);
        self.norm *= f;
        for t in &mut self.scopes {
            t.offered_packets *= f;
            t.offered_bytes *= f;
            for table in &mut t.sources {
                table.decay(f);
            }
            t.dests.decay(f);
        }
        let fl = 0.5f64.powf(dt / self.cfg.legit_half_life_secs);
        for table in &mut self.legit {
            table.decay(fl);
        }
        self.legit_total *= fl;
    }

    /// Offered packets and bits per second of a scope: the last interval's
    /// from the counters when `tick` was given rates, else the sampled
    /// rate times the sampling rate, averaged over the decay window.
    pub fn scope_rate(&self, scope: Scope) -> (f64, f64) {
        let t = &self.scopes[scope.index()];
        if let Some(r) = t.last_rate {
            return r;
        }
        if self.norm <= 0.0 {
            return (0.0, 0.0);
        }
        (
            t.offered_packets / self.norm,
            t.offered_bytes * 8.0 / self.norm,
        )
    }

    /// The `n` heaviest sources of all traffic at `level`.
    pub fn top_sources(&self, level: PrefixLevel, n: usize) -> Vec<TopSource> {
        self.top_sources_in(Scope::All, level, n)
    }

    /// The `n` heaviest sources of `scope` at `level`, heaviest first.
    pub fn top_sources_in(&self, scope: Scope, level: PrefixLevel, n: usize) -> Vec<TopSource> {
        let t = &self.scopes[scope.index()];
        t.sources[level.index()]
            .top(n)
            .into_iter()
            .filter(|s| s.count > 0.0)
            .map(|s| self.source_entry(scope, level, s))
            .collect()
    }

    /// One prefix's entry in `scope`, if the prefix is of a tracked length
    /// and heavy enough to be held.
    pub fn source(&self, scope: Scope, prefix: &IpNet) -> Option<TopSource> {
        let level = PrefixLevel::of(prefix)?;
        let t = &self.scopes[scope.index()];
        let slot = t.sources[level.index()].get(prefix)?;
        Some(self.source_entry(scope, level, slot))
    }

    fn source_entry(
        &self,
        scope: Scope,
        level: PrefixLevel,
        s: &super::spacesaving::Slot<IpNet>,
    ) -> TopSource {
        let t = &self.scopes[scope.index()];
        let table = &t.sources[level.index()];
        let (pps, bps) = self.scope_rate(scope);
        TopSource {
            prefix: s.key,
            est_pps: ratio(table.packets_of(s), t.dests.total_packets()) * pps,
            est_bps: ratio(table.bytes_of(s), t.dests.total_bytes()) * bps,
            share: ratio(s.count, t.dests.total()),
            legit_share: self.legit_share(&s.key),
            samples: table.packets_of(s),
        }
    }

    /// Share (0..1) of the legitimate traffic (passed samples of quiet
    /// classes, over `legit_half_life_secs`) that came from `prefix`; 0 for
    /// a prefix of an untracked length or one too light to be held.
    pub fn legit_share(&self, prefix: &IpNet) -> f64 {
        let Some(level) = PrefixLevel::of(prefix) else {
            return 0.0;
        };
        self.legit[level.index()]
            .get(prefix)
            .map_or(0.0, |s| ratio(s.count, self.legit_total))
    }

    /// The `n` most targeted destinations of all traffic.
    pub fn top_destinations(&self, n: usize) -> Vec<TopDestination> {
        self.top_destinations_in(Scope::All, n)
    }

    pub fn top_destinations_in(&self, scope: Scope, n: usize) -> Vec<TopDestination> {
        let t = &self.scopes[scope.index()];
        let (pps, bps) = self.scope_rate(scope);
        t.dests
            .top(n)
            .into_iter()
            .filter(|s| s.count > 0.0)
            .map(|s| TopDestination {
                addr: s.key.addr,
                port: s.key.port,
                proto: s.key.proto,
                est_pps: ratio(t.dests.packets_of(s), t.dests.total_packets()) * pps,
                est_bps: ratio(t.dests.bytes_of(s), t.dests.total_bytes()) * bps,
                share: ratio(s.count, t.dests.total()),
            })
            .collect()
    }

    /// The report for `mitigator top`: the `n` heaviest of everything, for
    /// every scope and level. `at` is unix seconds.
    pub fn report(&self, n: usize, at: u64) -> TopReport {
        TopReport {
            at,
            half_life_secs: self.cfg.half_life_secs,
            sample_one_in: self.sample_one_in,
            samples: self.samples,
            weight: self.cfg.weight,
            scopes: Scope::ALL
                .into_iter()
                .map(|scope| {
                    let (pps, bps) = self.scope_rate(scope);
                    TopScope {
                        scope: scope.name().to_string(),
                        pps,
                        bps,
                        sources: PrefixLevel::ALL
                            .into_iter()
                            .map(|level| LevelTop {
                                level,
                                sources: self.top_sources_in(scope, level, n),
                            })
                            .collect(),
                        destinations: self.top_destinations_in(scope, n),
                    }
                })
                .collect(),
        }
    }
}

fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part / whole).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::detect::{rates::ClassRate, TestRng};

    /// A sampled packet from `src` to `dst:port` of `class` with `reason`.
    pub(crate) fn sample(src: &str, dst: &str, port: u16, class: Class, reason: Reason) -> Sample {
        let src = IpAddr::from_str(src).unwrap();
        let mut dst = IpAddr::from_str(dst).unwrap();
        // Keep the families matched whatever destination the test names.
        if src.is_ipv4() != dst.is_ipv4() {
            dst = if src.is_ipv4() {
                "192.0.2.1".parse().unwrap()
            } else {
                "2001:db8::1".parse().unwrap()
            };
        }
        let mut s = Sample {
            dst_port: port,
            src_port: 40000,
            len: 100,
            class: class as u8,
            reason: reason as u8,
            proto: match class {
                Class::Udp => 17,
                Class::Icmp => 1,
                _ => 6,
            },
            ..Sample::default()
        };
        match (src, dst) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                s.family = 4;
                s.src[..4].copy_from_slice(&a.octets());
                s.dst[..4].copy_from_slice(&b.octets());
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                s.family = 6;
                s.src = a.octets();
                s.dst = b.octets();
            }
            _ => panic!("mixed families"),
        }
        s
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_levels_truncate_addresses() {
        let a: IpAddr = "198.51.100.77".parse().unwrap();
        assert_eq!(
            PrefixLevel::V4Host.prefix_of(a),
            Some(net("198.51.100.77/32"))
        );
        assert_eq!(
            PrefixLevel::V4Net.prefix_of(a),
            Some(net("198.51.100.0/24"))
        );
        assert_eq!(PrefixLevel::V6Net64.prefix_of(a), None);
        let b: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(
            PrefixLevel::V6Host.prefix_of(b),
            Some(net("2001:db8:1:2:3:4:5:6/128"))
        );
        assert_eq!(
            PrefixLevel::V6Net64.prefix_of(b),
            Some(net("2001:db8:1:2::/64"))
        );
        assert_eq!(
            PrefixLevel::V6Net48.prefix_of(b),
            Some(net("2001:db8:1::/48"))
        );
        assert_eq!(
            PrefixLevel::of(&net("10.0.0.0/24")),
            Some(PrefixLevel::V4Net)
        );
        assert_eq!(
            PrefixLevel::of(&net("2001:db8::/64")),
            Some(PrefixLevel::V6Net64)
        );
        assert_eq!(PrefixLevel::of(&net("10.0.0.0/16")), None);
        assert_eq!(
            serde_json::to_string(&PrefixLevel::V6Net48).unwrap(),
            "\"v6/48\""
        );
    }

    /// 10,000 random sources at 3 packets each plus 5 heavy sources at 2,000
    /// each: the top 5 are exactly the heavy ones, with close estimates,
    /// in a fixed number of counters.
    #[test]
    fn finds_the_five_heavy_sources_among_ten_thousand_in_bounded_memory() {
        let cfg = TopConfig {
            capacity: 256,
            ..TopConfig::default()
        };
        let mut top = TopTalkers::new(cfg, 1);
        let mut rng = TestRng(42);
        let random: Vec<String> = (0..10_000)
            .map(|_| {
                let v = rng.next();
                format!(
                    "{}.{}.{}.{}",
                    11 + v % 200,
                    (v >> 8) % 256,
                    (v >> 16) % 256,
                    1 + (v >> 24) % 254
                )
            })
            .collect();
        let heavy: Vec<String> = (1..=5).map(|i| format!("203.0.113.{}", i * 10)).collect();
        // Interleave: heavy sources send in proportion throughout.
        let mut stream: Vec<&str> = Vec::new();
        for _ in 0..3 {
            stream.extend(random.iter().map(String::as_str));
        }
        for _ in 0..2_000 {
            stream.extend(heavy.iter().map(String::as_str));
        }
        for i in (1..stream.len()).rev() {
            stream.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut max_held = 0;
        for src in &stream {
            top.observe(&sample(src, "192.0.2.1", 53, Class::Udp, Reason::Pass));
            max_held = max_held.max(top.counters_held());
        }
        assert!(max_held <= top.counters_bound());
        assert!(top.counters_held() <= 5 * 6 * 256 + 5 * 256 + 5 * 5 * 64);
        // Rates: the whole stream arrived in 10 s.
        let total = stream.len() as u64;
        let cr = ClassRate {
            packets: total,
            bytes: total * 100,
            pps: total as f64 / 10.0,
            bps: total as f64 * 800.0 / 10.0,
            ..Default::default()
        };
        let rates = Rates {
            secs: 10.0,
            udp: cr,
            total: cr,
            ..Default::default()
        };
        top.tick(10_000, Some(&rates), &[]);
        let got = top.top_sources_in(Scope::Class(AttackClass::Udp), PrefixLevel::V4Host, 5);
        let mut names: Vec<String> = got.iter().map(|s| s.prefix.addr().to_string()).collect();
        names.sort();
        assert_eq!(names, heavy);
        for s in &got {
            // 2,000 of 40,000 packets: 5 %, 200 pps.
            assert!((s.share - 0.05).abs() < 0.01, "{s:?}");
            assert!((s.est_pps - 200.0).abs() < 40.0, "{s:?}");
            assert!((s.est_bps - 200.0 * 800.0).abs() < 40.0 * 800.0, "{s:?}");
        }
        // The same in the all-traffic scope; the heavy /24 leads the /24s.
        assert_eq!(top.top_sources(PrefixLevel::V4Host, 5).len(), 5);
        let nets = top.top_sources(PrefixLevel::V4Net, 1);
        assert_eq!(nets[0].prefix, net("203.0.113.0/24"));
        assert!((nets[0].share - 0.25).abs() < 0.02);
    }

    #[test]
    fn aggregates_ipv6_at_128_64_and_48_and_destinations_by_port() {
        let mut top = TopTalkers::new(TopConfig::default(), 64);
        top.tick(0, None, &AttackClass::ALL);
        // One /48 with four /64s, one of which has two hosts.
        let srcs = [
            "2001:db8:aa:1::1",
            "2001:db8:aa:1::2",
            "2001:db8:aa:2::1",
            "2001:db8:aa:3::1",
            "2001:db8:aa:4::1",
        ];
        for (i, s) in srcs.iter().enumerate() {
            for _ in 0..(10 * (i + 1)) {
                top.observe(&sample(
                    s,
                    "2001:db8::80",
                    443,
                    Class::TcpSyn,
                    Reason::TxSynCookie,
                ));
            }
        }
        for _ in 0..60 {
            top.observe(&sample(
                "2001:db8:ff::9",
                "2001:db8::80",
                22,
                Class::TcpSyn,
                Reason::Pass,
            ));
        }
        top.tick(1_000, None, &AttackClass::ALL);
        let scope = Scope::Class(AttackClass::Syn);
        let h = top.top_sources_in(scope, PrefixLevel::V6Host, 1);
        assert_eq!(h[0].prefix, net("2001:db8:ff::9/128"));
        let n64 = top.top_sources_in(scope, PrefixLevel::V6Net64, 3);
        let n64: Vec<IpNet> = n64.iter().map(|s| s.prefix).collect();
        assert_eq!(
            n64,
            vec![
                net("2001:db8:ff::/64"),
                net("2001:db8:aa:4::/64"),
                net("2001:db8:aa:3::/64")
            ]
        );
        let n48 = top.top_sources_in(scope, PrefixLevel::V6Net48, 2);
        assert_eq!(n48[0].prefix, net("2001:db8:aa::/48"));
        assert!((n48[0].share - 150.0 / 210.0).abs() < 1e-9);
        // Sampled 1 in 64: 150 samples over 1 s is 9,600 pps.
        assert!((n48[0].est_pps - 150.0 * 64.0).abs() < 1e-6, "{:?}", n48[0]);
        // A 1-host /64 at 30 samples.
        let one = top.source(scope, &net("2001:db8:aa:2::/64")).unwrap();
        assert!((one.share - 30.0 / 210.0).abs() < 1e-9);
        let d = top.top_destinations_in(scope, 2);
        assert_eq!(
            (d[0].addr.to_string().as_str(), d[0].port),
            ("2001:db8::80", 443)
        );
        assert!((d[0].share - 150.0 / 210.0).abs() < 1e-9);
        assert_eq!(d[1].port, 22);
        assert!(top.top_sources_in(scope, PrefixLevel::V4Host, 5).is_empty());
        // Only passed samples are legitimate traffic, once the next interval
        // is quiet too.
        top.tick(2_000, None, &AttackClass::ALL);
        assert_eq!(top.legit_share(&net("2001:db8:ff::9/128")), 1.0);
        assert_eq!(top.legit_share(&net("2001:db8:aa::/48")), 0.0);
    }

    #[test]
    fn old_attackers_fade_with_the_half_life() {
        let cfg = TopConfig {
            half_life_secs: 2.0,
            ..TopConfig::default()
        };
        let mut top = TopTalkers::new(cfg, 1);
        let total = |n: u64| {
            let cr = ClassRate {
                packets: n,
                bytes: n * 100,
                pps: n as f64,
                bps: n as f64 * 800.0,
                ..Default::default()
            };
            Rates {
                secs: 1.0,
                total: cr,
                udp: cr,
                ..Default::default()
            }
        };
        top.tick(0, None, &[]);
        for _ in 0..1_000 {
            top.observe(&sample(
                "198.51.100.1",
                "192.0.2.1",
                53,
                Class::Udp,
                Reason::DropUdpRate,
            ));
        }
        top.tick(1_000, Some(&total(1_000)), &[]);
        let first = top.top_sources(PrefixLevel::V4Host, 1)[0].clone();
        assert_eq!(first.share, 1.0);
        assert!((first.est_pps - 1_000.0).abs() < 1e-6, "{first:?}");
        // The attacker stops; another source sends 100 per second.
        for t in 2..=10u64 {
            for _ in 0..100 {
                top.observe(&sample(
                    "198.51.100.2",
                    "192.0.2.1",
                    53,
                    Class::Udp,
                    Reason::Pass,
                ));
            }
            top.tick(t * 1_000, Some(&total(100)), &[]);
        }
        let now = top.top_sources(PrefixLevel::V4Host, 2);
        assert_eq!(now[0].prefix, net("198.51.100.2/32"));
        let old = top.source(Scope::All, &net("198.51.100.1/32")).unwrap();
        // Ten ticks at a 2 s half-life: 1000 * 2^-5 ~ 31 left against ~230.
        assert!(old.share < 0.15, "{old:?}");
        assert!(old.est_pps < 100.0);
        assert!((now[0].est_pps - 100.0).abs() < 15.0, "{:?}", now[0]);
    }

    #[test]
    fn passed_traffic_of_a_class_under_attack_is_not_legitimate() {
        let mut top = TopTalkers::new(TopConfig::default(), 1);
        for _ in 0..100 {
            top.observe(&sample(
                "198.51.100.1",
                "192.0.2.1",
                53,
                Class::Udp,
                Reason::Pass,
            ));
            top.observe(&sample(
                "198.51.100.2",
                "192.0.2.1",
                443,
                Class::Tcp,
                Reason::Pass,
            ));
        }
        // UDP was hot in this interval: its passed samples are discarded;
        // plain TCP always counts.
        top.tick(
            1_000,
            None,
            &[AttackClass::Syn, AttackClass::Icmp, AttackClass::Frag],
        );
        assert_eq!(top.legit_share(&net("198.51.100.1/32")), 0.0);
        assert_eq!(top.legit_share(&net("198.51.100.2/32")), 1.0);
        for _ in 0..100 {
            top.observe(&sample(
                "198.51.100.1",
                "192.0.2.1",
                53,
                Class::Udp,
                Reason::Pass,
            ));
        }
        top.tick(2_000, None, &AttackClass::ALL);
        // Held until the next interval is quiet too.
        assert_eq!(top.legit_share(&net("198.51.100.1/32")), 0.0);
        top.tick(2_500, None, &AttackClass::ALL);
        let s = top.legit_share(&net("198.51.100.1/32"));
        assert!((s - 0.5).abs() < 0.01, "{s}");
        assert!((top.legit_share(&net("198.51.100.0/24")) - 1.0).abs() < 1e-9);
        // Dropped traffic never is.
        for _ in 0..1000 {
            top.observe(&sample(
                "198.51.100.3",
                "192.0.2.1",
                53,
                Class::Udp,
                Reason::DropUdpRate,
            ));
        }
        top.tick(3_000, None, &AttackClass::ALL);
        assert_eq!(top.legit_share(&net("198.51.100.3/32")), 0.0);
    }

    /// A flood that starts late in an interval leaves it under the threshold
    /// (the class is quiet at that tick): its first packets must not count
    /// as legitimate, or the guard would protect the attackers from
    /// auto-blocking for the legitimate summary's half-life.
    #[test]
    fn a_flood_starting_late_in_a_quiet_interval_is_not_legitimate() {
        let mut top = TopTalkers::new(TopConfig::default(), 1);
        let udp = |top: &mut TopTalkers, src: &str, n: usize| {
            for _ in 0..n {
                top.observe(&sample(src, "192.0.2.1", 9000, Class::Udp, Reason::Pass));
            }
        };
        for t in 1..=3 {
            udp(&mut top, "198.51.100.7", 50);
            top.tick(t * 1_000, None, &AttackClass::ALL);
        }
        // The flood's first tenth of a second: still a quiet interval.
        udp(&mut top, "198.51.100.7", 50);
        udp(&mut top, "203.0.113.66", 200);
        top.tick(4_000, None, &AttackClass::ALL);
        // Then UDP is hot.
        udp(&mut top, "203.0.113.66", 2_000);
        top.tick(
            5_000,
            None,
            &[AttackClass::Syn, AttackClass::Icmp, AttackClass::Frag],
        );
        assert_eq!(top.legit_share(&net("203.0.113.66/32")), 0.0);
        assert!((top.legit_share(&net("198.51.100.7/32")) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn report_serializes_for_json_output() {
        let mut top = TopTalkers::new(TopConfig::default(), 8);
        top.observe(&sample(
            "192.0.2.9",
            "198.51.100.1",
            80,
            Class::TcpSyn,
            Reason::Pass,
        ));
        top.tick(1_000, None, &AttackClass::ALL);
        let r = top.report(3, 1_700_000_000);
        assert_eq!(r.scopes.len(), 5);
        assert_eq!(r.scopes[0].scope, "all");
        assert_eq!(r.scopes[1].scope, "syn");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"prefix\":\"192.0.2.9/32\""), "{json}");
        assert!(json.contains("\"level\":\"v4/24\""));
        let back: TopReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn unknown_family_is_ignored() {
        let mut top = TopTalkers::new(TopConfig::default(), 1);
        let s = Sample {
            family: 0,
            ..Sample::default()
        };
        top.observe(&s);
        assert_eq!(top.samples(), 0);
        assert_eq!(top.counters_held(), 0);
    }
}
