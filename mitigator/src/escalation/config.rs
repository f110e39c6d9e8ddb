//! Escalation settings (serde, every field with a default) and the pure
//! mapping from the current levels to the datapath's run-time config.

use mitigator_common::{
    Config, Gcra, FLAG_AMP_DROP, FLAG_PORT_CAP, FLAG_RATE_LIMIT, FLAG_SYN_COOKIES, FRAG_DROP,
    FRAG_RATE_LIMIT,
};
use serde::{Deserialize, Serialize};

use super::{Level, Levels};
use crate::detect::AttackClass;

/// Largest rate or burst accepted (packets, per second for rates).
const MAX_PACKETS: u32 = 10_000_000;

/// A per-source (or aggregate) rate limit. `rate = 0` means "not set";
/// `burst = 0` means a burst equal to the rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limit {
    pub rate: u32,
    pub burst: u32,
}

impl Limit {
    pub const fn new(rate: u32, burst: u32) -> Self {
        Self { rate, burst }
    }

    pub const fn is_set(&self) -> bool {
        self.rate > 0
    }

    pub const fn gcra(&self) -> Gcra {
        let burst = if self.burst == 0 {
            self.rate
        } else {
            self.burst
        };
        Gcra::per_second(self.rate, burst)
    }

    fn validate(&self, key: &str) -> Result<(), (String, String)> {
        if self.rate > MAX_PACKETS {
            return Err((format!("{key}.rate"), format!("must be ≤ {MAX_PACKETS}")));
        }
        if self.burst > MAX_PACKETS {
            return Err((format!("{key}.burst"), format!("must be ≤ {MAX_PACKETS}")));
        }
        Ok(())
    }
}

/// Thresholds and defences of one attack class.
///
/// The class is *hot* in an interval when its offered load reaches the
/// step-up threshold: `pps ≥ max(min_pps, baseline_factor × baseline pps)`,
/// or (when `min_bps > 0`) `bps ≥ max(min_bps, baseline_factor × baseline
/// bps)`. It is *quiet* when both are below `down_ratio` times those
/// thresholds; in between it is neither (hysteresis).
///
/// In a config file a class table may set only some fields; the others
/// keep that class's defaults.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassConfig {
    /// Absolute floor of the packet threshold (> 0).
    pub min_pps: f64,
    /// Absolute floor of the bit-rate threshold; 0 turns the bit-rate
    /// trigger off for this class.
    pub min_bps: f64,
    /// How many times the baseline counts as an attack.
    pub baseline_factor: f64,
    /// Highest level the ladder climbs to by itself (0-4). Level 4 is also
    /// only reached while `upstream` says the pipe is filling.
    pub max_level: Level,
    /// Level ≥ 1: per-source limit (only ever tightens the base config;
    /// rate 0 keeps the base limit).
    pub rate_limit: Limit,
    /// Level ≥ 2, by class: syn — unused (SYN cookies); udp — aggregate cap
    /// per destination port next to the amplification drop (rate 0: no port
    /// cap); icmp — the tighter per-source limit; frag — rate 0 drops
    /// non-first fragments, rate > 0 rate-limits them per source at it.
    pub defence: Limit,
}

impl ClassConfig {
    fn validate(&self, key: &str) -> Result<(), (String, String)> {
        let k = |f: &str| format!("{key}.{f}");
        if !(self.min_pps.is_finite() && self.min_pps > 0.0) {
            return Err((k("min_pps"), "must be a number > 0".into()));
        }
        if !(self.min_bps.is_finite() && self.min_bps >= 0.0) {
            return Err((k("min_bps"), "must be a number ≥ 0 (0: off)".into()));
        }
        if !(self.baseline_factor.is_finite() && self.baseline_factor >= 1.0) {
            return Err((k("baseline_factor"), "must be a number ≥ 1".into()));
        }
        self.rate_limit.validate(&k("rate_limit"))?;
        self.defence.validate(&k("defence"))
    }
}

/// Level 3: auto-blocks of the top offending prefixes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoBlockConfig {
    /// Off: level 3 adds nothing to level 2.
    pub enabled: bool,
    /// Lifetime of each auto-block (refreshed while the prefix keeps
    /// attacking), seconds.
    pub ttl_secs: u64,
    /// Most auto-blocks in force at a time, all classes together.
    pub max_blocks: usize,
    /// A prefix must carry at least this share (0..1) of its class's
    /// sampled traffic to be blocked.
    pub min_share: f64,
    /// A prefix carrying more than this share (0..1) of the legitimate
    /// traffic is never blocked. Legitimate traffic: sampled packets that
    /// were passed, in classes that were quiet at the time (plain TCP
    /// segments always count), over `detect.top.legit_half_life_secs`.
    pub max_legit_share: f64,
    /// When the blockable prefixes together carry at least this share of
    /// the class, escalation goes straight to level 3 (a flood from a
    /// handful of sources is best cut at its source).
    pub jump_share: f64,
    /// Block a whole /24 (IPv4) or /48 (IPv6) when its traffic is spread
    /// over many hosts none of which is heavy on its own; otherwise blocks
    /// are /32 (IPv4) and /64 (IPv6).
    pub aggregate: bool,
}

impl Default for AutoBlockConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 900,
            max_blocks: 64,
            min_share: 0.02,
            max_legit_share: 0.05,
            jump_share: 0.5,
            aggregate: true,
        }
    }
}

/// Level 4: recommend upstream mitigation (RTBH / FlowSpec) when the link
/// itself fills. Only a recorded recommendation; no network action.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Total offered bits per second at which to recommend (0: off).
    pub bps: f64,
    /// Total offered packets per second at which to recommend (0: off).
    pub pps: f64,
}

impl UpstreamConfig {
    pub fn enabled(&self) -> bool {
        self.bps > 0.0 || self.pps > 0.0
    }
}

/// Every field has a default (an empty table is the defaults); unknown keys
/// are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawEscalationConfig")]
pub struct EscalationConfig {
    /// Run the ladder but mark every action as dry-run.
    pub monitor: bool,
    /// Consecutive hot intervals before leaving level 0.
    pub escalate_after: u32,
    /// Consecutive hot intervals at a level before the next step up.
    pub climb_after: u32,
    /// Seconds of quiet (below the step-down threshold) before each step
    /// down; one level at a time.
    pub quiet_secs: u64,
    /// Step-down threshold as a fraction of the step-up threshold (< 1).
    pub down_ratio: f64,
    /// A new burst of a class within this many seconds of the end of its
    /// last campaign jumps straight back to that campaign's highest level
    /// and re-applies its auto-blocks.
    pub campaign_window_secs: u64,
    pub auto_block: AutoBlockConfig,
    pub upstream: UpstreamConfig,
    pub syn: ClassConfig,
    pub udp: ClassConfig,
    pub icmp: ClassConfig,
    pub frag: ClassConfig,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        Self {
            monitor: false,
            escalate_after: 1,
            climb_after: 1,
            quiet_secs: 60,
            down_ratio: 0.5,
            campaign_window_secs: 6 * 3600,
            auto_block: AutoBlockConfig::default(),
            upstream: UpstreamConfig::default(),
            syn: ClassConfig {
                min_pps: 2_000.0,
                min_bps: 0.0,
                baseline_factor: 5.0,
                max_level: Level::Upstream,
                rate_limit: Limit::new(100, 200),
                defence: Limit::default(),
            },
            udp: ClassConfig {
                min_pps: 20_000.0,
                min_bps: 500e6,
                baseline_factor: 5.0,
                max_level: Level::Upstream,
                rate_limit: Limit::new(5_000, 10_000),
                defence: Limit::new(100_000, 200_000),
            },
            icmp: ClassConfig {
                min_pps: 1_000.0,
                min_bps: 50e6,
                baseline_factor: 5.0,
                max_level: Level::Upstream,
                rate_limit: Limit::new(50, 100),
                defence: Limit::new(10, 20),
            },
            frag: ClassConfig {
                min_pps: 1_000.0,
                min_bps: 100e6,
                baseline_factor: 5.0,
                max_level: Level::Upstream,
                rate_limit: Limit::new(50, 100),
                defence: Limit::default(),
            },
        }
    }
}

/// What a class table may hold: any subset of the fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawClassConfig {
    min_pps: Option<f64>,
    min_bps: Option<f64>,
    baseline_factor: Option<f64>,
    max_level: Option<Level>,
    rate_limit: Option<Limit>,
    defence: Option<Limit>,
}

impl RawClassConfig {
    fn over(self, d: ClassConfig) -> ClassConfig {
        ClassConfig {
            min_pps: self.min_pps.unwrap_or(d.min_pps),
            min_bps: self.min_bps.unwrap_or(d.min_bps),
            baseline_factor: self.baseline_factor.unwrap_or(d.baseline_factor),
            max_level: self.max_level.unwrap_or(d.max_level),
            rate_limit: self.rate_limit.unwrap_or(d.rate_limit),
            defence: self.defence.unwrap_or(d.defence),
        }
    }
}

/// The escalation table as written: missing fields take the defaults, per
/// class for the class tables.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEscalationConfig {
    monitor: Option<bool>,
    escalate_after: Option<u32>,
    climb_after: Option<u32>,
    quiet_secs: Option<u64>,
    down_ratio: Option<f64>,
    campaign_window_secs: Option<u64>,
    auto_block: Option<AutoBlockConfig>,
    upstream: Option<UpstreamConfig>,
    syn: RawClassConfig,
    udp: RawClassConfig,
    icmp: RawClassConfig,
    frag: RawClassConfig,
}

impl From<RawEscalationConfig> for EscalationConfig {
    fn from(r: RawEscalationConfig) -> Self {
        let d = EscalationConfig::default();
        EscalationConfig {
            monitor: r.monitor.unwrap_or(d.monitor),
            escalate_after: r.escalate_after.unwrap_or(d.escalate_after),
            climb_after: r.climb_after.unwrap_or(d.climb_after),
            quiet_secs: r.quiet_secs.unwrap_or(d.quiet_secs),
            down_ratio: r.down_ratio.unwrap_or(d.down_ratio),
            campaign_window_secs: r.campaign_window_secs.unwrap_or(d.campaign_window_secs),
            auto_block: r.auto_block.unwrap_or(d.auto_block),
            upstream: r.upstream.unwrap_or(d.upstream),
            syn: r.syn.over(d.syn),
            udp: r.udp.over(d.udp),
            icmp: r.icmp.over(d.icmp),
            frag: r.frag.over(d.frag),
        }
    }
}

impl EscalationConfig {
    pub fn class(&self, class: AttackClass) -> &ClassConfig {
        match class {
            AttackClass::Syn => &self.syn,
            AttackClass::Udp => &self.udp,
            AttackClass::Icmp => &self.icmp,
            AttackClass::Frag => &self.frag,
        }
    }

    pub fn class_mut(&mut self, class: AttackClass) -> &mut ClassConfig {
        match class {
            AttackClass::Syn => &mut self.syn,
            AttackClass::Udp => &mut self.udp,
            AttackClass::Icmp => &mut self.icmp,
            AttackClass::Frag => &mut self.frag,
        }
    }

    /// Checks every value; the error names the key (relative to this
    /// section, e.g. `udp.min_pps`) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, why: &str| Err((k.to_string(), why.to_string()));
        if self.escalate_after == 0 {
            return err("escalate_after", "must be ≥ 1 interval");
        }
        if self.climb_after == 0 {
            return err("climb_after", "must be ≥ 1 interval");
        }
        if !(self.down_ratio > 0.0 && self.down_ratio < 1.0) {
            return err("down_ratio", "must be between 0 and 1 (exclusive)");
        }
        let a = &self.auto_block;
        if a.ttl_secs == 0 {
            return err("auto_block.ttl_secs", "must be ≥ 1");
        }
        for (k, v) in [
            ("auto_block.min_share", a.min_share),
            ("auto_block.max_legit_share", a.max_legit_share),
            ("auto_block.jump_share", a.jump_share),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return err(k, "must be a share in (0, 1]");
            }
        }
        for (k, v) in [
            ("upstream.bps", self.upstream.bps),
            ("upstream.pps", self.upstream.pps),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return err(k, "must be a number ≥ 0 (0: off)");
            }
        }
        for c in AttackClass::ALL {
            self.class(c).validate(c.name())?;
        }
        Ok(())
    }
}

/// The datapath config for the given levels: `base` (what the operator
/// configured) with each class's defences for its level added. Escalation
/// only ever adds defences and tightens limits; it never loosens the base
/// and never touches `FLAG_MONITOR`, sampling or the PMTU budget.
///
/// | level | syn | udp | icmp | frag |
/// | --- | --- | --- | --- | --- |
/// | 1 | per-source limit `syn.rate_limit` | per-source `udp.rate_limit` | per-source `icmp.rate_limit` | policy rate-limit at `frag.rate_limit` |
/// | 2 | + SYN cookies | + amplification drop, + port cap at `udp.defence` | + limit `icmp.defence` | drop (or rate-limit at `frag.defence`) |
/// | 3, 4 | as 2 (plus auto-blocks, upstream recommendation: not config) | | | |
pub fn datapath_config(cfg: &EscalationConfig, base: &Config, levels: &Levels) -> Config {
    let mut c = *base;
    let at = |class: AttackClass, l: Level| levels.get(class) >= l;
    let per_source = [AttackClass::Syn, AttackClass::Udp, AttackClass::Icmp];
    if per_source.iter().any(|&k| at(k, Level::RateLimit)) && !base.has(FLAG_RATE_LIMIT) {
        // The flag switches every class's buckets on: keep the classes that
        // are not escalated unlimited, as they were.
        c.flags |= FLAG_RATE_LIMIT;
        for k in per_source {
            if !at(k, Level::RateLimit) {
                *gcra_mut(&mut c, k) = Gcra::default();
            }
        }
    }
    for k in per_source {
        if at(k, Level::RateLimit) {
            let g = gcra_mut(&mut c, k);
            *g = tighter(*g, cfg.class(k).rate_limit);
        }
    }
    if at(AttackClass::Syn, Level::Defence) {
        c.flags |= FLAG_SYN_COOKIES;
    }
    if at(AttackClass::Udp, Level::Defence) {
        c.flags |= FLAG_AMP_DROP;
        if cfg.udp.defence.is_set() {
            c.flags |= FLAG_PORT_CAP;
            c.udp_port = tighter(c.udp_port, cfg.udp.defence);
        }
    }
    if at(AttackClass::Icmp, Level::Defence) {
        c.icmp = tighter(c.icmp, cfg.icmp.defence);
    }
    if at(AttackClass::Frag, Level::RateLimit) {
        c.frag_policy = c.frag_policy.max(FRAG_RATE_LIMIT);
        c.frag = tighter(c.frag, cfg.frag.rate_limit);
    }
    if at(AttackClass::Frag, Level::Defence) {
        if cfg.frag.defence.is_set() {
            c.frag_policy = c.frag_policy.max(FRAG_RATE_LIMIT);
            c.frag = tighter(c.frag, cfg.frag.defence);
        } else {
            c.frag_policy = FRAG_DROP;
        }
    }
    c
}

fn gcra_mut(c: &mut Config, class: AttackClass) -> &mut Gcra {
    match class {
        AttackClass::Syn => &mut c.syn,
        AttackClass::Udp => &mut c.udp,
        AttackClass::Icmp => &mut c.icmp,
        AttackClass::Frag => &mut c.frag,
    }
}

/// The stricter of a current limit and a configured one (a lower rate
/// wins; at the same rate, the smaller burst). An unset `limit` keeps
/// `current`; an off `current` takes `limit`.
fn tighter(current: Gcra, limit: Limit) -> Gcra {
    if !limit.is_set() {
        return current;
    }
    let new = limit.gcra();
    if current.is_off() || new.interval_ns > current.interval_ns {
        return new;
    }
    if new.interval_ns == current.interval_ns && new.tolerance_ns < current.tolerance_ns {
        return new;
    }
    current
}

#[cfg(test)]
mod tests {
    use mitigator_common::{FLAG_MONITOR, FLAG_SAMPLE, FRAG_PASS};

    use super::*;

    fn base() -> Config {
        Config {
            flags: FLAG_RATE_LIMIT | FLAG_SAMPLE,
            frag_policy: FRAG_RATE_LIMIT,
            syn: Gcra::per_second(200, 1000),
            udp: Gcra::per_second(10_000, 20_000),
            icmp: Gcra::per_second(100, 200),
            frag: Gcra::per_second(100, 200),
            pmtu: Gcra::per_second(1000, 2000),
            udp_port: Gcra::per_second(100_000, 200_000),
            sample_every: 64,
            sample_max_per_sec: 2000,
        }
    }

    fn levels(syn: u8, udp: u8, icmp: u8, frag: u8) -> Levels {
        let l = |v: u8| Level::try_from(v).unwrap();
        Levels {
            syn: l(syn),
            udp: l(udp),
            icmp: l(icmp),
            frag: l(frag),
        }
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let cfg = EscalationConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        let text = serde_json::to_string(&cfg).unwrap();
        let back: EscalationConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        // An empty document is the defaults; unknown keys are errors.
        let empty: EscalationConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, cfg);
        assert!(serde_json::from_str::<EscalationConfig>(r#"{"quiet": 3}"#).is_err());
        let partial: EscalationConfig =
            serde_json::from_str(r#"{"udp": {"min_pps": 500, "max_level": 2}}"#).unwrap();
        assert_eq!(partial.udp.min_pps, 500.0);
        assert_eq!(partial.udp.max_level, Level::Defence);
        assert_eq!(partial.udp.baseline_factor, 5.0);
        assert_eq!(partial.udp.min_bps, 500e6);
        assert_eq!(partial.udp.defence, Limit::new(100_000, 200_000));
        assert_eq!(partial.icmp, cfg.icmp);
        assert!(serde_json::from_str::<EscalationConfig>(r#"{"udp": {"min_ppps": 1}}"#).is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = EscalationConfig::default();
        cfg.udp.min_pps = 0.0;
        assert_eq!(cfg.validate().unwrap_err().0, "udp.min_pps");
        let cfg = EscalationConfig {
            down_ratio: 1.0,
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().0, "down_ratio");
        let mut cfg = EscalationConfig::default();
        cfg.auto_block.max_legit_share = 0.0;
        assert_eq!(cfg.validate().unwrap_err().0, "auto_block.max_legit_share");
        let mut cfg = EscalationConfig::default();
        cfg.icmp.defence.rate = MAX_PACKETS + 1;
        assert_eq!(cfg.validate().unwrap_err().0, "icmp.defence.rate");
        assert!(serde_json::from_str::<EscalationConfig>(r#"{"syn": {"max_level": 5}}"#).is_err());
    }

    #[test]
    fn level_zero_everywhere_is_the_base() {
        let cfg = EscalationConfig::default();
        assert_eq!(datapath_config(&cfg, &base(), &Levels::default()), base());
    }

    #[test]
    fn each_level_adds_its_class_defence() {
        let cfg = EscalationConfig::default();
        let b = base();
        // syn
        let c = datapath_config(&cfg, &b, &levels(1, 0, 0, 0));
        assert_eq!(c.syn, Gcra::per_second(100, 200));
        assert!(!c.has(FLAG_SYN_COOKIES));
        assert_eq!((c.udp, c.icmp), (b.udp, b.icmp));
        let c = datapath_config(&cfg, &b, &levels(2, 0, 0, 0));
        assert!(c.has(FLAG_SYN_COOKIES));
        assert_eq!(datapath_config(&cfg, &b, &levels(3, 0, 0, 0)), c);
        assert_eq!(datapath_config(&cfg, &b, &levels(4, 0, 0, 0)), c);
        // udp
        let c = datapath_config(&cfg, &b, &levels(0, 1, 0, 0));
        assert_eq!(c.udp, Gcra::per_second(5_000, 10_000));
        assert!(!c.has(FLAG_AMP_DROP) && !c.has(FLAG_PORT_CAP));
        let c = datapath_config(&cfg, &b, &levels(0, 2, 0, 0));
        assert!(c.has(FLAG_AMP_DROP) && c.has(FLAG_PORT_CAP));
        assert_eq!(c.udp_port, Gcra::per_second(100_000, 200_000));
        // icmp
        let c = datapath_config(&cfg, &b, &levels(0, 0, 1, 0));
        assert_eq!(c.icmp, Gcra::per_second(50, 100));
        let c = datapath_config(&cfg, &b, &levels(0, 0, 2, 0));
        assert_eq!(c.icmp, Gcra::per_second(10, 20));
        // frag
        let c = datapath_config(&cfg, &b, &levels(0, 0, 0, 1));
        assert_eq!(
            (c.frag_policy, c.frag),
            (FRAG_RATE_LIMIT, Gcra::per_second(50, 100))
        );
        let c = datapath_config(&cfg, &b, &levels(0, 0, 0, 2));
        assert_eq!(c.frag_policy, FRAG_DROP);
        let mut rl = cfg.clone();
        rl.frag.defence = Limit::new(10, 10);
        let c = datapath_config(&rl, &b, &levels(0, 0, 0, 2));
        assert_eq!(
            (c.frag_policy, c.frag),
            (FRAG_RATE_LIMIT, Gcra::per_second(10, 10))
        );
        // Untouched fields.
        for l in [levels(4, 4, 4, 4), levels(2, 3, 1, 2)] {
            let c = datapath_config(&cfg, &b, &l);
            assert_eq!(c.pmtu, b.pmtu);
            assert_eq!((c.sample_every, c.sample_max_per_sec), (64, 2000));
            assert_eq!(c.flags & FLAG_MONITOR, 0);
        }
    }

    #[test]
    fn never_loosens_the_base() {
        let cfg = EscalationConfig::default();
        let mut b = base();
        b.flags |= FLAG_MONITOR | FLAG_SYN_COOKIES;
        b.syn = Gcra::per_second(10, 10); // already stricter than level 1
        b.frag_policy = FRAG_DROP;
        let c = datapath_config(&cfg, &b, &levels(1, 0, 0, 1));
        assert_eq!(c.syn, b.syn);
        assert_eq!(c.frag_policy, FRAG_DROP);
        assert!(c.has(FLAG_MONITOR) && c.has(FLAG_SYN_COOKIES));
        // Same rate, smaller burst wins.
        b.syn = Gcra::per_second(100, 1000);
        let c = datapath_config(&cfg, &b, &levels(1, 0, 0, 0));
        assert_eq!(c.syn, Gcra::per_second(100, 200));
    }

    #[test]
    fn rate_limit_flag_switched_on_only_for_escalated_classes() {
        let cfg = EscalationConfig::default();
        let mut b = base();
        b.flags &= !FLAG_RATE_LIMIT;
        b.frag_policy = FRAG_PASS;
        let c = datapath_config(&cfg, &b, &levels(0, 1, 0, 0));
        assert!(c.has(FLAG_RATE_LIMIT));
        assert_eq!(c.udp, Gcra::per_second(5_000, 10_000));
        assert!(c.syn.is_off() && c.icmp.is_off());
        assert_eq!(c.frag_policy, FRAG_PASS);
        // No class escalated: no flag.
        assert_eq!(datapath_config(&cfg, &b, &levels(0, 0, 0, 0)), b);
    }
}
