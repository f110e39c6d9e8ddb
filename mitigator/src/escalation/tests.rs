//! The ladder on synthetic rate series and samples: no kernel involved.

use ipnet::IpNet;
use mitigator_common::{
    Class, Config, Counter, Gcra, Reason, FLAG_AMP_DROP, FLAG_MONITOR, FLAG_PORT_CAP,
    FLAG_RATE_LIMIT, FLAG_SAMPLE, FLAG_SYN_COOKIES, FRAG_RATE_LIMIT,
};

use super::*;
use crate::detect::{heavy::tests::sample, ClassRate, DetectConfig, Rates, TopConfig, TopTalkers};

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
        sample_every: 1,
        sample_max_per_sec: 2000,
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Test defaults: 1 s intervals, 10 s quiet period, small floors.
fn cfg() -> EscalationConfig {
    let mut c = EscalationConfig {
        quiet_secs: 10,
        campaign_window_secs: 600,
        ..EscalationConfig::default()
    };
    for class in AttackClass::ALL {
        let cc = c.class_mut(class);
        cc.min_pps = 1_000.0;
        cc.min_bps = 0.0;
    }
    c
}

/// A ladder, its top talkers and a clock, stepping one second at a time.
struct Sim {
    ladder: Ladder,
    top: TopTalkers,
    now: u64,
    events: Vec<Event>,
    actions: Vec<Action>,
}

impl Sim {
    fn new(cfg: EscalationConfig, allowlist: Vec<IpNet>) -> Self {
        Self::with_base(cfg, allowlist, base())
    }

    fn with_base(cfg: EscalationConfig, allowlist: Vec<IpNet>, base: Config) -> Self {
        Self {
            ladder: Ladder::new(cfg, base, allowlist, 60.0, 0),
            top: TopTalkers::new(TopConfig::default(), 1),
            now: 0,
            events: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// One 1-second interval with these offered rates per class (100-byte
    /// packets). Returns the step's output (also kept in `events`/`actions`).
    fn step(&mut self, pps: &[(AttackClass, f64)]) -> StepOutput {
        self.now += 1_000;
        let mut r = Rates {
            at_ms: self.now,
            secs: 1.0,
            ..Rates::default()
        };
        for &(class, p) in pps {
            let cr = ClassRate {
                pps: p,
                bps: p * 800.0,
                passed_pps: p,
                packets: p as u64,
                bytes: p as u64 * 100,
                ..ClassRate::default()
            };
            match class {
                AttackClass::Syn => r.syn = cr,
                AttackClass::Udp => r.udp = cr,
                AttackClass::Icmp => r.icmp = cr,
                AttackClass::Frag => r.frag = cr,
            }
            r.total.pps += cr.pps;
            r.total.bps += cr.bps;
            r.total.packets += cr.packets;
            r.total.bytes += cr.bytes;
        }
        let out = self.ladder.step(self.now, &r, &self.top);
        self.top
            .tick(self.now, Some(&r), self.ladder.quiet_classes());
        self.events.extend(out.events.iter().cloned());
        self.actions.extend(out.actions.iter().cloned());
        out
    }

    /// Samples for the coming interval.
    fn feed(&mut self, src: &str, n: usize, class: Class, reason: Reason) {
        for _ in 0..n {
            self.top
                .observe(&sample(src, "192.0.2.1", 53, class, reason));
        }
    }

    /// `n` samples from `n` different random-looking IPv4 sources.
    fn feed_random(&mut self, seed: u64, n: usize, class: Class) {
        let mut rng = crate::detect::TestRng(seed);
        for _ in 0..n {
            let v = rng.next();
            let src = format!(
                "{}.{}.{}.{}",
                1 + v % 223,
                (v >> 8) % 256,
                (v >> 16) % 256,
                1 + (v >> 24) % 254
            );
            self.top
                .observe(&sample(&src, "192.0.2.1", 80, class, Reason::Pass));
        }
    }

    fn level(&self, class: AttackClass) -> Level {
        self.ladder.level(class)
    }
}

fn blocked(actions: &[Action]) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = actions
        .iter()
        .filter_map(|a| match &a.kind {
            ActionKind::AddAutoBlock { prefix, .. } => Some(*prefix),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn unblocked(actions: &[Action]) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = actions
        .iter()
        .filter_map(|a| match &a.kind {
            ActionKind::RemoveAutoBlock { prefix, .. } => Some(*prefix),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn last_config(actions: &[Action]) -> Option<Config> {
    actions.iter().rev().find_map(|a| match &a.kind {
        ActionKind::SetConfig { config, .. } => Some(*config),
        _ => None,
    })
}

const SYN: AttackClass = AttackClass::Syn;
const UDP: AttackClass = AttackClass::Udp;

#[test]
fn baseline_learns_in_quiet_time_and_freezes_under_attack() {
    let mut sim = Sim::new(cfg(), vec![]);
    for _ in 0..120 {
        sim.step(&[(SYN, 400.0), (UDP, 800.0)]);
    }
    let b = sim.ladder.baselines();
    assert!((b.syn.pps - 400.0).abs() < 1e-6);
    assert!((b.udp.pps - 800.0).abs() < 1e-6);
    // Threshold: max(1000 floor, 5 × 800 baseline) = 4000 for udp; just
    // under it is not an attack and is learned.
    let out = sim.step(&[(SYN, 400.0), (UDP, 3_900.0)]);
    assert!(out.events.is_empty(), "{:?}", out.events);
    assert_eq!(sim.level(UDP), Level::Observe);
    let learned = sim.ladder.baselines().udp.pps;
    assert!(learned > 800.0 && learned < 900.0, "{learned}");
    // A long UDP flood: its baseline freezes, syn keeps learning.
    for _ in 0..300 {
        sim.step(&[(SYN, 800.0), (UDP, 200_000.0)]);
    }
    assert_eq!(sim.level(UDP), Level::AutoBlock);
    let b = sim.ladder.baselines();
    assert_eq!(b.udp.pps, learned);
    assert_eq!(
        b.total.pps,
        b.total.pps.min(learned + 1_000.0),
        "total frozen too"
    );
    assert!(b.syn.pps > 750.0, "{}", b.syn.pps);
    let st = sim.ladder.status();
    assert_eq!(st.classes[UDP.index()].numbers.baseline_pps, learned);
    assert_eq!(st.classes[UDP.index()].numbers.threshold_pps, 5.0 * learned);
}

#[test]
fn escalates_after_the_configured_number_of_hot_intervals() {
    for after in [1u32, 2, 3] {
        let mut c = cfg();
        c.escalate_after = after;
        let mut sim = Sim::new(c, vec![]);
        for _ in 0..10 {
            sim.step(&[(SYN, 100.0)]);
        }
        for i in 1..=after {
            sim.feed_random(i as u64, 500, Class::TcpSyn);
            let out = sim.step(&[(SYN, 50_000.0)]);
            if i < after {
                assert_eq!(sim.level(SYN), Level::Observe, "after {i} of {after}");
                assert!(out.actions.is_empty());
            } else {
                assert_eq!(sim.level(SYN), Level::RateLimit, "after {i} of {after}");
                let e = &out.events[0];
                assert_eq!(
                    (e.kind.clone(), e.from, e.to),
                    (EventKind::Escalated, Level::Observe, Level::RateLimit)
                );
                // The numbers that caused it are in the event.
                assert_eq!(e.numbers.pps, 50_000.0);
                assert!((e.numbers.baseline_pps - 100.0).abs() < 1e-6);
                assert_eq!(e.numbers.threshold_pps, 1_000.0);
                assert!(e.why.contains("50.0k pps"), "{}", e.why);
                assert!(e.why.contains("threshold 1.0k pps"), "{}", e.why);
                let c = last_config(&out.actions).unwrap();
                assert_eq!(c.syn, Gcra::per_second(100, 200));
            }
        }
    }
}

#[test]
fn every_step_of_the_ladder_for_a_random_source_syn_flood() {
    let mut c = cfg();
    c.upstream.bps = 1e9;
    let mut sim = Sim::new(c, vec![]);
    sim.step(&[(SYN, 100.0)]);
    // 1: per-source limits.
    sim.feed_random(1, 1000, Class::TcpSyn);
    let out = sim.step(&[(SYN, 100_000.0)]);
    assert_eq!(sim.level(SYN), Level::RateLimit);
    let conf = last_config(&out.actions).unwrap();
    assert!(conf.has(FLAG_RATE_LIMIT) && !conf.has(FLAG_SYN_COOKIES));
    // 2: SYN cookies.
    sim.feed_random(2, 1000, Class::TcpSyn);
    let out = sim.step(&[(SYN, 100_000.0)]);
    assert_eq!(sim.level(SYN), Level::Defence);
    assert!(last_config(&out.actions).unwrap().has(FLAG_SYN_COOKIES));
    // 3: auto-block, but random sources give nothing worth blocking.
    sim.feed_random(3, 1000, Class::TcpSyn);
    let out = sim.step(&[(SYN, 100_000.0)]);
    assert_eq!(sim.level(SYN), Level::AutoBlock);
    assert!(blocked(&out.actions).is_empty());
    assert!(
        last_config(&out.actions).is_none(),
        "same config as level 2"
    );
    // Stays at 3 while the link is not full (100k pps × 800 bit < 1 Gbit/s).
    for i in 0..5 {
        sim.feed_random(10 + i, 1000, Class::TcpSyn);
        sim.step(&[(SYN, 100_000.0)]);
    }
    assert_eq!(sim.level(SYN), Level::AutoBlock);
    // 4: the pipe fills: an upstream recommendation, no network action.
    sim.feed_random(20, 1000, Class::TcpSyn);
    let out = sim.step(&[(SYN, 2_000_000.0)]);
    assert_eq!(sim.level(SYN), Level::Upstream);
    let rec = out
        .actions
        .iter()
        .find_map(|a| match &a.kind {
            ActionKind::Upstream(r) => Some(r.clone()),
            _ => None,
        })
        .expect("upstream recommendation");
    assert_eq!(rec.class, SYN);
    assert_eq!(rec.destinations[0].addr.to_string(), "192.0.2.1");
    assert_eq!(rec.rtbh, vec![net("192.0.2.1/32")]);
    assert!(
        rec.flowspec[0].contains("destination 192.0.2.1/32 protocol 6 destination-port 80"),
        "{:?}",
        rec.flowspec
    );
    assert!(out
        .events
        .iter()
        .any(|e| e.kind == EventKind::UpstreamRecommended));
    // Recommended once, not every interval.
    let out = sim.step(&[(SYN, 2_000_000.0)]);
    assert!(out.actions.is_empty());
    // Quiet: back down one level at a time, withdrawing the recommendation first.
    let mut seen = vec![sim.level(SYN)];
    for _ in 0..60 {
        let out = sim.step(&[(SYN, 100.0)]);
        if out
            .actions
            .iter()
            .any(|a| matches!(a.kind, ActionKind::UpstreamWithdraw { .. }))
        {
            assert_eq!(sim.level(SYN), Level::AutoBlock);
        }
        if *seen.last().unwrap() != sim.level(SYN) {
            seen.push(sim.level(SYN));
        }
    }
    assert_eq!(
        seen,
        vec![
            Level::Upstream,
            Level::AutoBlock,
            Level::Defence,
            Level::RateLimit,
            Level::Observe
        ]
    );
    assert_eq!(last_config(&sim.actions).unwrap(), base());
}

#[test]
fn a_flood_from_a_handful_of_sources_goes_straight_to_auto_block() {
    let mut sim = Sim::new(cfg(), vec![]);
    sim.step(&[(UDP, 100.0)]);
    let attackers = [
        "198.51.100.1",
        "198.51.100.2",
        "203.0.113.7",
        "203.0.113.8",
        "192.0.2.99",
    ];
    for a in attackers {
        sim.feed(a, 200, Class::Udp, Reason::DropUdpRate);
    }
    sim.feed_random(5, 100, Class::Udp);
    let out = sim.step(&[(UDP, 500_000.0)]);
    assert_eq!(sim.level(UDP), Level::AutoBlock);
    let e = out
        .events
        .iter()
        .find(|e| e.kind == EventKind::Escalated)
        .unwrap();
    assert!(e.why.contains("straight to auto-block"), "{}", e.why);
    let mut want: Vec<IpNet> = attackers.iter().map(|a| net(&format!("{a}/32"))).collect();
    want.sort();
    assert_eq!(blocked(&out.actions), want);
    for a in &out.actions {
        if let ActionKind::AddAutoBlock {
            ttl_secs,
            reason,
            class,
            ..
        } = &a.kind
        {
            assert_eq!(*ttl_secs, 900);
            assert_eq!(*class, UDP);
            assert!(reason.starts_with("auto: udp flood"), "{reason}");
        }
    }
    // The level-2 defences come with it.
    let c = last_config(&out.actions).unwrap();
    assert!(c.has(FLAG_AMP_DROP) && c.has(FLAG_PORT_CAP));
    // Blocked sources keep being sampled (as drops) while they send: no
    // duplicate block, and no refresh before half the TTL.
    for a in attackers {
        sim.feed(a, 200, Class::Udp, Reason::DropBlocklist);
    }
    let out = sim.step(&[(UDP, 500_000.0)]);
    assert!(blocked(&out.actions).is_empty());
}

#[test]
fn hysteresis_no_flapping_around_the_thresholds() {
    let mut sim = Sim::new(cfg(), vec![]);
    for _ in 0..10 {
        sim.step(&[(SYN, 100.0)]);
    }
    // Around the step-up threshold (1000): up once per hot interval, never down.
    for i in 0..600 {
        let p = if i % 2 == 0 { 1_050.0 } else { 950.0 };
        sim.feed_random(i, 500, Class::TcpSyn);
        sim.step(&[(SYN, p)]);
    }
    assert!(sim.events.iter().all(|e| e.kind == EventKind::Escalated));
    assert_eq!(
        sim.events.len(),
        3,
        "{:?}",
        sim.events.iter().map(|e| e.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(sim.level(SYN), Level::AutoBlock);
    // Around the step-down threshold (500): quiet never lasts 10 s, no step down.
    sim.events.clear();
    for i in 0..600 {
        let p = if i % 5 == 4 { 550.0 } else { 450.0 };
        sim.step(&[(SYN, p)]);
    }
    assert!(sim.events.is_empty());
    assert_eq!(sim.level(SYN), Level::AutoBlock);
    // Truly quiet: down one level per quiet period.
    for _ in 0..9 {
        sim.step(&[(SYN, 450.0)]);
    }
    assert_eq!(sim.level(SYN), Level::AutoBlock);
    sim.step(&[(SYN, 450.0)]);
    assert_eq!(sim.level(SYN), Level::Defence);
}

#[test]
fn quiet_period_steps_down_one_level_at_a_time() {
    let mut sim = Sim::new(cfg(), vec![]);
    sim.step(&[(UDP, 100.0)]);
    sim.ladder.pin(UDP, Level::AutoBlock, sim.now, &sim.top);
    sim.ladder.release(UDP, sim.now);
    let released = sim.now;
    let mut changes = Vec::new();
    for _ in 0..40 {
        let out = sim.step(&[(UDP, 0.0)]);
        for e in out.events {
            assert_eq!(e.kind, EventKind::DeEscalated);
            assert_eq!(e.to, e.from.down());
            assert!(e.why.starts_with("quiet for 10s"), "{}", e.why);
            changes.push(((sim.now - released) / 1000, e.to));
        }
    }
    assert_eq!(
        changes,
        vec![
            (10, Level::Defence),
            (20, Level::RateLimit),
            (30, Level::Observe)
        ]
    );
    // A not-quiet interval (between the thresholds) restarts the quiet period.
    sim.ladder.pin(UDP, Level::Defence, sim.now, &sim.top);
    sim.ladder.release(UDP, sim.now);
    for _ in 0..9 {
        sim.step(&[(UDP, 0.0)]);
    }
    sim.step(&[(UDP, 700.0)]);
    for _ in 0..9 {
        sim.step(&[(UDP, 0.0)]);
    }
    assert_eq!(sim.level(UDP), Level::Defence);
    sim.step(&[(UDP, 0.0)]);
    assert_eq!(sim.level(UDP), Level::RateLimit);
}

/// Runs a burst from `attackers` at `pps` for `secs`, then quiet until the
/// class is back at level 0.
fn burst_then_quiet(sim: &mut Sim, attackers: &[&str], pps: f64, secs: usize) {
    for _ in 0..secs {
        for a in attackers {
            sim.feed(a, 100, Class::Udp, Reason::DropBlocklist);
        }
        sim.step(&[(UDP, pps)]);
    }
    for _ in 0..100 {
        sim.step(&[(UDP, 10.0)]);
        if sim.level(UDP) == Level::Observe {
            break;
        }
    }
    assert_eq!(sim.level(UDP), Level::Observe);
}

#[test]
fn campaign_memory_rearms_at_once_within_the_window_and_not_after() {
    let mut sim = Sim::new(cfg(), vec![]);
    sim.step(&[(UDP, 10.0)]);
    let attackers = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
    burst_then_quiet(&mut sim, &attackers, 300_000.0, 20);
    let st = sim.ladder.status();
    let camp = st.classes[UDP.index()].campaign.clone().unwrap();
    assert_eq!(camp.level, Level::AutoBlock);
    assert_eq!(camp.blocks.len(), 3);
    assert!(
        st.classes[UDP.index()].auto_blocks.is_empty(),
        "blocks went with level 3"
    );
    assert_eq!(unblocked(&sim.actions).len(), 3);

    // Five minutes later a new burst, from random sources this time: the
    // first hot interval re-arms level 3 and the campaign's blocks.
    for _ in 0..300 {
        sim.step(&[(UDP, 10.0)]);
    }
    sim.feed_random(9, 1000, Class::Udp);
    let out = sim.step(&[(UDP, 300_000.0)]);
    assert_eq!(sim.level(UDP), Level::AutoBlock);
    let e = &out.events[0];
    assert_eq!(
        (e.kind.clone(), e.from, e.to),
        (EventKind::Rearmed, Level::Observe, Level::AutoBlock)
    );
    assert!(e.why.contains("re-arm window 600s"), "{}", e.why);
    let mut want: Vec<IpNet> = attackers.iter().map(|a| net(&format!("{a}/32"))).collect();
    want.sort();
    assert_eq!(blocked(&out.actions), want);
    assert!(out
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::AutoBlocked { .. }))
        .all(|e| e.why.starts_with("re-armed")));
    assert!(last_config(&out.actions).unwrap().has(FLAG_AMP_DROP));

    // Within a campaign too: after stepping down to 2, a new burst goes
    // straight back to 3.
    for _ in 0..10 {
        sim.step(&[(UDP, 10.0)]);
    }
    assert_eq!(sim.level(UDP), Level::Defence);
    sim.feed_random(10, 1000, Class::Udp);
    let out = sim.step(&[(UDP, 300_000.0)]);
    assert_eq!(out.events[0].kind, EventKind::Rearmed);
    assert_eq!(sim.level(UDP), Level::AutoBlock);

    // After the window: a new burst climbs normally.
    burst_then_quiet(&mut sim, &[], 300_000.0, 1);
    for _ in 0..601 {
        sim.step(&[(UDP, 10.0)]);
    }
    sim.actions.clear();
    sim.feed_random(11, 1000, Class::Udp);
    let out = sim.step(&[(UDP, 300_000.0)]);
    assert_eq!(out.events[0].kind, EventKind::Escalated);
    assert_eq!(sim.level(UDP), Level::RateLimit);
    assert!(blocked(&sim.actions).is_empty());
}

#[test]
fn allowlisted_prefixes_are_never_auto_blocked_even_when_heaviest() {
    let allow = vec![net("192.0.2.0/28"), net("2001:db8:77::/48")];
    let mut sim = Sim::new(cfg(), allow);
    sim.step(&[(UDP, 10.0)]);
    for i in 0..30 {
        sim.feed("192.0.2.5", 2_000, Class::Udp, Reason::PassAllowlist);
        sim.feed("2001:db8:77:1::5", 1_000, Class::Udp, Reason::PassAllowlist);
        for a in ["198.51.100.1", "198.51.100.2"] {
            sim.feed(a, 200, Class::Udp, Reason::DropUdpRate);
        }
        sim.feed_random(i, 200, Class::Udp);
        sim.step(&[(UDP, 400_000.0)]);
    }
    assert_eq!(sim.level(UDP), Level::AutoBlock);
    let b = blocked(&sim.actions);
    assert_eq!(b, vec![net("198.51.100.1/32"), net("198.51.100.2/32")]);
    let skipped: Vec<IpNet> = sim
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::AutoBlockSkipped { prefix, .. } => Some(prefix),
            _ => None,
        })
        .collect();
    // Reported once each, not every interval.
    assert!(skipped.contains(&net("192.0.2.5/32")));
    assert!(skipped.contains(&net("2001:db8:77:1::/64")));
    assert_eq!(
        skipped
            .iter()
            .filter(|p| **p == net("192.0.2.5/32"))
            .count(),
        1
    );
    // The operator allowlists an attacker later: its block goes at once.
    let out = sim
        .ladder
        .set_allowlist(vec![net("198.51.100.0/24")], sim.now);
    assert_eq!(
        unblocked(&out.actions),
        vec![net("198.51.100.1/32"), net("198.51.100.2/32")]
    );
    assert!(sim.ladder.auto_blocks().is_empty());
}

#[test]
fn at_most_n_auto_blocks_at_a_time() {
    let mut c = cfg();
    c.auto_block.max_blocks = 4;
    let mut sim = Sim::new(c, vec![]);
    sim.step(&[(UDP, 10.0)]);
    for _ in 0..5 {
        for h in 1..=10 {
            sim.feed(
                &format!("198.51.{h}.1"),
                100 + h,
                Class::Udp,
                Reason::DropUdpRate,
            );
        }
        sim.step(&[(UDP, 400_000.0)]);
    }
    let b = blocked(&sim.actions);
    assert_eq!(b.len(), 4);
    // The four heaviest.
    for h in 7..=10 {
        assert!(b.contains(&net(&format!("198.51.{h}.1/32"))), "{b:?}");
    }
    assert_eq!(sim.ladder.auto_blocks().len(), 4);
    let capped = sim
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::AutoBlockCapped { cap: 4 }))
        .count();
    assert_eq!(capped, 1);
    // The cap is shared by all classes.
    for _ in 0..3 {
        for h in 1..=3 {
            sim.feed(
                &format!("100.64.{h}.1"),
                300,
                Class::TcpSyn,
                Reason::DropSynRate,
            );
        }
        sim.step(&[(UDP, 400_000.0), (SYN, 50_000.0)]);
    }
    assert_eq!(sim.level(SYN), Level::AutoBlock);
    assert_eq!(sim.ladder.auto_blocks().len(), 4);
}

#[test]
fn prefixes_carrying_legitimate_traffic_are_not_blocked() {
    let mut sim = Sim::new(cfg(), vec![]);
    // Quiet time: a big CGNAT address carries 20% of the passed traffic.
    for _ in 0..30 {
        sim.feed("100.64.0.1", 20, Class::Tcp, Reason::Pass);
        for h in 1..=80 {
            sim.feed(&format!("10.{h}.0.1"), 1, Class::Tcp, Reason::Pass);
        }
        sim.step(&[(UDP, 10.0)]);
    }
    // Now it joins a UDP flood with two attackers; its passed UDP during the
    // attack does not count as legitimate.
    for _ in 0..5 {
        sim.feed("100.64.0.1", 300, Class::Udp, Reason::Pass);
        sim.feed("198.51.100.1", 300, Class::Udp, Reason::DropUdpRate);
        sim.feed("198.51.100.2", 300, Class::Udp, Reason::Pass);
        sim.step(&[(UDP, 400_000.0)]);
    }
    assert_eq!(sim.level(UDP), Level::AutoBlock);
    assert_eq!(
        blocked(&sim.actions),
        vec![net("198.51.100.1/32"), net("198.51.100.2/32")]
    );
    let skip = sim
        .events
        .iter()
        .find(|e| matches!(e.kind, EventKind::AutoBlockSkipped { prefix, .. } if prefix == net("100.64.0.1/32")))
        .expect("skipped with a reason");
    assert!(skip.why.contains("legitimate traffic"), "{}", skip.why);
    let share = sim.top.legit_share(&net("198.51.100.2/32"));
    assert_eq!(
        share, 0.0,
        "an attacker's passed packets in the attacked class are not legitimate"
    );
}

#[test]
fn pinned_classes_never_move_by_themselves() {
    let mut sim = Sim::new(cfg(), vec![]);
    sim.step(&[(UDP, 10.0)]);
    let out = sim.ladder.pin(UDP, Level::Defence, sim.now, &sim.top);
    assert_eq!(out.events[0].kind, EventKind::Pinned);
    let c = last_config(&out.actions).unwrap();
    assert!(c.has(FLAG_AMP_DROP));
    let st = sim.ladder.status();
    assert!(st.classes[UDP.index()].pinned);
    assert_eq!(st.classes[UDP.index()].level, Level::Defence);
    assert_eq!(st.classes[UDP.index()].since, sim.now / 1000);
    // A flood does not move it up, quiet does not move it down.
    for _ in 0..20 {
        sim.feed("198.51.100.1", 500, Class::Udp, Reason::DropUdpRate);
        sim.step(&[(UDP, 900_000.0)]);
    }
    for _ in 0..100 {
        sim.step(&[(UDP, 0.0)]);
    }
    assert_eq!(sim.level(UDP), Level::Defence);
    assert!(sim.events.iter().all(|e| e.kind == EventKind::Pinned));
    // Pinning at 0 during a flood holds at 0.
    sim.ladder.pin(SYN, Level::Observe, sim.now, &sim.top);
    for _ in 0..5 {
        sim.step(&[(SYN, 900_000.0)]);
    }
    assert_eq!(sim.level(SYN), Level::Observe);
    // Released: moves on its own from where it was.
    let out = sim.ladder.release(UDP, sim.now);
    assert_eq!(out.events[0].kind, EventKind::Released);
    assert!(!sim.ladder.is_pinned(UDP));
    for _ in 0..10 {
        sim.step(&[(UDP, 0.0)]);
    }
    assert_eq!(sim.level(UDP), Level::RateLimit);
    let out = sim.ladder.release(SYN, sim.now);
    assert_eq!(out.events.len(), 1);
    sim.step(&[(SYN, 900_000.0)]);
    assert_eq!(sim.level(SYN), Level::RateLimit);
    // Releasing an unpinned class is a no-op.
    assert!(sim.ladder.release(SYN, sim.now).events.is_empty());
}

#[test]
fn pin_at_auto_block_blocks_now_and_pin_below_removes_blocks() {
    let mut sim = Sim::new(cfg(), vec![]);
    sim.step(&[(UDP, 10.0)]);
    sim.feed("198.51.100.1", 500, Class::Udp, Reason::Pass);
    let out = sim.ladder.pin(UDP, Level::AutoBlock, sim.now, &sim.top);
    assert_eq!(blocked(&out.actions), vec![net("198.51.100.1/32")]);
    let out = sim.ladder.pin(UDP, Level::RateLimit, sim.now, &sim.top);
    assert_eq!(unblocked(&out.actions), vec![net("198.51.100.1/32")]);
    let c = last_config(&out.actions).unwrap();
    assert!(!c.has(FLAG_AMP_DROP));
}

#[test]
fn monitor_mode_runs_the_ladder_with_dry_run_actions() {
    let mut c = cfg();
    c.monitor = true;
    let mut sim = Sim::new(c, vec![]);
    sim.step(&[(UDP, 10.0)]);
    sim.feed("198.51.100.1", 500, Class::Udp, Reason::DropUdpRate);
    let out = sim.step(&[(UDP, 400_000.0)]);
    assert_eq!(sim.level(UDP), Level::AutoBlock);
    assert!(!out.actions.is_empty());
    assert!(out.actions.iter().all(|a| a.dry_run && !a.should_apply()));
    assert!(out.events.iter().all(|e| e.dry_run));
    assert!(
        out.events[0]
            .to_string()
            .starts_with("[dry-run] udp escalated"),
        "{}",
        out.events[0]
    );
    // With the whole datapath in monitor mode the config may be applied
    // (it only counts), the blocks still not.
    let mut b = base();
    b.flags |= FLAG_MONITOR;
    let mut sim = Sim::with_base(cfg(), vec![], b);
    sim.step(&[(UDP, 10.0)]);
    sim.feed("198.51.100.1", 500, Class::Udp, Reason::DropUdpRate);
    let out = sim.step(&[(UDP, 400_000.0)]);
    for a in &out.actions {
        assert!(a.dry_run);
        assert_eq!(
            a.should_apply(),
            matches!(a.kind, ActionKind::SetConfig { .. })
        );
    }
    // Not in monitor mode: everything applies.
    let mut sim = Sim::new(cfg(), vec![]);
    sim.step(&[(UDP, 10.0)]);
    sim.feed("198.51.100.1", 500, Class::Udp, Reason::DropUdpRate);
    let out = sim.step(&[(UDP, 400_000.0)]);
    assert!(out.actions.iter().all(|a| !a.dry_run && a.should_apply()));
}

#[test]
fn blocks_are_refreshed_while_attacking_and_removed_below_level_three() {
    let mut c = cfg();
    c.auto_block.ttl_secs = 20;
    c.quiet_secs = 5;
    let mut sim = Sim::new(c, vec![]);
    sim.step(&[(UDP, 10.0)]);
    let mut adds = 0;
    for _ in 0..30 {
        sim.feed("198.51.100.1", 500, Class::Udp, Reason::DropBlocklist);
        let out = sim.step(&[(UDP, 400_000.0)]);
        adds += blocked(&out.actions).len();
    }
    // Added at t=2, refreshed when less than half the TTL was left (t=13, t=24).
    assert_eq!(adds, 3);
    assert!(sim
        .events
        .iter()
        .any(|e| matches!(e.kind, EventKind::AutoBlockRefreshed { .. })));
    sim.actions.clear();
    for _ in 0..5 {
        sim.step(&[(UDP, 0.0)]);
    }
    assert_eq!(sim.level(UDP), Level::Defence);
    assert_eq!(unblocked(&sim.actions), vec![net("198.51.100.1/32")]);
}

#[test]
fn status_reports_every_class_and_serializes() {
    let mut sim = Sim::new(cfg(), vec![]);
    sim.step(&[(UDP, 10.0)]);
    sim.feed("198.51.100.1", 500, Class::Udp, Reason::DropUdpRate);
    sim.step(&[(UDP, 400_000.0)]);
    let st = sim.ladder.status();
    assert_eq!(st.classes.len(), 4);
    let udp = &st.classes[UDP.index()];
    assert_eq!(
        (udp.level, udp.level_name.as_str()),
        (Level::AutoBlock, "auto-block")
    );
    assert_eq!(udp.defence, "auto-block of the top offending prefixes");
    assert_eq!(udp.since, 2);
    assert!(udp.why.contains("400.0k pps"), "{}", udp.why);
    assert_eq!(udp.auto_blocks, vec![net("198.51.100.1/32")]);
    assert_eq!(st.auto_blocks, 1);
    let json = serde_json::to_string(&st).unwrap();
    assert!(json.contains("\"class\":\"udp\",\"level\":3"), "{json}");
    let back: EscalationStatus = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
    // Events serialize for structured logs.
    let ev = serde_json::to_value(&sim.events[0]).unwrap();
    assert_eq!(ev["kind"]["event"], "escalated");
    assert_eq!(ev["numbers"]["pps"], 400_000.0);
}

#[test]
fn levels_parse_from_the_command_line() {
    assert_eq!("2".parse::<Level>(), Ok(Level::Defence));
    assert_eq!("auto-block".parse::<Level>(), Ok(Level::AutoBlock));
    assert_eq!("rate_limit".parse::<Level>(), Ok(Level::RateLimit));
    assert!("5".parse::<Level>().is_err());
    assert!("max".parse::<Level>().is_err());
    assert_eq!(Level::Upstream.to_string(), "4 (upstream)");
    assert_eq!(Level::Observe.down(), Level::Observe);
    assert_eq!(Level::Upstream.up(), Level::Upstream);
}

/// The whole pipeline through [`Controller`]: cumulative per-CPU-summed
/// counters and samples in, actions out.
struct Counters(std::collections::BTreeMap<(Reason, Class), Counter>);

impl Counters {
    fn add(&mut self, reason: Reason, class: Class, packets: u64, bytes: u64) {
        let c = self.0.entry((reason, class)).or_default();
        c.packets += packets;
        c.bytes += bytes;
    }

    fn cells(&self) -> Vec<(Reason, Class, Counter)> {
        let mut out = Vec::new();
        for r in Reason::ALL {
            for c in Class::ALL {
                out.push((r, c, self.0.get(&(r, c)).copied().unwrap_or_default()));
            }
        }
        out
    }
}

#[test]
fn controller_end_to_end_udp_flood_from_a_handful_of_sources() {
    let mut b = base();
    b.sample_every = 64;
    let mut ctl = Controller::new(
        &DetectConfig::default(),
        cfg(),
        b,
        vec![net("10.0.0.0/8")],
        0,
    );
    let mut counters = Counters(Default::default());
    assert_eq!(ctl.interval(0, &counters.cells()), StepOutput::default());
    // Quiet minute: web traffic.
    let mut t = 0;
    for _ in 0..60 {
        t += 1_000;
        counters.add(Reason::Pass, Class::Tcp, 5_000, 5_000_000);
        counters.add(Reason::Pass, Class::Udp, 200, 40_000);
        for h in 1..=50 {
            ctl.observe(&sample(
                &format!("100.64.{h}.1"),
                "192.0.2.1",
                443,
                Class::Tcp,
                Reason::Pass,
            ));
        }
        let out = ctl.interval(t, &counters.cells());
        assert!(out.actions.is_empty());
    }
    assert!((ctl.ladder().baselines().udp.pps - 200.0).abs() < 1e-6);
    // Flood: 5 sources, 200k pps in total, sampled 1 in 64 (capped).
    let attackers = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "203.0.113.1",
        "203.0.113.2",
    ];
    let mut all = Vec::new();
    for _ in 0..2 {
        t += 1_000;
        counters.add(Reason::Pass, Class::Tcp, 5_000, 5_000_000);
        counters.add(Reason::DropUdpRate, Class::Udp, 150_000, 9_000_000);
        counters.add(Reason::Pass, Class::Udp, 50_000, 3_000_000);
        for a in attackers {
            for _ in 0..400 {
                ctl.observe(&sample(
                    a,
                    "192.0.2.1",
                    9999,
                    Class::Udp,
                    Reason::DropUdpRate,
                ));
            }
        }
        let out = ctl.interval(t, &counters.cells());
        all.extend(out.actions);
    }
    assert_eq!(ctl.ladder().level(UDP), Level::AutoBlock);
    assert_eq!(blocked(&all).len(), 5, "blocked within the first interval");
    let r = ctl.rates().unwrap();
    assert_eq!(r.udp.pps, 200_000.0);
    // `top` sees them with rates from the counters, not the sample count.
    let report = ctl.top_report(5, t / 1000);
    let udp = report.scopes.iter().find(|s| s.scope == "udp").unwrap();
    let hosts = &udp.sources[0];
    assert_eq!(hosts.sources.len(), 5);
    for s in &hosts.sources {
        assert!(s.est_pps > 30_000.0 && s.est_pps < 50_000.0, "{s:?}");
    }
    let st = ctl.status();
    assert_eq!(st.classes[UDP.index()].auto_blocks.len(), 5);
}

#[test]
fn controller_holds_on_a_counter_reset() {
    let mut ctl = Controller::new(&DetectConfig::default(), cfg(), base(), vec![], 0);
    // Adopted pinned maps: the counters carry a long history.
    let mut counters = Counters(Default::default());
    counters.add(Reason::Pass, Class::Udp, 1 << 40, 1 << 50);
    let mut t = 0;
    ctl.interval(t, &counters.cells());
    for _ in 0..30 {
        t += 1_000;
        counters.add(Reason::Pass, Class::Udp, 500, 50_000);
        let out = ctl.interval(t, &counters.cells());
        assert!(out.events.is_empty());
    }
    assert_eq!(ctl.rates().unwrap().udp.pps, 500.0);
    // The maps were recreated: the counters restart from small values.
    // Neither a huge rate nor an escalation, and nothing learned.
    let baseline = ctl.ladder().baselines().udp;
    let mut fresh = Counters(Default::default());
    fresh.add(Reason::Pass, Class::Udp, 10, 1_000);
    t += 1_000;
    let out = ctl.interval(t, &fresh.cells());
    assert!(ctl.rates().unwrap().reset);
    assert_eq!(ctl.rates().unwrap().udp.pps, 0.0);
    assert!(out.events.is_empty() && out.actions.is_empty());
    assert_eq!(ctl.ladder().level(UDP), Level::Observe);
    assert_eq!(ctl.ladder().baselines().udp, baseline);
    // Counting resumes from the new reference.
    fresh.add(Reason::Pass, Class::Udp, 500, 50_000);
    t += 1_000;
    ctl.interval(t, &fresh.cells());
    assert_eq!(ctl.rates().unwrap().udp.pps, 500.0);
    assert!(!ctl.rates().unwrap().reset);
}
