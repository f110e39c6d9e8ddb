//! The ladder: per-class state machine, auto-blocks, campaign memory,
//! operator pins, and what each step asks the daemon to do.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use mitigator_common::{Config, FLAG_MONITOR};
use serde::{Deserialize, Serialize};

use super::{
    blocks::{self, Candidate},
    config::{datapath_config, ClassConfig, EscalationConfig},
    Level, Levels,
};
use crate::detect::{
    AttackClass, Baseline, Baselines, ClassRate, Rates, Scope, TopDestination, TopTalkers,
};

/// The numbers behind a decision: the interval's rates, the baseline and
/// the thresholds they were compared with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Numbers {
    /// Offered load of the class (all verdicts).
    pub pps: f64,
    pub bps: f64,
    pub passed_pps: f64,
    /// Dropped, or answered from XDP with a SYN cookie (not passed).
    pub dropped_pps: f64,
    pub baseline_pps: f64,
    pub baseline_bps: f64,
    /// Step-up threshold: `max(min_pps, baseline_factor × baseline_pps)`.
    pub threshold_pps: f64,
    /// Step-up bit-rate threshold; `None` when the class has no bit-rate trigger.
    pub threshold_bps: Option<f64>,
    /// Step-down thresholds (`down_ratio` × the step-up ones).
    pub down_pps: f64,
    pub down_bps: Option<f64>,
}

impl Numbers {
    fn new(rate: &ClassRate, base: &Baseline, cc: &ClassConfig, down_ratio: f64) -> Self {
        let up_pps = cc.min_pps.max(cc.baseline_factor * base.pps);
        let up_bps = (cc.min_bps > 0.0).then(|| cc.min_bps.max(cc.baseline_factor * base.bps));
        Self {
            pps: rate.pps,
            bps: rate.bps,
            passed_pps: rate.passed_pps,
            dropped_pps: rate.dropped_pps + rate.tx_pps,
            baseline_pps: base.pps,
            baseline_bps: base.bps,
            threshold_pps: up_pps,
            threshold_bps: up_bps,
            down_pps: up_pps * down_ratio,
            down_bps: up_bps.map(|t| t * down_ratio),
        }
    }

    /// At or over a step-up threshold.
    pub fn hot(&self) -> bool {
        self.pps >= self.threshold_pps || self.threshold_bps.is_some_and(|t| self.bps >= t)
    }

    /// Under every step-down threshold.
    pub fn quiet(&self) -> bool {
        self.pps < self.down_pps && self.down_bps.is_none_or(|t| self.bps < t)
    }

    /// "12.3k pps (threshold 10k pps = max(floor, 5× baseline 2k))".
    fn describe(&self, cc: &ClassConfig) -> String {
        let mut s = format!(
            "{} pps, {}bit/s (threshold {} pps = max({} floor, {}× baseline {} pps)",
            human(self.pps),
            human(self.bps),
            human(self.threshold_pps),
            human(cc.min_pps),
            cc.baseline_factor,
            human(self.baseline_pps)
        );
        if let Some(t) = self.threshold_bps {
            s.push_str(&format!(" or {}bit/s", human(t)));
        }
        s.push(')');
        s
    }
}

/// 1234567 -> "1.23M".
fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Something the daemon should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// Monitor mode: record, do not enforce (see [`Action::should_apply`]).
    pub dry_run: bool,
    pub kind: ActionKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ActionKind {
    /// Write this config to the datapath (`Datapath::set_config`): the base
    /// config with every class's defences for `levels`.
    SetConfig { levels: Levels, config: Config },
    /// Add (or refresh: reset the expiry of) an automatic block rule.
    /// Leave an operator rule for the same prefix as it is.
    AddAutoBlock {
        prefix: IpNet,
        ttl_secs: u64,
        reason: String,
        class: AttackClass,
    },
    /// Remove an automatic block rule (only if it is still an automatic one).
    RemoveAutoBlock { prefix: IpNet, class: AttackClass },
    /// Record / hand to a hook: mitigate upstream.
    Upstream(UpstreamRecommendation),
    /// The upstream recommendation for `class` no longer holds.
    UpstreamWithdraw { class: AttackClass },
}

impl Action {
    /// Whether the daemon should carry the action out. Dry-run actions are
    /// only logged, except a config change while the datapath itself is in
    /// monitor mode: every packet passes then, and the counters show what
    /// the escalated defences would do.
    pub fn should_apply(&self) -> bool {
        match &self.kind {
            _ if !self.dry_run => true,
            ActionKind::SetConfig { config, .. } => config.has(FLAG_MONITOR),
            _ => false,
        }
    }
}

/// Level 4's recommendation: what to ask of the upstream provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamRecommendation {
    pub class: AttackClass,
    /// The class's offered load and the total, when recommended.
    pub pps: f64,
    pub bps: f64,
    pub total_bps: f64,
    /// The most attacked destinations of the class.
    pub destinations: Vec<TopDestination>,
    /// Source prefixes auto-blocked for the class.
    pub sources: Vec<IpNet>,
    /// FlowSpec-style rules, one per heavy destination, e.g.
    /// `match destination 192.0.2.1/32 protocol 17 destination-port 53 then discard`.
    pub flowspec: Vec<String>,
    /// Destinations to announce for remote-triggered black-holing as the
    /// last resort (sacrifices them to save the link).
    pub rtbh: Vec<IpNet>,
    pub summary: String,
}

/// A log record: every level change and rule change, with why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub class: AttackClass,
    pub kind: EventKind,
    pub from: Level,
    pub to: Level,
    pub why: String,
    pub numbers: Numbers,
    pub dry_run: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Escalated,
    DeEscalated,
    /// A new burst within the campaign window: straight back to the level
    /// of the last campaign.
    Rearmed,
    Pinned,
    Released,
    AutoBlocked {
        prefix: IpNet,
        share: f64,
        est_pps: f64,
        ttl_secs: u64,
    },
    AutoBlockRefreshed {
        prefix: IpNet,
        ttl_secs: u64,
    },
    /// A heavy prefix the guards protect (reported once per campaign).
    AutoBlockSkipped {
        prefix: IpNet,
        share: f64,
    },
    /// More prefixes qualified than the cap allows (once per campaign).
    AutoBlockCapped {
        cap: usize,
    },
    AutoUnblocked {
        prefix: IpNet,
    },
    UpstreamRecommended,
    UpstreamWithdrawn,
}

impl EventKind {
    fn label(&self) -> &'static str {
        match self {
            EventKind::Escalated => "escalated",
            EventKind::DeEscalated => "de-escalated",
            EventKind::Rearmed => "re-armed",
            EventKind::Pinned => "pinned",
            EventKind::Released => "released",
            EventKind::AutoBlocked { .. } => "auto-blocked",
            EventKind::AutoBlockRefreshed { .. } => "auto-block refreshed",
            EventKind::AutoBlockSkipped { .. } => "auto-block skipped",
            EventKind::AutoBlockCapped { .. } => "auto-block cap reached",
            EventKind::AutoUnblocked { .. } => "auto-unblocked",
            EventKind::UpstreamRecommended => "upstream recommended",
            EventKind::UpstreamWithdrawn => "upstream withdrawn",
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{} {}",
            if self.dry_run { "[dry-run] " } else { "" },
            self.class,
            self.kind.label()
        )?;
        match &self.kind {
            EventKind::AutoBlocked { prefix, .. }
            | EventKind::AutoBlockRefreshed { prefix, .. }
            | EventKind::AutoBlockSkipped { prefix, .. }
            | EventKind::AutoUnblocked { prefix } => write!(f, " {prefix}")?,
            _ => {}
        }
        if self.from != self.to {
            write!(f, " {} -> {}", self.from, self.to)?;
        } else {
            write!(f, " at {}", self.to)?;
        }
        write!(f, ": {}", self.why)
    }
}

/// What one step asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
}

/// A finished campaign, remembered for re-arming.
#[derive(Clone, Debug, PartialEq)]
struct Campaign {
    level: Level,
    blocks: Vec<IpNet>,
    ended_ms: u64,
}

#[derive(Clone, Debug)]
struct ClassState {
    level: Level,
    since_ms: u64,
    why: String,
    pinned: bool,
    hot_streak: u32,
    quiet_since_ms: Option<u64>,
    last: Numbers,
    last_hot: bool,
    /// The current campaign (level > 0): highest automatic level and every
    /// prefix blocked.
    peak: Level,
    campaign_blocks: Vec<IpNet>,
    /// The last finished campaign.
    memory: Option<Campaign>,
    /// Blocks to re-apply at the next chance (re-arm).
    rearm: Vec<IpNet>,
    /// Heavy prefixes already reported as protected in this campaign.
    skipped: BTreeSet<IpNet>,
    capped_reported: bool,
    upstream_active: bool,
}

impl ClassState {
    fn new(now_ms: u64) -> Self {
        Self {
            level: Level::Observe,
            since_ms: now_ms,
            why: "start".into(),
            pinned: false,
            hot_streak: 0,
            quiet_since_ms: None,
            last: Numbers::default(),
            last_hot: false,
            peak: Level::Observe,
            campaign_blocks: Vec::new(),
            memory: None,
            rearm: Vec::new(),
            skipped: BTreeSet::new(),
            capped_reported: false,
            upstream_active: false,
        }
    }
}

#[derive(Clone, Debug)]
struct ActiveBlock {
    owners: BTreeSet<AttackClass>,
    expires_ms: u64,
}

/// Per-class status for `mitigator status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassStatus {
    pub class: AttackClass,
    pub level: Level,
    /// `observe`, `rate-limit`, ...
    pub level_name: String,
    /// What the level does for this class.
    pub defence: String,
    /// Unix seconds of the last level change.
    pub since: u64,
    pub why: String,
    pub pinned: bool,
    /// The latest interval's numbers.
    pub numbers: Numbers,
    pub auto_blocks: Vec<IpNet>,
    /// The last finished campaign, while it can still re-arm.
    pub campaign: Option<CampaignStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CampaignStatus {
    pub level: Level,
    /// Unix seconds the campaign ended.
    pub ended: u64,
    /// Unix seconds until which a new burst re-arms at once.
    pub rearm_until: u64,
    pub blocks: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscalationStatus {
    /// Monitor mode: the ladder runs, its actions are not enforced.
    pub dry_run: bool,
    pub classes: Vec<ClassStatus>,
    pub auto_blocks: usize,
    pub max_auto_blocks: usize,
    pub baselines: Baselines,
}

/// The escalation ladders of all classes.
#[derive(Clone, Debug)]
pub struct Ladder {
    cfg: EscalationConfig,
    base: Config,
    dry_run: bool,
    allowlist: Vec<IpNet>,
    baselines: Baselines,
    classes: Vec<ClassState>,
    blocks: BTreeMap<IpNet, ActiveBlock>,
    /// The config last handed out (initially the base's).
    applied: Config,
    quiet: Vec<AttackClass>,
}

impl Ladder {
    pub fn new(
        cfg: EscalationConfig,
        base: Config,
        allowlist: Vec<IpNet>,
        baseline_half_life_secs: f64,
        now_ms: u64,
    ) -> Self {
        let applied = datapath_config(&cfg, &base, &Levels::default());
        Self {
            dry_run: cfg.monitor || base.has(FLAG_MONITOR),
            cfg,
            base,
            allowlist,
            baselines: Baselines::new(baseline_half_life_secs),
            classes: AttackClass::ALL
                .iter()
                .map(|_| ClassState::new(now_ms))
                .collect(),
            blocks: BTreeMap::new(),
            applied,
            quiet: Vec::new(),
        }
    }

    pub fn config(&self) -> &EscalationConfig {
        &self.cfg
    }

    pub fn baselines(&self) -> &Baselines {
        &self.baselines
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    pub fn levels(&self) -> Levels {
        let mut l = Levels::default();
        for c in AttackClass::ALL {
            l.set(c, self.classes[c.index()].level);
        }
        l
    }

    pub fn level(&self, class: AttackClass) -> Level {
        self.classes[class.index()].level
    }

    /// Classes that were at level 0 and under their step-up threshold in the
    /// last step: their baselines learned, and their passed traffic counts
    /// as legitimate (`TopTalkers::tick`).
    pub fn quiet_classes(&self) -> &[AttackClass] {
        &self.quiet
    }

    /// Prefixes auto-blocked now.
    pub fn auto_blocks(&self) -> Vec<IpNet> {
        self.blocks.keys().copied().collect()
    }

    /// One interval: `rates` of the interval ending at `now_ms` (unix ms)
    /// and the top talkers including the interval's samples.
    pub fn step(&mut self, now_ms: u64, rates: &Rates, top: &TopTalkers) -> StepOutput {
        let mut out = StepOutput::default();
        self.blocks.retain(|_, b| b.expires_ms > now_ms);
        self.enforce_allowlist(now_ms, &mut out);
        self.quiet.clear();
        for class in AttackClass::ALL {
            let cc = self.cfg.class(class);
            let numbers = Numbers::new(
                rates.class(class),
                self.baselines.get(class),
                cc,
                self.cfg.down_ratio,
            );
            self.classes[class.index()].last = numbers;
            if rates.reset {
                // No trustworthy numbers: hold everything as it is.
                continue;
            }
            let hot = numbers.hot();
            {
                let st = &mut self.classes[class.index()];
                st.last_hot = hot;
                if hot {
                    st.hot_streak += 1;
                    st.quiet_since_ms = None;
                } else {
                    st.hot_streak = 0;
                    if numbers.quiet() {
                        // Quiet since the start of this interval.
                        let start = now_ms.saturating_sub((rates.secs * 1000.0) as u64);
                        st.quiet_since_ms.get_or_insert(start);
                    } else {
                        st.quiet_since_ms = None;
                    }
                }
            }
            if !self.classes[class.index()].pinned {
                self.transition(class, now_ms, rates, top, &mut out);
            }
            if self.classes[class.index()].level == Level::Observe && !hot {
                self.quiet.push(class);
            }
        }
        if !rates.reset {
            self.baselines.learn(rates, &self.quiet);
        }
        for class in AttackClass::ALL {
            self.effects(class, now_ms, Some(rates), Some(top), &mut out);
        }
        self.emit_config(&mut out);
        out
    }

    /// Moves one unpinned class up or down according to its numbers.
    fn transition(
        &mut self,
        class: AttackClass,
        now_ms: u64,
        rates: &Rates,
        top: &TopTalkers,
        out: &mut StepOutput,
    ) {
        let cfg = &self.cfg;
        let cc = cfg.class(class);
        let upstream_now = (cfg.upstream.bps > 0.0 && rates.total.bps >= cfg.upstream.bps)
            || (cfg.upstream.pps > 0.0 && rates.total.pps >= cfg.upstream.pps);
        let max = cc.max_level.min(if upstream_now {
            Level::Upstream
        } else {
            Level::AutoBlock
        });
        let st = &self.classes[class.index()];
        let numbers = st.last;
        if st.last_hot {
            // Campaign memory: the ongoing campaign's peak, or the last
            // campaign's level if it ended within the window.
            let remembered = if st.level > Level::Observe {
                (st.peak > st.level).then(|| (st.peak, st.campaign_blocks.clone(), None))
            } else {
                st.memory
                    .as_ref()
                    .filter(|m| {
                        now_ms.saturating_sub(m.ended_ms) <= cfg.campaign_window_secs * 1000
                    })
                    .map(|m| (m.level, m.blocks.clone(), Some(m.ended_ms)))
            };
            if let Some((level, blocks, ended)) = remembered {
                let target = level.min(max);
                if target > st.level {
                    let why = match ended {
                        Some(e) => format!(
                            "new burst {}s after the last campaign ended (re-arm window {}s): back to its level at once; {}",
                            now_ms.saturating_sub(e) / 1000,
                            cfg.campaign_window_secs,
                            numbers.describe(cc)
                        ),
                        None => format!(
                            "burst again during the campaign: back to its level {} at once; {}",
                            level.number(),
                            numbers.describe(cc)
                        ),
                    };
                    let st = &mut self.classes[class.index()];
                    if ended.is_some() {
                        st.campaign_blocks = blocks.clone();
                    }
                    st.rearm = blocks;
                    self.change(class, target, now_ms, EventKind::Rearmed, why, out);
                    return;
                }
            }
            let st = &self.classes[class.index()];
            let needed = if st.level == Level::Observe {
                cfg.escalate_after
            } else {
                cfg.climb_after
            };
            if st.hot_streak < needed || st.level >= max {
                return;
            }
            let mut target = st.level.up();
            let mut why = format!("{} for {} interval(s)", numbers.describe(cc), st.hot_streak);
            if st.level < Level::AutoBlock && max >= Level::AutoBlock && cfg.auto_block.enabled {
                let (cands, _) = blocks::candidates(class, top, &cfg.auto_block, &self.allowlist);
                let concentration: f64 = cands.iter().map(|c| c.share).sum();
                if !cands.is_empty() && concentration >= cfg.auto_block.jump_share {
                    target = Level::AutoBlock;
                    why.push_str(&format!(
                        "; {} blockable prefix(es) carry {:.0}% of it (≥ {:.0}%): straight to auto-block",
                        cands.len(),
                        concentration * 100.0,
                        cfg.auto_block.jump_share * 100.0
                    ));
                }
            }
            if target == Level::Upstream {
                why.push_str(&format!(
                    "; total {}bit/s, {} pps reaches the upstream threshold",
                    human(rates.total.bps),
                    human(rates.total.pps)
                ));
            }
            self.change(class, target, now_ms, EventKind::Escalated, why, out);
        } else if st.level > Level::Observe && numbers.quiet() {
            let quiet_from = st.quiet_since_ms.unwrap_or(now_ms).max(st.since_ms);
            if now_ms.saturating_sub(quiet_from) < cfg.quiet_secs * 1000 {
                return;
            }
            let why = format!(
                "quiet for {}s: {} pps under the step-down threshold {} pps",
                now_ms.saturating_sub(quiet_from) / 1000,
                human(numbers.pps),
                human(numbers.down_pps)
            );
            let to = st.level.down();
            self.change(class, to, now_ms, EventKind::DeEscalated, why, out);
            if to == Level::Observe {
                let st = &mut self.classes[class.index()];
                st.memory = Some(Campaign {
                    level: st.peak,
                    blocks: std::mem::take(&mut st.campaign_blocks),
                    ended_ms: now_ms,
                });
                st.peak = Level::Observe;
                st.skipped.clear();
                st.capped_reported = false;
            }
        }
    }

    fn change(
        &mut self,
        class: AttackClass,
        to: Level,
        now_ms: u64,
        kind: EventKind,
        why: String,
        out: &mut StepOutput,
    ) {
        let dry_run = self.dry_run;
        let st = &mut self.classes[class.index()];
        let from = st.level;
        st.level = to;
        st.since_ms = now_ms;
        st.why = why.clone();
        st.hot_streak = 0;
        st.quiet_since_ms = None;
        if !st.pinned && to > st.peak {
            st.peak = to;
        }
        out.events.push(Event {
            at_ms: now_ms,
            class,
            kind,
            from,
            to,
            why,
            numbers: st.last,
            dry_run,
        });
    }

    /// Auto-blocks and upstream recommendations for the class's level.
    fn effects(
        &mut self,
        class: AttackClass,
        now_ms: u64,
        rates: Option<&Rates>,
        top: Option<&TopTalkers>,
        out: &mut StepOutput,
    ) {
        let level = self.classes[class.index()].level;
        if level >= Level::AutoBlock && self.cfg.auto_block.enabled {
            if let Some(top) = top {
                self.maintain_blocks(class, now_ms, top, out);
            }
        } else {
            self.release_blocks(class, now_ms, "class below auto-block level", out);
        }
        let st = &self.classes[class.index()];
        if level == Level::Upstream && !st.upstream_active {
            if let Some(top) = top {
                let rec = self.recommendation(class, rates, top);
                let st = &mut self.classes[class.index()];
                st.upstream_active = true;
                out.events.push(Event {
                    at_ms: now_ms,
                    class,
                    kind: EventKind::UpstreamRecommended,
                    from: level,
                    to: level,
                    why: rec.summary.clone(),
                    numbers: st.last,
                    dry_run: self.dry_run,
                });
                out.actions.push(Action {
                    dry_run: self.dry_run,
                    kind: ActionKind::Upstream(rec),
                });
            }
        } else if level < Level::Upstream && st.upstream_active {
            let st = &mut self.classes[class.index()];
            st.upstream_active = false;
            out.events.push(Event {
                at_ms: now_ms,
                class,
                kind: EventKind::UpstreamWithdrawn,
                from: level,
                to: level,
                why: "class below the upstream level".into(),
                numbers: st.last,
                dry_run: self.dry_run,
            });
            out.actions.push(Action {
                dry_run: self.dry_run,
                kind: ActionKind::UpstreamWithdraw { class },
            });
        }
    }

    fn maintain_blocks(
        &mut self,
        class: AttackClass,
        now_ms: u64,
        top: &TopTalkers,
        out: &mut StepOutput,
    ) {
        let ab = self.cfg.auto_block.clone();
        let ttl_ms = ab.ttl_secs * 1000;
        let (mut cands, skipped) = blocks::candidates(class, top, &ab, &self.allowlist);
        // The top talkers scale shares by the previous interval's rate (they
        // tick after this step): at a flood's first interval that is the
        // quiet one before it. Estimate from this interval's offered load.
        let class_pps = self.classes[class.index()].last.pps;
        for c in &mut cands {
            c.est_pps = c.share * class_pps;
        }
        let rearm = std::mem::take(&mut self.classes[class.index()].rearm);
        // Re-armed blocks first (they were the campaign's), then the current
        // heaviest.
        let mut wanted: Vec<(Candidate, bool)> = Vec::new();
        for prefix in rearm {
            let legit = top.legit_share(&prefix);
            match blocks::guard(&prefix, legit, &ab, &self.allowlist) {
                Ok(()) => {
                    let cur = cands.iter().find(|c| c.prefix == prefix);
                    wanted.push((
                        Candidate {
                            prefix,
                            share: cur.map_or(0.0, |c| c.share),
                            est_pps: cur.map_or(0.0, |c| c.est_pps),
                            legit_share: legit,
                        },
                        true,
                    ));
                }
                Err(why) => self.report_skip(class, now_ms, prefix, 0.0, why, out),
            }
        }
        for c in cands {
            if !wanted.iter().any(|(w, _)| w.prefix == c.prefix) {
                wanted.push((c, false));
            }
        }
        for s in skipped {
            self.report_skip(class, now_ms, s.prefix, s.share, s.why, out);
        }
        let dry_run = self.dry_run;
        for (c, rearmed) in wanted {
            let numbers = self.classes[class.index()].last;
            let level = self.classes[class.index()].level;
            let reason = if rearmed && c.share == 0.0 {
                format!("auto: {class} flood, re-armed from the last campaign")
            } else {
                format!(
                    "auto: {class} flood, {:.0}% of {class} traffic, ~{} pps",
                    c.share * 100.0,
                    human(c.est_pps)
                )
            };
            if let Some(b) = self.blocks.get_mut(&c.prefix) {
                b.owners.insert(class);
                // Still attacking: refresh before the rule expires.
                if b.expires_ms.saturating_sub(now_ms) < ttl_ms / 2 {
                    b.expires_ms = now_ms + ttl_ms;
                    out.actions.push(Action {
                        dry_run,
                        kind: ActionKind::AddAutoBlock {
                            prefix: c.prefix,
                            ttl_secs: ab.ttl_secs,
                            reason,
                            class,
                        },
                    });
                    out.events.push(Event {
                        at_ms: now_ms,
                        class,
                        kind: EventKind::AutoBlockRefreshed {
                            prefix: c.prefix,
                            ttl_secs: ab.ttl_secs,
                        },
                        from: level,
                        to: level,
                        why: "still among the heaviest sources".into(),
                        numbers,
                        dry_run,
                    });
                }
                continue;
            }
            if self.blocks.len() >= ab.max_blocks {
                let st = &mut self.classes[class.index()];
                if !st.capped_reported {
                    st.capped_reported = true;
                    out.events.push(Event {
                        at_ms: now_ms,
                        class,
                        kind: EventKind::AutoBlockCapped { cap: ab.max_blocks },
                        from: level,
                        to: level,
                        why: format!(
                            "{} auto-blocks in force, the most allowed; {} and lighter prefixes not blocked",
                            ab.max_blocks, c.prefix
                        ),
                        numbers,
                        dry_run,
                    });
                }
                break;
            }
            self.blocks.insert(
                c.prefix,
                ActiveBlock {
                    owners: BTreeSet::from([class]),
                    expires_ms: now_ms + ttl_ms,
                },
            );
            let st = &mut self.classes[class.index()];
            if !st.campaign_blocks.contains(&c.prefix) {
                st.campaign_blocks.push(c.prefix);
            }
            let why = if rearmed {
                format!("re-armed from the campaign ({reason})")
            } else {
                reason.clone()
            };
            out.actions.push(Action {
                dry_run,
                kind: ActionKind::AddAutoBlock {
                    prefix: c.prefix,
                    ttl_secs: ab.ttl_secs,
                    reason,
                    class,
                },
            });
            out.events.push(Event {
                at_ms: now_ms,
                class,
                kind: EventKind::AutoBlocked {
                    prefix: c.prefix,
                    share: c.share,
                    est_pps: c.est_pps,
                    ttl_secs: ab.ttl_secs,
                },
                from: level,
                to: level,
                why,
                numbers,
                dry_run,
            });
        }
    }

    fn report_skip(
        &mut self,
        class: AttackClass,
        now_ms: u64,
        prefix: IpNet,
        share: f64,
        why: String,
        out: &mut StepOutput,
    ) {
        let st = &mut self.classes[class.index()];
        if st.skipped.insert(prefix) {
            out.events.push(Event {
                at_ms: now_ms,
                class,
                kind: EventKind::AutoBlockSkipped { prefix, share },
                from: st.level,
                to: st.level,
                why,
                numbers: st.last,
                dry_run: self.dry_run,
            });
        }
    }

    /// Drops `class`'s claim on its blocks; blocks nobody claims go.
    fn release_blocks(&mut self, class: AttackClass, now_ms: u64, why: &str, out: &mut StepOutput) {
        let mut gone = Vec::new();
        for (prefix, b) in self.blocks.iter_mut() {
            if b.owners.remove(&class) && b.owners.is_empty() {
                gone.push(*prefix);
            }
        }
        for prefix in gone {
            self.unblock(class, prefix, now_ms, why.to_string(), out);
        }
    }

    fn unblock(
        &mut self,
        class: AttackClass,
        prefix: IpNet,
        now_ms: u64,
        why: String,
        out: &mut StepOutput,
    ) {
        self.blocks.remove(&prefix);
        let st = &self.classes[class.index()];
        out.actions.push(Action {
            dry_run: self.dry_run,
            kind: ActionKind::RemoveAutoBlock { prefix, class },
        });
        out.events.push(Event {
            at_ms: now_ms,
            class,
            kind: EventKind::AutoUnblocked { prefix },
            from: st.level,
            to: st.level,
            why,
            numbers: st.last,
            dry_run: self.dry_run,
        });
    }

    fn enforce_allowlist(&mut self, now_ms: u64, out: &mut StepOutput) {
        let hit: Vec<(IpNet, AttackClass, IpNet)> = self
            .blocks
            .iter()
            .filter_map(|(p, b)| {
                let a = blocks::allowlisted(p, &self.allowlist)?;
                Some((*p, *b.owners.first()?, *a))
            })
            .collect();
        for (prefix, class, allow) in hit {
            self.unblock(
                class,
                prefix,
                now_ms,
                format!("overlaps the allowlisted {allow}"),
                out,
            );
        }
    }

    fn recommendation(
        &self,
        class: AttackClass,
        rates: Option<&Rates>,
        top: &TopTalkers,
    ) -> UpstreamRecommendation {
        let (pps, bps, total_bps) = match rates {
            Some(r) => (r.class(class).pps, r.class(class).bps, r.total.bps),
            None => {
                let (p, b) = top.scope_rate(Scope::Class(class));
                (p, b, top.scope_rate(Scope::All).1)
            }
        };
        let destinations: Vec<TopDestination> = top
            .top_destinations_in(Scope::Class(class), 5)
            .into_iter()
            .filter(|d| d.share >= 0.05)
            .collect();
        let proto = |p: u8| p.to_string();
        let flowspec = destinations
            .iter()
            .map(|d| {
                let host = IpNet::from(d.addr);
                if d.port != 0 {
                    format!(
                        "match destination {host} protocol {} destination-port {} then discard",
                        proto(d.proto),
                        d.port
                    )
                } else {
                    format!(
                        "match destination {host} protocol {} then discard",
                        proto(d.proto)
                    )
                }
            })
            .collect();
        let mut rtbh: Vec<IpNet> = destinations.iter().map(|d| IpNet::from(d.addr)).collect();
        rtbh.dedup();
        let sources: Vec<IpNet> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.owners.contains(&class))
            .map(|(p, _)| *p)
            .collect();
        let summary = format!(
            "{class} flood of {} pps, {}bit/s (link total {}bit/s) is beyond what this host can absorb: \
             ask upstream for FlowSpec discard of {} destination(s){}",
            human(pps),
            human(bps),
            human(total_bps),
            destinations.len(),
            if rtbh.is_empty() {
                String::new()
            } else {
                format!(", or RTBH of {} as a last resort", rtbh.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "))
            }
        );
        UpstreamRecommendation {
            class,
            pps,
            bps,
            total_bps,
            destinations,
            sources,
            flowspec,
            rtbh,
            summary,
        }
    }

    /// Emits `SetConfig` when the config for the current levels differs from
    /// the one last handed out.
    fn emit_config(&mut self, out: &mut StepOutput) {
        let levels = self.levels();
        let config = datapath_config(&self.cfg, &self.base, &levels);
        if config != self.applied {
            self.applied = config;
            out.actions.push(Action {
                dry_run: self.dry_run,
                kind: ActionKind::SetConfig { levels, config },
            });
        }
    }

    /// Operator: hold `class` at `level` (`mitigator escalate CLASS LEVEL`).
    /// The config changes at once; a pin at level 3 or more blocks the
    /// current top offenders at once too. Pinning to 0 ends the campaign
    /// (it is remembered for re-arming as if it had stepped down).
    pub fn pin(
        &mut self,
        class: AttackClass,
        level: Level,
        now_ms: u64,
        top: &TopTalkers,
    ) -> StepOutput {
        let mut out = StepOutput::default();
        let st = &mut self.classes[class.index()];
        st.pinned = true;
        if level == Level::Observe && st.peak > Level::Observe {
            st.memory = Some(Campaign {
                level: st.peak,
                blocks: std::mem::take(&mut st.campaign_blocks),
                ended_ms: now_ms,
            });
            st.peak = Level::Observe;
            st.skipped.clear();
            st.capped_reported = false;
        }
        self.change(
            class,
            level,
            now_ms,
            EventKind::Pinned,
            format!("pinned by the operator at {level}"),
            &mut out,
        );
        self.effects(class, now_ms, None, Some(top), &mut out);
        self.emit_config(&mut out);
        out
    }

    /// Operator: back to automatic (`mitigator escalate CLASS auto`). The
    /// class stays where it is and moves from there; the quiet period
    /// before a step down starts now.
    pub fn release(&mut self, class: AttackClass, now_ms: u64) -> StepOutput {
        let mut out = StepOutput::default();
        let st = &self.classes[class.index()];
        if !st.pinned {
            return out;
        }
        let level = st.level;
        self.classes[class.index()].pinned = false;
        self.change(
            class,
            level,
            now_ms,
            EventKind::Released,
            format!("released by the operator; automatic from {level}"),
            &mut out,
        );
        out
    }

    pub fn is_pinned(&self, class: AttackClass) -> bool {
        self.classes[class.index()].pinned
    }

    /// The allowlist changed: blocks that overlap it go at once.
    pub fn set_allowlist(&mut self, allowlist: Vec<IpNet>, now_ms: u64) -> StepOutput {
        self.allowlist = allowlist;
        let mut out = StepOutput::default();
        self.enforce_allowlist(now_ms, &mut out);
        out
    }

    /// The operator's base config changed.
    pub fn set_base(&mut self, base: Config) -> StepOutput {
        self.dry_run = self.cfg.monitor || base.has(FLAG_MONITOR);
        self.base = base;
        let mut out = StepOutput::default();
        self.emit_config(&mut out);
        out
    }

    pub fn status(&self) -> EscalationStatus {
        let classes = AttackClass::ALL
            .iter()
            .map(|&class| {
                let st = &self.classes[class.index()];
                ClassStatus {
                    class,
                    level: st.level,
                    level_name: st.level.name().to_string(),
                    defence: st.level.describe(class).to_string(),
                    since: st.since_ms / 1000,
                    why: st.why.clone(),
                    pinned: st.pinned,
                    numbers: st.last,
                    auto_blocks: self
                        .blocks
                        .iter()
                        .filter(|(_, b)| b.owners.contains(&class))
                        .map(|(p, _)| *p)
                        .collect(),
                    campaign: st.memory.as_ref().map(|m| CampaignStatus {
                        level: m.level,
                        ended: m.ended_ms / 1000,
                        rearm_until: m.ended_ms / 1000 + self.cfg.campaign_window_secs,
                        blocks: m.blocks.clone(),
                    }),
                }
            })
            .collect();
        EscalationStatus {
            dry_run: self.dry_run,
            classes,
            auto_blocks: self.blocks.len(),
            max_auto_blocks: self.cfg.auto_block.max_blocks,
            baselines: self.baselines.clone(),
        }
    }
}
