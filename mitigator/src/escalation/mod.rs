//! Automatic escalation: one ladder per attack class (syn, udp, icmp, frag).
//!
//! | level | name | what it does |
//! | --- | --- | --- |
//! | 0 | observe | nothing; the baseline learns |
//! | 1 | rate-limit | per-source limits for the class |
//! | 2 | defence | syn: SYN cookies; udp: amplification drop + per-port cap; icmp: tighter limits; frag: fragment drop (or rate-limit) |
//! | 3 | auto-block | + blocks of the top offending prefixes (TTL, capped, never allowlisted or legitimate-heavy prefixes) |
//! | 4 | upstream | + a recorded recommendation to mitigate upstream (RTBH / FlowSpec); no network action |
//!
//! How a ladder moves (all thresholds per class, see [`EscalationConfig`]):
//!
//! - *Hot*: the class's offered load (every verdict counts, so a working
//!   defence does not hide the attack) reaches `max(min_pps, baseline_factor
//!   × baseline)` in packets, or the same in bits when `min_bps > 0`.
//!   *Quiet*: under `down_ratio` times those thresholds. In between: neither,
//!   which is the hysteresis band.
//! - Up: after `escalate_after` consecutive hot intervals at level 0, and
//!   `climb_after` at each level after that, one step up — or straight to
//!   level 3 when the blockable prefixes carry `auto_block.jump_share` of
//!   the class (a flood from a handful of sources). Level 4 only while the
//!   total offered load reaches `upstream.bps` / `upstream.pps`.
//! - Down: one step after `quiet_secs` of uninterrupted quiet since the
//!   last change, then another quiet period for the next.
//! - Campaign memory: reaching level 0 ends a campaign; its highest level
//!   and its blocks are remembered for `campaign_window_secs`. The first
//!   hot interval of a new burst within the window jumps straight back to
//!   that level and re-applies the blocks (and during a campaign, a class
//!   that has stepped down jumps back to the campaign's highest level).
//! - Baselines learn only from intervals where the class is at level 0 and
//!   not hot; they are frozen otherwise.
//! - Pins: a pinned class never moves by itself; its level's effects
//!   (config, blocks) still apply. Monitor mode: every action is marked
//!   dry-run.
//!
//! Plain Rust, no aya and no I/O: [`Ladder::step`] turns an interval's
//! [`Rates`](crate::detect::Rates) and [`TopTalkers`](crate::detect::TopTalkers)
//! into [`Action`]s for the daemon to apply and [`Event`]s to log.
//! [`Controller`] bundles the detection and the ladder behind the three
//! calls a daemon needs.

mod blocks;
pub mod config;
pub mod ladder;

#[cfg(test)]
mod tests;

use std::{fmt, str::FromStr};

use ipnet::IpNet;
use mitigator_common::{Class, Config, Counter, Reason, Sample};
use serde::{Deserialize, Serialize};

pub use blocks::{Candidate, Skipped};
pub use config::{
    datapath_config, AutoBlockConfig, ClassConfig, EscalationConfig, Limit, UpstreamConfig,
};
pub use ladder::{
    Action, ActionKind, CampaignStatus, ClassStatus, EscalationStatus, Event, EventKind, Ladder,
    Numbers, StepOutput, UpstreamRecommendation,
};

use crate::detect::{AttackClass, DetectConfig, RateTracker, Rates, TopReport, TopTalkers};

/// A rung of the ladder. Serialized as its number (0-4).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub enum Level {
    #[default]
    Observe = 0,
    RateLimit = 1,
    Defence = 2,
    AutoBlock = 3,
    Upstream = 4,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Observe,
        Level::RateLimit,
        Level::Defence,
        Level::AutoBlock,
        Level::Upstream,
    ];

    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The next level up (saturating).
    pub const fn up(self) -> Level {
        match self {
            Level::Observe => Level::RateLimit,
            Level::RateLimit => Level::Defence,
            Level::Defence => Level::AutoBlock,
            Level::AutoBlock | Level::Upstream => Level::Upstream,
        }
    }

    /// The next level down (saturating).
    pub const fn down(self) -> Level {
        match self {
            Level::Observe | Level::RateLimit => Level::Observe,
            Level::Defence => Level::RateLimit,
            Level::AutoBlock => Level::Defence,
            Level::Upstream => Level::AutoBlock,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Level::Observe => "observe",
            Level::RateLimit => "rate-limit",
            Level::Defence => "defence",
            Level::AutoBlock => "auto-block",
            Level::Upstream => "upstream",
        }
    }

    /// What the level does for `class`, for logs and `status`.
    pub const fn describe(self, class: AttackClass) -> &'static str {
        match (self, class) {
            (Level::Observe, _) => "observe only",
            (Level::RateLimit, _) => "per-source rate limits",
            (Level::Defence, AttackClass::Syn) => "SYN cookies",
            (Level::Defence, AttackClass::Udp) => "amplification drop and per-port cap",
            (Level::Defence, AttackClass::Icmp) => "tighter ICMP limits",
            (Level::Defence, AttackClass::Frag) => "fragment policy",
            (Level::AutoBlock, _) => "auto-block of the top offending prefixes",
            (Level::Upstream, _) => "upstream mitigation recommended",
        }
    }
}

impl TryFrom<u8> for Level {
    type Error = String;

    fn try_from(v: u8) -> Result<Self, Self::Error> {
        Level::ALL
            .get(v as usize)
            .copied()
            .ok_or_else(|| format!("level {v} does not exist (0-4)"))
    }
}

impl From<Level> for u8 {
    fn from(l: Level) -> u8 {
        l as u8
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

impl FromStr for Level {
    type Err = String;

    /// `0`-`4` or a level name (`observe`, `rate-limit`, `defence`,
    /// `auto-block`, `upstream`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        if let Ok(n) = t.parse::<u8>() {
            return Level::try_from(n);
        }
        Level::ALL
            .into_iter()
            .find(|l| l.name() == t || l.name().replace('-', "_") == t)
            .ok_or_else(|| {
                format!("unknown level '{s}': expected 0-4 or observe, rate-limit, defence, auto-block, upstream")
            })
    }
}

/// The current level of every class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Levels {
    pub syn: Level,
    pub udp: Level,
    pub icmp: Level,
    pub frag: Level,
}

impl Levels {
    pub fn get(&self, class: AttackClass) -> Level {
        match class {
            AttackClass::Syn => self.syn,
            AttackClass::Udp => self.udp,
            AttackClass::Icmp => self.icmp,
            AttackClass::Frag => self.frag,
        }
    }

    pub fn set(&mut self, class: AttackClass, level: Level) {
        match class {
            AttackClass::Syn => self.syn = level,
            AttackClass::Udp => self.udp = level,
            AttackClass::Icmp => self.icmp = level,
            AttackClass::Frag => self.frag = level,
        }
    }
}

/// Detection and escalation together: what the daemon calls.
///
/// ```text
/// every sample from the SAMPLES ring buffer  -> controller.observe(&sample)
/// every interval (1 s)                       -> let out = controller.interval(now_ms, &datapath.counters()?);
///                                               apply out.actions, log out.events
/// `escalate CLASS LEVEL` / `CLASS auto`      -> controller.pin(..) / controller.release(..)
/// `status` / `top`                           -> controller.status() / controller.top_report(n, now_secs)
/// ```
#[derive(Debug)]
pub struct Controller {
    rates: RateTracker,
    top: TopTalkers,
    ladder: Ladder,
    last: Option<Rates>,
}

impl Controller {
    /// `base`: the datapath config the operator configured (from the
    /// settings), which escalation only ever adds to; `allowlist`: every
    /// allowlisted prefix (never auto-blocked); `now_ms`: unix milliseconds.
    pub fn new(
        detect: &DetectConfig,
        escalation: EscalationConfig,
        base: Config,
        allowlist: Vec<IpNet>,
        now_ms: u64,
    ) -> Self {
        Self {
            rates: RateTracker::new(),
            top: TopTalkers::new(detect.top.clone(), base.sample_every),
            ladder: Ladder::new(
                escalation,
                base,
                allowlist,
                detect.baseline_half_life_secs,
                now_ms,
            ),
            last: None,
        }
    }

    /// Counts one header sample read from the `SAMPLES` ring buffer.
    pub fn observe(&mut self, sample: &Sample) {
        self.top.observe(sample);
    }

    /// Closes an interval: `counters` are the datapath counters summed over
    /// CPUs, read at `now_ms`. Returns what to apply and log. The first call
    /// only takes the counters as a reference and returns nothing.
    pub fn interval(&mut self, now_ms: u64, counters: &[(Reason, Class, Counter)]) -> StepOutput {
        let Some(rates) = self.rates.update(now_ms, counters) else {
            self.top.tick(now_ms, None, &[]);
            return StepOutput::default();
        };
        let out = self.ladder.step(now_ms, &rates, &self.top);
        self.top
            .tick(now_ms, Some(&rates), self.ladder.quiet_classes());
        self.last = Some(rates);
        out
    }

    /// Operator: hold `class` at `level` until released.
    pub fn pin(&mut self, class: AttackClass, level: Level, now_ms: u64) -> StepOutput {
        self.ladder.pin(class, level, now_ms, &self.top)
    }

    /// Operator: let `class` move by itself again, from where it is.
    pub fn release(&mut self, class: AttackClass, now_ms: u64) -> StepOutput {
        self.ladder.release(class, now_ms)
    }

    /// The allowlist changed: auto-blocks that overlap it are removed at once.
    pub fn set_allowlist(&mut self, allowlist: Vec<IpNet>, now_ms: u64) -> StepOutput {
        self.ladder.set_allowlist(allowlist, now_ms)
    }

    /// The operator's base config changed (config reload).
    pub fn set_base(&mut self, base: Config) -> StepOutput {
        self.top.set_sample_one_in(base.sample_every);
        self.ladder.set_base(base)
    }

    pub fn status(&self) -> EscalationStatus {
        self.ladder.status()
    }

    /// `at`: unix seconds.
    pub fn top_report(&self, n: usize, at: u64) -> TopReport {
        self.top.report(n, at)
    }

    /// The rates of the last interval.
    pub fn rates(&self) -> Option<&Rates> {
        self.last.as_ref()
    }

    pub fn top(&self) -> &TopTalkers {
        &self.top
    }

    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }
}
