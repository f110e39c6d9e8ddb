//! Detection: per-class rates and baselines from the datapath counters
//! ([`rates`]), and bounded-memory top talkers from the sampled headers
//! ([`heavy`]).
//!
//! Plain Rust, no aya and no I/O: the daemon reads the counters and the
//! sample ring buffer through `datapath` and feeds the values in here.

pub mod heavy;
pub mod rates;
pub mod spacesaving;

use std::{fmt, str::FromStr};

use mitigator_common::Class;
use serde::{Deserialize, Serialize};

pub use heavy::{
    PrefixLevel, Scope, TopConfig, TopDestination, TopReport, TopScope, TopSource, TopTalkers,
    Weight,
};
pub use rates::{Baseline, Baselines, ClassRate, RateTracker, Rates};

/// The attack classes the escalation ladder handles, one ladder each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttackClass {
    /// TCP SYN (`Class::TcpSyn`).
    Syn,
    /// UDP (`Class::Udp`).
    Udp,
    /// ICMP and ICMPv6 (`Class::Icmp`).
    Icmp,
    /// Non-first IP fragments (`Class::Fragment`).
    Frag,
}

impl AttackClass {
    pub const COUNT: usize = 4;
    pub const ALL: [AttackClass; Self::COUNT] = [
        AttackClass::Syn,
        AttackClass::Udp,
        AttackClass::Icmp,
        AttackClass::Frag,
    ];

    /// Dense index 0..COUNT, for per-class arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name used on the command line, in JSON and in logs.
    pub const fn name(self) -> &'static str {
        match self {
            AttackClass::Syn => "syn",
            AttackClass::Udp => "udp",
            AttackClass::Icmp => "icmp",
            AttackClass::Frag => "frag",
        }
    }

    /// The datapath class counted for this attack class.
    pub const fn class(self) -> Class {
        match self {
            AttackClass::Syn => Class::TcpSyn,
            AttackClass::Udp => Class::Udp,
            AttackClass::Icmp => Class::Icmp,
            AttackClass::Frag => Class::Fragment,
        }
    }

    /// The attack class a datapath class belongs to (`None` for plain TCP
    /// segments and unclassified traffic, which have no ladder).
    pub const fn from_class(class: Class) -> Option<AttackClass> {
        match class {
            Class::TcpSyn => Some(AttackClass::Syn),
            Class::Udp => Some(AttackClass::Udp),
            Class::Icmp => Some(AttackClass::Icmp),
            Class::Fragment => Some(AttackClass::Frag),
            Class::Tcp | Class::Other => None,
        }
    }
}

impl fmt::Display for AttackClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttackClass {
    type Err = String;

    /// `syn`, `udp`, `icmp`, `frag` (also `fragment`), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "syn" => Ok(AttackClass::Syn),
            "udp" => Ok(AttackClass::Udp),
            "icmp" => Ok(AttackClass::Icmp),
            "frag" | "fragment" => Ok(AttackClass::Frag),
            _ => Err(format!(
                "unknown attack class '{s}': expected syn, udp, icmp or frag"
            )),
        }
    }
}

/// Detection settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Half-life of the per-class baselines (EWMA of quiet intervals), seconds.
    pub baseline_half_life_secs: f64,
    /// Top talkers.
    pub top: TopConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            baseline_half_life_secs: 600.0,
            top: TopConfig::default(),
        }
    }
}

impl DetectConfig {
    /// Checks every value; the error names the key (relative to this
    /// section) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        positive("baseline_half_life_secs", self.baseline_half_life_secs)?;
        self.top
            .validate()
            .map_err(|(k, why)| (format!("top.{k}"), why))
    }
}

/// `value` must be a finite number > 0.
pub(crate) fn positive(key: &str, value: f64) -> Result<(), (String, String)> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err((key.to_string(), "must be a number > 0".to_string()))
    }
}

/// A small deterministic PRNG (splitmix64) for tests.
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_classes_map_to_datapath_classes_and_back() {
        for (i, c) in AttackClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(AttackClass::from_class(c.class()), Some(*c));
            assert_eq!(c.name().parse::<AttackClass>(), Ok(*c));
        }
        assert_eq!(AttackClass::from_class(Class::Tcp), None);
        assert_eq!(AttackClass::from_class(Class::Other), None);
        assert_eq!("FRAGMENT".parse::<AttackClass>(), Ok(AttackClass::Frag));
        assert!("tcp".parse::<AttackClass>().is_err());
        assert_eq!(serde_json::to_string(&AttackClass::Udp).unwrap(), "\"udp\"");
    }

    #[test]
    fn default_detect_config_is_valid() {
        assert_eq!(DetectConfig::default().validate(), Ok(()));
        let bad = DetectConfig {
            baseline_half_life_secs: 0.0,
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().0,
            "baseline_half_life_secs".to_string()
        );
    }
}
