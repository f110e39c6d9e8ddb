//! Which prefixes level 3 may block: the heaviest sources of the class,
//! aggregated where the traffic is spread, minus those the guards protect.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::config::AutoBlockConfig;
use crate::detect::{AttackClass, PrefixLevel, Scope, TopSource, TopTalkers};

/// Fewer samples than this say too little about a prefix to block it (a
/// share of a handful of samples is noise).
pub const MIN_SAMPLES: f64 = 8.0;

/// A prefix that may be blocked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub prefix: IpNet,
    /// Share (0..1) of the class's sampled traffic.
    pub share: f64,
    pub est_pps: f64,
    /// Share (0..1) of the legitimate traffic.
    pub legit_share: f64,
}

/// A heavy prefix the guards keep from being blocked, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub prefix: IpNet,
    pub share: f64,
    pub why: String,
}

/// Whether `prefix` and any allowlisted prefix overlap (either contains
/// the other); returns the allowlisted prefix.
pub(crate) fn allowlisted<'a>(prefix: &IpNet, allowlist: &'a [IpNet]) -> Option<&'a IpNet> {
    allowlist
        .iter()
        .find(|a| a.contains(prefix) || prefix.contains(*a))
}

/// The guard for one prefix: `Err(why)` when it must not be blocked.
pub(crate) fn guard(
    prefix: &IpNet,
    legit_share: f64,
    cfg: &AutoBlockConfig,
    allowlist: &[IpNet],
) -> Result<(), String> {
    if let Some(a) = allowlisted(prefix, allowlist) {
        return Err(format!("overlaps the allowlisted {a}"));
    }
    if legit_share > cfg.max_legit_share {
        return Err(format!(
            "carries {:.1}% of the legitimate traffic (more than {:.1}%)",
            legit_share * 100.0,
            cfg.max_legit_share * 100.0
        ));
    }
    Ok(())
}

/// The blockable prefixes of `class`, heaviest first, and the heavy ones
/// the guards protect.
///
/// Blocks are /32 (IPv4) and /64 (IPv6: one host owns a /64) of at least
/// `min_share` of the class and [`MIN_SAMPLES`] samples. With `aggregate`, a /24 (/48) that carries
/// `min_share` but whose heavy hosts make up less than half of it (the
/// traffic is spread over many hosts) is blocked as a whole instead.
pub fn candidates(
    class: AttackClass,
    top: &TopTalkers,
    cfg: &AutoBlockConfig,
    allowlist: &[IpNet],
) -> (Vec<Candidate>, Vec<Skipped>) {
    let scope = Scope::Class(class);
    // No more than 1/min_share prefixes can each hold min_share (plus the
    // Space-Saving overestimate): look a little further than that.
    let n = ((1.0 / cfg.min_share).ceil() as usize + 1)
        .max(cfg.max_blocks)
        .min(top.config().capacity);
    let heavy = |level| -> Vec<TopSource> {
        top.top_sources_in(scope, level, n)
            .into_iter()
            .filter(|s| s.share >= cfg.min_share && s.samples >= MIN_SAMPLES)
            .collect()
    };
    let mut picked: Vec<TopSource> = heavy(PrefixLevel::V4Host);
    picked.extend(heavy(PrefixLevel::V6Net64));
    if cfg.aggregate {
        for level in [PrefixLevel::V4Net, PrefixLevel::V6Net48] {
            for net in heavy(level) {
                let inside: f64 = picked
                    .iter()
                    .filter(|s| net.prefix.contains(&s.prefix))
                    .map(|s| s.share)
                    .sum();
                if inside < net.share * 0.5 {
                    picked.retain(|s| !net.prefix.contains(&s.prefix));
                    picked.push(net);
                }
            }
        }
    }
    picked.sort_by(|a, b| b.share.total_cmp(&a.share));
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for s in picked {
        match guard(&s.prefix, s.legit_share, cfg, allowlist) {
            Ok(()) => ok.push(Candidate {
                prefix: s.prefix,
                share: s.share,
                est_pps: s.est_pps,
                legit_share: s.legit_share,
            }),
            Err(why) => skipped.push(Skipped {
                prefix: s.prefix,
                share: s.share,
                why,
            }),
        }
    }
    (ok, skipped)
}

#[cfg(test)]
mod tests {
    use mitigator_common::{Class, Reason};

    use super::*;
    use crate::detect::{heavy::tests::sample, TopConfig};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn feed(top: &mut TopTalkers, src: &str, n: usize, reason: Reason) {
        for _ in 0..n {
            top.observe(&sample(src, "192.0.2.1", 53, Class::Udp, reason));
        }
    }

    #[test]
    fn allowlist_overlap_is_checked_both_ways() {
        let allow = [net("10.0.0.0/8"), net("192.0.2.7/32"), net("2001:db8::/32")];
        assert!(allowlisted(&net("10.1.2.3/32"), &allow).is_some());
        assert!(allowlisted(&net("192.0.2.0/24"), &allow).is_some());
        assert!(allowlisted(&net("2001:db8:1::/48"), &allow).is_some());
        assert!(allowlisted(&net("192.0.3.0/24"), &allow).is_none());
        assert!(allowlisted(&net("11.0.0.0/8"), &allow).is_none());
    }

    #[test]
    fn heavy_hosts_are_blocked_at_32_and_spread_subnets_as_a_whole() {
        let mut top = TopTalkers::new(TopConfig::default(), 1);
        feed(&mut top, "198.51.100.1", 300, Reason::DropUdpRate);
        feed(&mut top, "198.51.100.2", 200, Reason::DropUdpRate);
        // 203.0.113.0/24: 100 hosts at 3 packets each, none heavy alone.
        for h in 1..=100 {
            feed(&mut top, &format!("203.0.113.{h}"), 3, Reason::Pass);
        }
        // An IPv6 host rotating addresses inside its /64.
        for i in 1..=50 {
            feed(&mut top, &format!("2001:db8:5:6::{i:x}"), 4, Reason::Pass);
        }
        // Light noise.
        for h in 1..=100 {
            feed(&mut top, &format!("100.64.{h}.1"), 2, Reason::Pass);
        }
        let cfg = AutoBlockConfig::default();
        let (ok, skipped) = candidates(AttackClass::Udp, &top, &cfg, &[]);
        let got: Vec<IpNet> = ok.iter().map(|c| c.prefix).collect();
        assert_eq!(
            got,
            vec![
                net("198.51.100.1/32"),
                net("203.0.113.0/24"),
                net("198.51.100.2/32"),
                net("2001:db8:5:6::/64"),
            ]
        );
        assert!(skipped.is_empty());
        let total = 300.0 + 200.0 + 300.0 + 200.0 + 200.0;
        assert!((ok[0].share - 300.0 / total).abs() < 1e-9);
        // Without aggregation only single hosts and /64s.
        let cfg = AutoBlockConfig {
            aggregate: false,
            ..cfg
        };
        let (ok, _) = candidates(AttackClass::Udp, &top, &cfg, &[]);
        assert_eq!(ok.len(), 3);
        // Nothing from another class.
        assert!(candidates(AttackClass::Syn, &top, &cfg, &[]).0.is_empty());
    }

    #[test]
    fn guards_skip_allowlisted_and_legitimate_heavy_prefixes() {
        let mut top = TopTalkers::new(TopConfig::default(), 1);
        // Quiet time: 198.51.100.9 carries a lot of the legitimate traffic.
        for i in 0..200 {
            let src = if i % 4 == 0 {
                "198.51.100.9".to_string()
            } else {
                format!("100.64.0.{}", 1 + i % 200)
            };
            top.observe(&sample(&src, "192.0.2.1", 443, Class::Tcp, Reason::Pass));
        }
        top.tick(1_000, None, &AttackClass::ALL);
        feed(&mut top, "198.51.100.9", 100, Reason::DropUdpRate);
        feed(&mut top, "192.0.2.200", 100, Reason::PassAllowlist);
        feed(&mut top, "203.0.113.5", 100, Reason::DropUdpRate);
        let cfg = AutoBlockConfig::default();
        let allow = [net("192.0.2.0/24")];
        let (ok, skipped) = candidates(AttackClass::Udp, &top, &cfg, &allow);
        assert_eq!(
            ok.iter().map(|c| c.prefix).collect::<Vec<_>>(),
            vec![net("203.0.113.5/32")]
        );
        let why: Vec<(IpNet, &str)> = skipped.iter().map(|s| (s.prefix, s.why.as_str())).collect();
        assert!(
            why.iter()
                .any(|(p, w)| *p == net("198.51.100.9/32") && w.contains("legitimate")),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|(p, w)| *p == net("192.0.2.200/32") && w.contains("allowlisted")),
            "{why:?}"
        );
    }
}
