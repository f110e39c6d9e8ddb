//! The control protocol: one JSON request per line from the client, one
//! JSON response per line from the daemon, over the Unix control socket.

use serde::{Deserialize, Serialize};

use crate::rules::{Rule, RuleKind};

/// Largest request the daemon reads (a bulk load of ~1M prefixes fits).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Add (or refresh) rules of `kind` for every prefix; all or nothing.
    Add {
        kind: RuleKind,
        prefixes: Vec<String>,
        #[serde(default)]
        ttl_secs: Option<u64>,
        #[serde(default)]
        reason: String,
    },
    /// Remove rules of `kind`; all or nothing (every prefix must exist).
    Remove {
        kind: RuleKind,
        prefixes: Vec<String>,
    },
    // Struct variants, not unit ones: serde's deny_unknown_fields only
    // refuses stray fields on struct variants. The wire form is the same.
    List {},
    Stats {},
    Status {},
    /// Pin an attack class's escalation level (`level`), or release it to
    /// the automatic ladder (`level` absent).
    Escalate {
        class: String,
        #[serde(default)]
        level: Option<String>,
    },
    /// The heaviest sources and destinations from the header samples.
    Top {
        #[serde(default = "default_top_n")]
        n: usize,
    },
}

fn default_top_n() -> usize {
    10
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Changed {
        added: usize,
        updated: usize,
        removed: usize,
    },
    Rules {
        rules: Vec<ListedRule>,
    },
    Stats(StatsReport),
    Status(StatusReport),
    /// The escalation state after an `escalate` request.
    Escalation(Box<crate::escalation::EscalationStatus>),
    Top(Box<crate::detect::TopReport>),
}

/// A rule as `list` shows it: the stored rule plus its hit counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedRule {
    #[serde(flatten)]
    pub rule: Rule,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PacketsBytes {
    pub packets: u64,
    pub bytes: u64,
}

impl PacketsBytes {
    pub fn add(&mut self, other: &PacketsBytes) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// One (reason, class) counter cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterCell {
    pub reason: String,
    pub class: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsReport {
    pub interface: String,
    /// Unix seconds when these counters were read.
    pub at: u64,
    pub total: PacketsBytes,
    pub passed: PacketsBytes,
    pub dropped: PacketsBytes,
    /// By verdict reason (`pass`, `drop_blocklist`, ...), every reason present.
    pub reasons: std::collections::BTreeMap<String, PacketsBytes>,
    /// By traffic class (`tcp_syn`, `udp`, ...), every class present.
    pub classes: std::collections::BTreeMap<String, PacketsBytes>,
    /// Non-zero cells only.
    pub cells: Vec<CounterCell>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub interface: String,
    /// `native` or `skb`.
    pub attach_mode: String,
    pub monitor: bool,
    /// Whether the XDP program was adopted from a previous daemon's pins.
    pub adopted: bool,
    pub pid: u32,
    pub started: u64,
    pub block_rules: usize,
    pub allow_rules: usize,
    pub state_file: String,
    /// Per attack class: level, since when, why, whether pinned.
    #[serde(default)]
    pub escalation: Option<Box<crate::escalation::EscalationStatus>>,
}
