//! Per-interval rates per attack class from successive snapshots of the
//! (reason, class) counters, and baselines learned during quiet time.
//!
//! Rates count *offered* load: every packet of the class whatever the
//! verdict (passed, dropped, or answered with a SYN cookie), so that a
//! defence that works does not make the attack look over. The verdict split
//! is reported next to it.

use mitigator_common::{Action, Class, Counter, Reason};
use serde::{Deserialize, Serialize};

use super::AttackClass;

/// One class's traffic over one interval. Rates are per second; `bps` is
/// bits per second of frame bytes as counted by XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassRate {
    /// Offered load: all packets of the class, whatever the verdict.
    pub pps: f64,
    pub bps: f64,
    /// Passed to the stack (`Action::Pass`).
    pub passed_pps: f64,
    pub passed_bps: f64,
    /// Dropped (`Action::Drop`, including would-be drops in monitor mode).
    pub dropped_pps: f64,
    pub dropped_bps: f64,
    /// Answered from XDP (`Action::Tx`: SYN cookies).
    pub tx_pps: f64,
    pub tx_bps: f64,
    /// Offered packets and bytes in the interval.
    pub packets: u64,
    pub bytes: u64,
}

/// The rates of one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// End of the interval, unix milliseconds.
    pub at_ms: u64,
    /// Length of the interval, seconds.
    pub secs: f64,
    /// A counter went backwards during this interval (the maps were
    /// recreated, or a CPU went away): the cells that did count as zero, so
    /// the rates are a lower bound. The ladder holds its state on such an
    /// interval and baselines do not learn from it.
    pub reset: bool,
    pub syn: ClassRate,
    pub udp: ClassRate,
    pub icmp: ClassRate,
    pub frag: ClassRate,
    /// Everything, including plain TCP and unclassified traffic.
    pub total: ClassRate,
}

impl Rates {
    pub fn class(&self, class: AttackClass) -> &ClassRate {
        match class {
            AttackClass::Syn => &self.syn,
            AttackClass::Udp => &self.udp,
            AttackClass::Icmp => &self.icmp,
            AttackClass::Frag => &self.frag,
        }
    }

    fn class_mut(&mut self, class: AttackClass) -> &mut ClassRate {
        match class {
            AttackClass::Syn => &mut self.syn,
            AttackClass::Udp => &mut self.udp,
            AttackClass::Icmp => &mut self.icmp,
            AttackClass::Frag => &mut self.frag,
        }
    }
}

type Cells = [[Counter; Class::COUNT]; Reason::COUNT];

/// Turns successive counter snapshots into [`Rates`].
#[derive(Clone, Debug, Default)]
pub struct RateTracker {
    prev: Option<(u64, Cells)>,
}

impl RateTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the counters summed over CPUs (as `Datapath::counters()` returns
    /// them) read at `now_ms` (unix milliseconds). Returns the rates since
    /// the previous snapshot; `None` for the first snapshot, or when the
    /// clock did not move forward (the snapshot is then kept as the new
    /// reference only in the first case).
    pub fn update(&mut self, now_ms: u64, cells: &[(Reason, Class, Counter)]) -> Option<Rates> {
        let mut cur: Cells = [[Counter::default(); Class::COUNT]; Reason::COUNT];
        for (reason, class, c) in cells {
            cur[*reason as usize][*class as usize] = *c;
        }
        let Some((prev_ms, prev)) = self.prev else {
            self.prev = Some((now_ms, cur));
            return None;
        };
        if now_ms <= prev_ms {
            return None;
        }
        self.prev = Some((now_ms, cur));
        let secs = (now_ms - prev_ms) as f64 / 1000.0;
        let mut rates = Rates {
            at_ms: now_ms,
            secs,
            ..Rates::default()
        };
        for reason in Reason::ALL {
            for class in Class::ALL {
                let (p, c) = (
                    prev[reason as usize][class as usize],
                    cur[reason as usize][class as usize],
                );
                // A counter that went backwards was reset: count nothing for
                // this cell rather than a bogus delta.
                let (packets, bytes) = if c.packets < p.packets || c.bytes < p.bytes {
                    rates.reset = true;
                    (0, 0)
                } else {
                    (c.packets - p.packets, c.bytes - p.bytes)
                };
                add(&mut rates.total, reason, packets, bytes);
                if let Some(ac) = AttackClass::from_class(class) {
                    add(rates.class_mut(ac), reason, packets, bytes);
                }
            }
        }
        for ac in AttackClass::ALL {
            finish(rates.class_mut(ac), secs);
        }
        finish(&mut rates.total, secs);
        Some(rates)
    }
}

fn add(r: &mut ClassRate, reason: Reason, packets: u64, bytes: u64) {
    r.packets += packets;
    r.bytes += bytes;
    let (p, b) = (packets as f64, bytes as f64 * 8.0);
    match reason.action() {
        Action::Pass => {
            r.passed_pps += p;
            r.passed_bps += b;
        }
        Action::Drop => {
            r.dropped_pps += p;
            r.dropped_bps += b;
        }
        Action::Tx => {
            r.tx_pps += p;
            r.tx_bps += b;
        }
    }
}

/// Turns the per-interval sums collected by `add` into per-second rates.
fn finish(r: &mut ClassRate, secs: f64) {
    r.pps = r.packets as f64 / secs;
    r.bps = r.bytes as f64 * 8.0 / secs;
    for v in [
        &mut r.passed_pps,
        &mut r.passed_bps,
        &mut r.dropped_pps,
        &mut r.dropped_bps,
        &mut r.tx_pps,
        &mut r.tx_bps,
    ] {
        *v /= secs;
    }
}

/// The normal offered load of one class: an exponentially weighted moving
/// average of the quiet intervals only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub pps: f64,
    pub bps: f64,
    /// Seconds of quiet traffic learned so far (0: nothing learned yet).
    pub learned_secs: f64,
}

impl Baseline {
    /// Folds one quiet interval of `secs` seconds in. The first interval
    /// sets the baseline outright; after that each interval weighs
    /// `1 - 2^(-secs / half_life)`, so a change of level is half absorbed
    /// after `half_life_secs` of quiet traffic.
    pub fn learn(&mut self, rate: &ClassRate, secs: f64, half_life_secs: f64) {
        if !(secs.is_finite() && secs > 0.0) {
            return;
        }
        if self.learned_secs <= 0.0 {
            self.pps = rate.pps;
            self.bps = rate.bps;
        } else {
            let alpha = 1.0 - 0.5f64.powf(secs / half_life_secs);
            self.pps += alpha * (rate.pps - self.pps);
            self.bps += alpha * (rate.bps - self.bps);
        }
        self.learned_secs += secs;
    }
}

/// One baseline per attack class and one for the total.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    pub half_life_secs: f64,
    pub syn: Baseline,
    pub udp: Baseline,
    pub icmp: Baseline,
    pub frag: Baseline,
    pub total: Baseline,
}

impl Baselines {
    pub fn new(half_life_secs: f64) -> Self {
        Self {
            half_life_secs,
            syn: Baseline::default(),
            udp: Baseline::default(),
            icmp: Baseline::default(),
            frag: Baseline::default(),
            total: Baseline::default(),
        }
    }

    pub fn get(&self, class: AttackClass) -> &Baseline {
        match class {
            AttackClass::Syn => &self.syn,
            AttackClass::Udp => &self.udp,
            AttackClass::Icmp => &self.icmp,
            AttackClass::Frag => &self.frag,
        }
    }

    fn get_mut(&mut self, class: AttackClass) -> &mut Baseline {
        match class {
            AttackClass::Syn => &mut self.syn,
            AttackClass::Udp => &mut self.udp,
            AttackClass::Icmp => &mut self.icmp,
            AttackClass::Frag => &mut self.frag,
        }
    }

    /// Learns from one interval: each class in `quiet` (neither escalated
    /// nor over its threshold) learns its rate; the others keep their
    /// baseline frozen. The total learns only when every class is quiet.
    /// An interval with a counter reset teaches nothing.
    pub fn learn(&mut self, rates: &Rates, quiet: &[AttackClass]) {
        if rates.reset {
            return;
        }
        let hl = self.half_life_secs;
        for &class in quiet {
            self.get_mut(class)
                .learn(rates.class(class), rates.secs, hl);
        }
        if AttackClass::ALL.iter().all(|c| quiet.contains(c)) {
            self.total.learn(&rates.total, rates.secs, hl);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A snapshot where every (reason, class) cell is zero except `set`.
    pub(crate) fn snapshot(set: &[(Reason, Class, u64, u64)]) -> Vec<(Reason, Class, Counter)> {
        let mut out = Vec::new();
        for r in Reason::ALL {
            for c in Class::ALL {
                let v = set
                    .iter()
                    .find(|(sr, sc, ..)| *sr == r && *sc == c)
                    .map(|&(_, _, packets, bytes)| Counter { packets, bytes })
                    .unwrap_or_default();
                out.push((r, c, v));
            }
        }
        out
    }

    #[test]
    fn first_snapshot_gives_no_rates_then_deltas_per_second() {
        let mut t = RateTracker::new();
        assert!(t.update(1_000, &snapshot(&[])).is_none());
        let r = t
            .update(
                3_000,
                &snapshot(&[
                    (Reason::Pass, Class::TcpSyn, 200, 12_000),
                    (Reason::TxSynCookie, Class::TcpSyn, 1_800, 108_000),
                    (Reason::DropUdpRate, Class::Udp, 1_000, 1_000_000),
                    (Reason::Pass, Class::Udp, 500, 500_000),
                    (Reason::DropIcmpRate, Class::Icmp, 20, 2_000),
                    (Reason::DropFragment, Class::Fragment, 40, 60_000),
                    (Reason::Pass, Class::Tcp, 1_000, 1_500_000),
                ]),
            )
            .unwrap();
        assert_eq!(r.secs, 2.0);
        assert!(!r.reset);
        // Offered: every verdict counts.
        assert_eq!(r.syn.pps, 1_000.0);
        assert_eq!(r.syn.passed_pps, 100.0);
        assert_eq!(r.syn.tx_pps, 900.0);
        assert_eq!(r.syn.dropped_pps, 0.0);
        assert_eq!(r.syn.bps, 120_000.0 * 8.0 / 2.0);
        assert_eq!(r.udp.pps, 750.0);
        assert_eq!(r.udp.dropped_pps, 500.0);
        assert_eq!(r.udp.passed_pps, 250.0);
        assert_eq!(r.udp.bps, 1_500_000.0 * 8.0 / 2.0);
        assert_eq!(r.icmp.pps, 10.0);
        assert_eq!(r.frag.pps, 20.0);
        assert_eq!(r.frag.dropped_bps, 60_000.0 * 8.0 / 2.0);
        // Total includes plain TCP.
        assert_eq!(r.total.packets, 200 + 1_800 + 1_000 + 500 + 20 + 40 + 1_000);
        assert_eq!(r.total.pps, r.total.packets as f64 / 2.0);
        assert_eq!(
            r.total.pps,
            r.total.passed_pps + r.total.dropped_pps + r.total.tx_pps
        );
    }

    #[test]
    fn counter_reset_never_gives_huge_rates() {
        let mut t = RateTracker::new();
        t.update(
            0,
            &snapshot(&[(Reason::Pass, Class::Udp, 1_000_000_000, 1 << 40)]),
        );
        // The maps were recreated: the counter starts again from a small value.
        let r = t
            .update(1_000, &snapshot(&[(Reason::Pass, Class::Udp, 50, 5_000)]))
            .unwrap();
        assert!(r.reset);
        assert_eq!(r.udp.pps, 0.0);
        assert_eq!(r.total.bps, 0.0);
        // A slight decrease (a CPU went away) is not a wrap either.
        t.update(
            2_000,
            &snapshot(&[(Reason::Pass, Class::Udp, 1_000, 100_000)]),
        );
        let r = t
            .update(3_000, &snapshot(&[(Reason::Pass, Class::Udp, 990, 99_000)]))
            .unwrap();
        assert!(r.reset);
        assert_eq!(r.udp.pps, 0.0);
        // And counting resumes normally from the new reference.
        let r = t
            .update(
                4_000,
                &snapshot(&[(Reason::Pass, Class::Udp, 1_990, 199_000)]),
            )
            .unwrap();
        assert!(!r.reset);
        assert_eq!(r.udp.pps, 1_000.0);
    }

    #[test]
    fn time_must_move_forward() {
        let mut t = RateTracker::new();
        t.update(5_000, &snapshot(&[]));
        assert!(t
            .update(5_000, &snapshot(&[(Reason::Pass, Class::Udp, 10, 10)]))
            .is_none());
        assert!(t
            .update(4_000, &snapshot(&[(Reason::Pass, Class::Udp, 10, 10)]))
            .is_none());
        let r = t
            .update(6_000, &snapshot(&[(Reason::Pass, Class::Udp, 10, 10)]))
            .unwrap();
        assert_eq!(r.udp.pps, 10.0);
    }

    fn rate(pps: f64) -> ClassRate {
        ClassRate {
            pps,
            bps: pps * 8_000.0,
            ..ClassRate::default()
        }
    }

    #[test]
    fn baseline_starts_at_the_first_quiet_value_and_moves_by_half_life() {
        let mut b = Baseline::default();
        b.learn(&rate(100.0), 1.0, 10.0);
        assert_eq!(b.pps, 100.0);
        assert_eq!(b.bps, 800_000.0);
        // After one half-life of a new level, half of the step is absorbed.
        for _ in 0..10 {
            b.learn(&rate(300.0), 1.0, 10.0);
        }
        assert!((b.pps - 200.0).abs() < 1e-6, "{}", b.pps);
        assert_eq!(b.learned_secs, 11.0);
        // The interval length matters, not the number of calls.
        let mut a = Baseline::default();
        a.learn(&rate(100.0), 1.0, 10.0);
        a.learn(&rate(300.0), 10.0, 10.0);
        assert!((a.pps - 200.0).abs() < 1e-6);
    }

    #[test]
    fn baselines_learn_only_quiet_classes_and_freeze_under_attack() {
        let mut b = Baselines::new(60.0);
        let mut rates = Rates {
            secs: 1.0,
            syn: rate(100.0),
            udp: rate(1_000.0),
            total: rate(1_100.0),
            ..Rates::default()
        };
        for _ in 0..30 {
            b.learn(&rates, &AttackClass::ALL);
        }
        assert!((b.syn.pps - 100.0).abs() < 1e-9);
        assert!((b.total.pps - 1_100.0).abs() < 1e-9);
        // A SYN flood: syn is not quiet, its baseline freezes; udp keeps learning.
        rates.syn = rate(1_000_000.0);
        rates.udp = rate(2_000.0);
        rates.total = rate(1_002_000.0);
        for _ in 0..600 {
            b.learn(
                &rates,
                &[AttackClass::Udp, AttackClass::Icmp, AttackClass::Frag],
            );
        }
        assert_eq!(b.syn.pps, 100.0);
        assert!((b.total.pps - 1_100.0).abs() < 1e-9, "total frozen too");
        assert!(b.udp.pps > 1_900.0);
        // A reset interval teaches nothing.
        rates.reset = true;
        rates.udp = rate(0.0);
        let before = b.udp;
        b.learn(&rates, &AttackClass::ALL);
        assert_eq!(b.udp, before);
    }
}
