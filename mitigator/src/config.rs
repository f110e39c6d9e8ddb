//! The daemon's configuration file (TOML): every knob, each with a default,
//! so an empty file is a valid configuration. Parsing is strict (unknown
//! keys are errors) and every error names the file, the key and why, e.g.
//! `config /etc/mitigator/mitigator.toml: limits.syn.rate: must be ≤ 10000000`.
//!
//! Precedence: command-line flags > the file > built-in defaults.
//!
//! Sections: `[daemon]`, `[allowlist]`, `[limits]`, `[defences]`,
//! `[sampling]`, `[tracking]` (defined here: the base configuration the
//! datapath runs with) and `[detect]`, `[escalation]` (defined, defaulted and
//! validated by `crate::detect` and `crate::escalation`; embedded here so
//! one file holds every knob).
//!
//! Defaults are chosen for an edge host serving a website (HTTP on 80/443,
//! QUIC on 443) whose visitors may sit behind carrier-grade NAT:
//!
//! | knob | default | why |
//! | --- | --- | --- |
//! | limits.syn | 200/s, burst 1000 per source | a page load opens ≤ 15 connections; a CGNAT address carries hundreds of users |
//! | limits.udp | 10000/s, burst 20000 per source | QUIC ACKs of a fast download run at a few thousand per second |
//! | limits.icmp | 100/s, burst 200 per source | ping and errors; nothing legitimate needs more |
//! | limits.fragment | 100/s, burst 200 per source | web traffic barely fragments; large DNS answers to the host's resolver do |
//! | limits.pmtu | 1000/s, burst 2000 aggregate | path-MTU messages keep their own budget so an ICMP flood never breaks PMTU discovery |
//! | limits.udp_port | 100000/s, burst 200000 aggregate per port | backstop, only with `defences.port_cap` |
//! | defences.rate_limit | on | per-source buckets are the always-on first line |
//! | defences.syn_cookies | off, ports 80 and 443 | cookies change TCP options; escalation switches them on under a SYN flood |
//! | defences.amplification_drop | off | escalation switches it on under a reflection flood |
//! | defences.udp_service_ports | none | every listed port is a hole reflectors can be aimed at; a web host serves no UDP that peers reach from a reflector port. DNS/NTP servers list 53/123 |
//! | defences.fragments | rate-limit | fragments are rare and a classic flood vector; dropping all breaks large DNS answers |
//! | defences.port_cap | off | an aggregate cap also limits legitimate traffic; a last resort |
//! | sampling | 1 in 64, ≤ 2000/s | enough for top talkers at line rate, bounded cost |
//! | tracking.sources | 1048576 | per-source state for a million addresses (a botnet of 10k–100k fits many times) |

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use mitigator_common::{
    Config, Gcra, DEFAULT_AMP_PORTS, FLAG_AMP_DROP, FLAG_MONITOR, FLAG_PORT_CAP, FLAG_RATE_LIMIT,
    FLAG_SAMPLE, FLAG_SYN_COOKIES, FRAG_DROP, FRAG_PASS, FRAG_RATE_LIMIT, PORT_TCP_SYN_COOKIES,
    PORT_UDP_AMP_SOURCE, PORT_UDP_SERVICE,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::AttachMode, detect::DetectConfig, escalation::EscalationConfig, prefix::parse_prefix,
};

/// Where the packaged systemd unit points `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mitigator/mitigator.toml";
pub const DEFAULT_SOCKET: &str = "/run/mitigator/mitigator.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mitigator";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9947";

/// Largest rate or burst accepted, in packets (per second for rates): above
/// a 100 Gbit/s link's 64-byte packet rate per source is no limit at all.
pub const MAX_PACKETS: u64 = 10_000_000;
pub const MAX_SAMPLE_ONE_IN: u64 = 1_000_000;
pub const MAX_SAMPLES_PER_SEC: u64 = 1_000_000;
pub const MIN_TRACKED_SOURCES: u64 = 1024;
pub const MAX_TRACKED_SOURCES: u64 = 16 * 1024 * 1024;

/// A configuration error: which file, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `(built-in defaults)` / `command line`.
    pub file: String,
    /// Dotted key path (`limits.syn.rate`); empty when the file as a whole is at fault.
    pub key: String,
    pub why: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config {}: {}", self.file, self.why)
        } else {
            write!(f, "config {}: {}: {}", self.file, self.key, self.why)
        }
    }
}

// ---------------------------------------------------------------------------
// The file as written (serde). Wide integer types so that range errors are
// ours ("must be ≤ ...") rather than a type mismatch.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub daemon: DaemonSection,
    pub allowlist: AllowlistSection,
    pub limits: LimitsSection,
    pub defences: DefencesSection,
    pub sampling: SamplingSection,
    pub tracking: TrackingSection,
    /// Baselines and top talkers (see `crate::detect`).
    pub detect: DetectConfig,
    /// The escalation ladders' thresholds and defences (see `crate::escalation`).
    pub escalation: EscalationConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    pub socket: PathBuf,
    /// Group allowed to use the control socket: a name or a numeric gid.
    pub socket_group: Option<GroupSpec>,
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links.
    pub pin_root: PathBuf,
    /// `host:port` for Prometheus metrics, or `off`.
    pub metrics_addr: String,
    pub mode: AttachMode,
    pub monitor: bool,
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            socket_group: None,
            state_dir: DEFAULT_STATE_DIR.into(),
            pin_root: crate::datapath::DEFAULT_PIN_ROOT.into(),
            metrics_addr: DEFAULT_METRICS_ADDR.into(),
            mode: AttachMode::Auto,
            monitor: false,
        }
    }
}

/// `socket_group = "mitigator"` or `socket_group = 998`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum GroupSpec {
    Name(String),
    Gid(i64),
}

impl<'de> Deserialize<'de> for GroupSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = GroupSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a group name or a numeric gid")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GroupSpec, E> {
                Ok(GroupSpec::Name(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<GroupSpec, E> {
                Ok(GroupSpec::Gid(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<GroupSpec, E> {
                Ok(GroupSpec::Gid(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowlistSection {
    /// Management and monitoring prefixes that are never dropped.
    pub prefixes: Vec<String>,
}

/// `{ rate = N, burst = M }`: N packets per second, bursts of up to M.
/// `rate = 0` turns the limit off; a missing burst is one second's worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub rate: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

impl LimitSpec {
    const fn new(rate: u64, burst: u64) -> Self {
        Self {
            rate,
            burst: Some(burst),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub syn: LimitSpec,
    pub udp: LimitSpec,
    pub icmp: LimitSpec,
    pub fragment: LimitSpec,
    pub pmtu: LimitSpec,
    pub udp_port: LimitSpec,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            syn: LimitSpec::new(200, 1000),
            udp: LimitSpec::new(10_000, 20_000),
            icmp: LimitSpec::new(100, 200),
            fragment: LimitSpec::new(100, 200),
            pmtu: LimitSpec::new(1000, 2000),
            udp_port: LimitSpec::new(100_000, 200_000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FragmentPolicy {
    Pass,
    RateLimit,
    Drop,
}

impl FragmentPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FragmentPolicy::Pass => "pass",
            FragmentPolicy::RateLimit => "rate-limit",
            FragmentPolicy::Drop => "drop",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefencesSection {
    pub rate_limit: bool,
    pub syn_cookies: bool,
    pub syn_cookie_ports: Vec<u64>,
    pub amplification_drop: bool,
    pub amplification_ports: Vec<u64>,
    pub udp_service_ports: Vec<u64>,
    pub fragments: FragmentPolicy,
    pub port_cap: bool,
}

impl Default for DefencesSection {
    fn default() -> Self {
        Self {
            rate_limit: true,
            syn_cookies: false,
            syn_cookie_ports: vec![80, 443],
            amplification_drop: false,
            amplification_ports: DEFAULT_AMP_PORTS.iter().map(|&p| p as u64).collect(),
            udp_service_ports: Vec::new(),
            fragments: FragmentPolicy::RateLimit,
            port_cap: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingSection {
    /// Sample one packet in this many; 0 turns sampling off.
    pub one_in: u64,
    pub max_per_second: u64,
}

impl Default for SamplingSection {
    fn default() -> Self {
        Self {
            one_in: 64,
            max_per_second: 2000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingSection {
    /// Capacity of the per-source rate-limit table (LRU: the least recently
    /// seen source is evicted when full).
    pub sources: u64,
}

impl Default for TrackingSection {
    fn default() -> Self {
        Self { sources: 1_048_576 }
    }
}

// ---------------------------------------------------------------------------
// The validated configuration the daemon runs with.
// ---------------------------------------------------------------------------

/// A validated rate limit: `rate` packets/s (0 = off), bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rate: u32,
    pub burst: u32,
}

impl Limit {
    pub fn gcra(self) -> Gcra {
        Gcra::per_second(self.rate, self.burst)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub syn: Limit,
    pub udp: Limit,
    pub icmp: Limit,
    pub fragment: Limit,
    pub pmtu: Limit,
    pub udp_port: Limit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defences {
    pub rate_limit: bool,
    pub syn_cookies: bool,
    pub syn_cookie_ports: Vec<u16>,
    pub amplification_drop: bool,
    pub amplification_ports: Vec<u16>,
    pub udp_service_ports: Vec<u16>,
    pub fragments: FragmentPolicy,
    pub port_cap: bool,
}

/// The resolved socket group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    /// As written (name or number), for messages.
    pub spec: String,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The file these came from; `None` for built-in defaults.
    pub file: Option<PathBuf>,
    pub socket: PathBuf,
    pub socket_group: Option<SocketGroup>,
    pub state_dir: PathBuf,
    pub pin_root: PathBuf,
    /// `None` when metrics are off.
    pub metrics_addr: Option<SocketAddr>,
    pub mode: AttachMode,
    pub monitor: bool,
    pub allowlist: Vec<IpNet>,
    pub limits: Limits,
    pub defences: Defences,
    pub sample_one_in: u32,
    pub sample_max_per_sec: u32,
    pub tracked_sources: u32,
    pub detect: DetectConfig,
    pub escalation: EscalationConfig,
}

/// Command-line values that win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub pin_root: Option<PathBuf>,
    pub metrics_addr: Option<Option<SocketAddr>>,
    pub mode: Option<AttachMode>,
    /// `--monitor` can only switch monitor mode on.
    pub monitor: bool,
}

/// Parses `host:port` (IPv6 as `[::1]:9947`) or `off`.
pub fn parse_metrics_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("'{s}' is not an address like 127.0.0.1:9947 or [::1]:9947 (or \"off\")")
    })
}

impl Settings {
    /// The built-in defaults (what an empty file means).
    pub fn defaults() -> Self {
        Self::validate(FileConfig::default(), None).expect("built-in defaults are valid")
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: String::new(),
            why: format!("cannot read: {e}"),
        })?;
        Self::from_toml(&text, Some(path))
    }

    /// `load(path)` when a file is given, else the defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(p) => Self::load(p),
            None => Ok(Self::defaults()),
        }
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn from_toml(text: &str, file: Option<&Path>) -> Result<Self, ConfigError> {
        let raw = parse_file(text, &file_label(file))?;
        Self::validate(raw, file)
    }

    /// What error messages call this configuration's origin.
    pub fn label(&self) -> String {
        file_label(self.file.as_deref())
    }

    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.socket {
            self.socket = v;
        }
        if let Some(v) = o.state_dir {
            self.state_dir = v;
        }
        if let Some(v) = o.pin_root {
            self.pin_root = v;
        }
        if let Some(v) = o.metrics_addr {
            self.metrics_addr = v;
        }
        if let Some(v) = o.mode {
            self.mode = v;
        }
        self.monitor |= o.monitor;
    }

    fn validate(raw: FileConfig, file: Option<&Path>) -> Result<Self, ConfigError> {
        let label = file_label(file);
        let err = |key: &str, why: String| ConfigError {
            file: label.clone(),
            key: key.to_string(),
            why,
        };
        let d = &raw.daemon;
        for (key, path) in [
            ("daemon.socket", &d.socket),
            ("daemon.state_dir", &d.state_dir),
            ("daemon.pin_root", &d.pin_root),
        ] {
            if !path.is_absolute() {
                return Err(err(
                    key,
                    format!("'{}' must be an absolute path", path.display()),
                ));
            }
        }
        let socket_group = match &d.socket_group {
            None => None,
            Some(spec) => Some(resolve_group(spec).map_err(|why| err("daemon.socket_group", why))?),
        };
        let metrics_addr =
            parse_metrics_addr(&d.metrics_addr).map_err(|why| err("daemon.metrics_addr", why))?;

        let mut allowlist = Vec::with_capacity(raw.allowlist.prefixes.len());
        for (i, p) in raw.allowlist.prefixes.iter().enumerate() {
            let net = parse_prefix(p)
                .map_err(|e| err(&format!("allowlist.prefixes[{i}]"), e.to_string()))?;
            if !allowlist.contains(&net) {
                allowlist.push(net);
            }
        }

        let l = &raw.limits;
        let limit = |name: &str, spec: LimitSpec| -> Result<Limit, ConfigError> {
            let key = |k: &str| format!("limits.{name}.{k}");
            if spec.rate > MAX_PACKETS {
                return Err(err(&key("rate"), format!("must be ≤ {MAX_PACKETS}")));
            }
            let burst = spec.burst.unwrap_or(spec.rate.max(1));
            if burst > MAX_PACKETS {
                return Err(err(&key("burst"), format!("must be ≤ {MAX_PACKETS}")));
            }
            if spec.rate > 0 && burst < 1 {
                return Err(err(
                    &key("burst"),
                    "must be ≥ 1 when rate > 0 (a burst of 0 would drop every packet)".into(),
                ));
            }
            Ok(Limit {
                rate: spec.rate as u32,
                burst: burst as u32,
            })
        };
        let limits = Limits {
            syn: limit("syn", l.syn)?,
            udp: limit("udp", l.udp)?,
            icmp: limit("icmp", l.icmp)?,
            fragment: limit("fragment", l.fragment)?,
            pmtu: limit("pmtu", l.pmtu)?,
            udp_port: limit("udp_port", l.udp_port)?,
        };

        let df = &raw.defences;
        let ports = |name: &str, list: &[u64]| -> Result<Vec<u16>, ConfigError> {
            let mut out: Vec<u16> = Vec::with_capacity(list.len());
            for (i, &p) in list.iter().enumerate() {
                if p == 0 || p > 65535 {
                    return Err(err(
                        &format!("defences.{name}[{i}]"),
                        format!("port {p} is not a port (1-65535)"),
                    ));
                }
                if !out.contains(&(p as u16)) {
                    out.push(p as u16);
                }
            }
            out.sort_unstable();
            Ok(out)
        };
        let defences = Defences {
            rate_limit: df.rate_limit,
            syn_cookies: df.syn_cookies,
            syn_cookie_ports: ports("syn_cookie_ports", &df.syn_cookie_ports)?,
            amplification_drop: df.amplification_drop,
            amplification_ports: ports("amplification_ports", &df.amplification_ports)?,
            udp_service_ports: ports("udp_service_ports", &df.udp_service_ports)?,
            fragments: df.fragments,
            port_cap: df.port_cap,
        };
        if defences.syn_cookies && defences.syn_cookie_ports.is_empty() {
            return Err(err(
                "defences.syn_cookie_ports",
                "is empty but defences.syn_cookies = true (no port would get cookies)".into(),
            ));
        }
        if defences.amplification_drop && defences.amplification_ports.is_empty() {
            return Err(err(
                "defences.amplification_ports",
                "is empty but defences.amplification_drop = true (nothing would be dropped)".into(),
            ));
        }
        if defences.fragments == FragmentPolicy::RateLimit && limits.fragment.rate == 0 {
            return Err(err(
                "defences.fragments",
                "\"rate-limit\" needs limits.fragment.rate > 0 (use \"pass\" or \"drop\" otherwise)"
                    .into(),
            ));
        }
        if defences.port_cap && limits.udp_port.rate == 0 {
            return Err(err(
                "defences.port_cap",
                "needs limits.udp_port.rate > 0".into(),
            ));
        }

        let s = &raw.sampling;
        if s.one_in > MAX_SAMPLE_ONE_IN {
            return Err(err(
                "sampling.one_in",
                format!("must be ≤ {MAX_SAMPLE_ONE_IN} (0 turns sampling off)"),
            ));
        }
        if s.max_per_second > MAX_SAMPLES_PER_SEC {
            return Err(err(
                "sampling.max_per_second",
                format!("must be ≤ {MAX_SAMPLES_PER_SEC}"),
            ));
        }
        if s.one_in > 0 && s.max_per_second == 0 {
            return Err(err(
                "sampling.max_per_second",
                "must be ≥ 1 while sampling is on (set sampling.one_in = 0 to turn it off)".into(),
            ));
        }
        let t = raw.tracking.sources;
        if !(MIN_TRACKED_SOURCES..=MAX_TRACKED_SOURCES).contains(&t) {
            return Err(err(
                "tracking.sources",
                format!("must be between {MIN_TRACKED_SOURCES} and {MAX_TRACKED_SOURCES}"),
            ));
        }

        raw.detect
            .validate()
            .map_err(|(k, why)| err(&format!("detect.{k}"), why))?;
        raw.escalation
            .validate()
            .map_err(|(k, why)| err(&format!("escalation.{k}"), why))?;

        Ok(Settings {
            file: file.map(Path::to_path_buf),
            socket: d.socket.clone(),
            socket_group,
            state_dir: d.state_dir.clone(),
            pin_root: d.pin_root.clone(),
            metrics_addr,
            mode: d.mode,
            monitor: d.monitor,
            allowlist,
            limits,
            defences,
            sample_one_in: s.one_in as u32,
            sample_max_per_sec: s.max_per_second as u32,
            tracked_sources: t as u32,
            detect: raw.detect.clone(),
            escalation: raw.escalation.clone(),
        })
    }

    /// The datapath's run-time config and the per-port flags
    /// (`(port, PORT_* bits)`, sorted by port, only ports with a flag).
    pub fn to_datapath(&self) -> (Config, Vec<(u16, u32)>) {
        let d = &self.defences;
        let mut flags = 0;
        for (on, flag) in [
            (self.monitor, FLAG_MONITOR),
            (d.rate_limit, FLAG_RATE_LIMIT),
            (d.syn_cookies, FLAG_SYN_COOKIES),
            (d.amplification_drop, FLAG_AMP_DROP),
            (d.port_cap, FLAG_PORT_CAP),
            (self.sample_one_in > 0, FLAG_SAMPLE),
        ] {
            if on {
                flags |= flag;
            }
        }
        let config = Config {
            flags,
            frag_policy: match d.fragments {
                FragmentPolicy::Pass => FRAG_PASS,
                FragmentPolicy::RateLimit => FRAG_RATE_LIMIT,
                FragmentPolicy::Drop => FRAG_DROP,
            },
            syn: self.limits.syn.gcra(),
            udp: self.limits.udp.gcra(),
            icmp: self.limits.icmp.gcra(),
            frag: self.limits.fragment.gcra(),
            pmtu: self.limits.pmtu.gcra(),
            udp_port: self.limits.udp_port.gcra(),
            sample_every: self.sample_one_in,
            sample_max_per_sec: self.sample_max_per_sec,
        };
        let mut ports = std::collections::BTreeMap::<u16, u32>::new();
        for (list, flag) in [
            (&d.syn_cookie_ports, PORT_TCP_SYN_COOKIES),
            (&d.udp_service_ports, PORT_UDP_SERVICE),
            (&d.amplification_ports, PORT_UDP_AMP_SOURCE),
        ] {
            for &p in list {
                *ports.entry(p).or_default() |= flag;
            }
        }
        (config, ports.into_iter().collect())
    }

    /// One line for `--check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let on = |b: bool| if b { "on" } else { "off" };
        format!(
            "{} allowlist prefix(es), rate limits {}, syn cookies {}, amplification drop {}, fragments {}, port cap {}, metrics {}",
            self.allowlist.len(),
            on(self.defences.rate_limit),
            on(self.defences.syn_cookies),
            on(self.defences.amplification_drop),
            self.defences.fragments.as_str(),
            on(self.defences.port_cap),
            self.metrics_addr.map_or("off".into(), |a| a.to_string()),
        )
    }
}

fn file_label(file: Option<&Path>) -> String {
    file.map_or_else(|| "(built-in defaults)".into(), |p| p.display().to_string())
}

fn resolve_group(spec: &GroupSpec) -> Result<SocketGroup, String> {
    match spec {
        GroupSpec::Gid(g) => {
            let gid = u32::try_from(*g)
                .ok()
                .filter(|&g| g != u32::MAX)
                .ok_or_else(|| format!("gid {g} is not a valid group id"))?;
            Ok(SocketGroup {
                spec: g.to_string(),
                gid,
            })
        }
        GroupSpec::Name(name) => {
            if name.is_empty() {
                return Err("is empty (give a group name or a gid, or leave the key out)".into());
            }
            match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Ok(SocketGroup {
                    spec: name.clone(),
                    gid: g.gid.as_raw(),
                }),
                Ok(None) => Err(format!("no group named '{name}' on this host")),
                Err(e) => Err(format!("cannot look up group '{name}': {e}")),
            }
        }
    }
}

/// TOML text to `FileConfig`, with errors naming the key path and line.
fn parse_file(text: &str, label: &str) -> Result<FileConfig, ConfigError> {
    let located = |e: &toml::de::Error| -> String {
        let mut why = e.message().trim().replace('\n', "; ");
        if let Some(span) = e.span() {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            why.push_str(&format!(" (line {line}, column {col})"));
        }
        why
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError {
        file: label.to_string(),
        key: String::new(),
        why: format!("not valid TOML: {}", located(&e)),
    })?;
    serde_path_to_error::deserialize::<_, FileConfig>(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        let (key, why) = describe_serde_error(&path, inner.message(), located(&inner));
        ConfigError {
            file: label.to_string(),
            key,
            why,
        }
    })
}

/// Rewrites serde's "unknown field `x`, expected ..." as a key error on `x`.
fn describe_serde_error(path: &str, message: &str, located: String) -> (String, String) {
    // serde_path_to_error usually already ends the path with the unknown key.
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else if path == k || path.ends_with(&format!(".{k}")) {
            path.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            let expected = expected.trim_start_matches(',').trim();
            let expected = expected
                .strip_prefix("expected one of ")
                .or_else(|| expected.strip_prefix("expected "))
                .map(|e| format!("; expected {e}"))
                .unwrap_or_default();
            let line = located
                .rfind(" (line ")
                .map(|i| located[i..].to_string())
                .unwrap_or_default();
            return (join(name), format!("unknown key{expected}{line}"));
        }
    }
    (path.to_string(), located)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Option<&'static Path> {
        Some(Path::new("/etc/mitigator.toml"))
    }

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, file())
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let s = parse("").unwrap();
        let d = Settings::defaults();
        assert_eq!(s.file.as_deref(), file());
        assert_eq!(Settings { file: None, ..s }, d);
        assert_eq!(d.socket, PathBuf::from("/run/mitigator/mitigator.sock"));
        assert_eq!(d.state_dir, PathBuf::from("/var/lib/mitigator"));
        assert_eq!(d.metrics_addr, Some("127.0.0.1:9947".parse().unwrap()));
        assert_eq!(d.mode, AttachMode::Auto);
        assert!(!d.monitor);
        assert!(d.socket_group.is_none());
        assert!(d.allowlist.is_empty());
        assert_eq!(
            d.limits.syn,
            Limit {
                rate: 200,
                burst: 1000
            }
        );
        assert_eq!(
            d.limits.udp,
            Limit {
                rate: 10_000,
                burst: 20_000
            }
        );
        assert_eq!(
            d.limits.icmp,
            Limit {
                rate: 100,
                burst: 200
            }
        );
        assert_eq!(
            d.limits.fragment,
            Limit {
                rate: 100,
                burst: 200
            }
        );
        assert_eq!(
            d.limits.pmtu,
            Limit {
                rate: 1000,
                burst: 2000
            }
        );
        assert_eq!(
            d.limits.udp_port,
            Limit {
                rate: 100_000,
                burst: 200_000
            }
        );
        assert!(d.defences.rate_limit);
        assert!(!d.defences.syn_cookies);
        assert_eq!(d.defences.syn_cookie_ports, vec![80, 443]);
        assert!(!d.defences.amplification_drop);
        let mut amp = DEFAULT_AMP_PORTS.to_vec();
        amp.sort_unstable();
        assert_eq!(d.defences.amplification_ports, amp);
        assert!(d.defences.udp_service_ports.is_empty());
        assert_eq!(d.defences.fragments, FragmentPolicy::RateLimit);
        assert!(!d.defences.port_cap);
        assert_eq!((d.sample_one_in, d.sample_max_per_sec), (64, 2000));
        assert_eq!(d.tracked_sources, 1_048_576);
    }

    #[test]
    fn the_packaged_sample_config_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../packaging/mitigator.toml");
        let s = Settings::from_toml(text, None).unwrap();
        assert_eq!(s, Settings::defaults());
    }

    #[test]
    fn parses_every_section() {
        let s = parse(
            r#"
            [daemon]
            socket = "/run/m/m.sock"
            socket_group = 0
            state_dir = "/var/lib/m"
            pin_root = "/sys/fs/bpf/m"
            metrics_addr = "[::1]:9100"
            mode = "skb"
            monitor = true

            [allowlist]
            prefixes = ["192.0.2.0/24", "2001:db8::1", "10.1.2.3/8", "10.0.0.0/8"]

            [limits]
            syn = { rate = 50, burst = 100 }
            udp = { rate = 0 }
            icmp = { rate = 10 }
            fragment = { rate = 5, burst = 5 }
            pmtu = { rate = 20, burst = 40 }
            udp_port = { rate = 1000, burst = 1000 }

            [defences]
            rate_limit = false
            syn_cookies = true
            syn_cookie_ports = [443, 22, 443]
            amplification_drop = true
            amplification_ports = [123, 53]
            udp_service_ports = [53]
            fragments = "drop"
            port_cap = true

            [sampling]
            one_in = 0
            max_per_second = 0

            [tracking]
            sources = 4096
            "#,
        )
        .unwrap();
        assert_eq!(s.socket, PathBuf::from("/run/m/m.sock"));
        assert_eq!(
            s.socket_group,
            Some(SocketGroup {
                spec: "0".into(),
                gid: 0
            })
        );
        assert_eq!(s.metrics_addr, Some("[::1]:9100".parse().unwrap()));
        assert_eq!(s.mode, AttachMode::Skb);
        assert!(s.monitor);
        let allow: Vec<String> = s.allowlist.iter().map(|n| n.to_string()).collect();
        assert_eq!(allow, ["192.0.2.0/24", "2001:db8::1/128", "10.0.0.0/8"]);
        assert_eq!(s.limits.udp, Limit { rate: 0, burst: 1 });
        // A missing burst is one second's worth.
        assert_eq!(
            s.limits.icmp,
            Limit {
                rate: 10,
                burst: 10
            }
        );
        assert_eq!(s.defences.syn_cookie_ports, vec![22, 443]);
        assert_eq!(s.defences.fragments, FragmentPolicy::Drop);
        assert_eq!(s.tracked_sources, 4096);

        let (cfg, ports) = s.to_datapath();
        assert_eq!(
            cfg.flags,
            FLAG_MONITOR | FLAG_SYN_COOKIES | FLAG_AMP_DROP | FLAG_PORT_CAP
        );
        assert_eq!(cfg.frag_policy, FRAG_DROP);
        assert_eq!(cfg.syn, Gcra::per_second(50, 100));
        assert!(cfg.udp.is_off());
        assert_eq!(cfg.udp_port, Gcra::per_second(1000, 1000));
        assert_eq!(cfg.sample_every, 0);
        assert_eq!(
            ports,
            vec![
                (22, PORT_TCP_SYN_COOKIES),
                (53, PORT_UDP_SERVICE | PORT_UDP_AMP_SOURCE),
                (123, PORT_UDP_AMP_SOURCE),
                (443, PORT_TCP_SYN_COOKIES),
            ]
        );
    }

    #[test]
    fn default_datapath_config() {
        let (cfg, ports) = Settings::defaults().to_datapath();
        assert_eq!(cfg.flags, FLAG_RATE_LIMIT | FLAG_SAMPLE);
        assert_eq!(cfg.frag_policy, FRAG_RATE_LIMIT);
        assert_eq!(cfg.syn, Gcra::per_second(200, 1000));
        assert_eq!(cfg.pmtu, Gcra::per_second(1000, 2000));
        assert_eq!((cfg.sample_every, cfg.sample_max_per_sec), (64, 2000));
        assert!(ports.contains(&(80, PORT_TCP_SYN_COOKIES)));
        assert!(ports.contains(&(11211, PORT_UDP_AMP_SOURCE)));
        assert_eq!(ports.len(), 2 + DEFAULT_AMP_PORTS.len());
    }

    #[test]
    fn group_by_name() {
        let s = parse("[daemon]\nsocket_group = \"root\"").unwrap();
        assert_eq!(
            s.socket_group,
            Some(SocketGroup {
                spec: "root".into(),
                gid: 0
            })
        );
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut s = parse("[daemon]\nmetrics_addr = \"off\"\nmode = \"native\"").unwrap();
        assert_eq!(s.metrics_addr, None);
        s.apply(Overrides {
            socket: Some("/tmp/x.sock".into()),
            state_dir: Some("rel/state".into()),
            pin_root: None,
            metrics_addr: Some(Some("127.0.0.1:1".parse().unwrap())),
            mode: Some(AttachMode::Skb),
            monitor: true,
        });
        assert_eq!(s.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(s.state_dir, PathBuf::from("rel/state"));
        assert_eq!(s.pin_root, PathBuf::from(crate::datapath::DEFAULT_PIN_ROOT));
        assert_eq!(s.metrics_addr, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(s.mode, AttachMode::Skb);
        assert!(s.monitor);
        assert!(s.to_datapath().0.has(FLAG_MONITOR));
    }

    #[test]
    fn every_validation_error_names_file_key_and_why() {
        let f = "config /etc/mitigator.toml";
        let cases: &[(&str, String)] = &[
            // Values out of range.
            ("[limits]\nsyn = { rate = 10000001, burst = 1 }", format!("{f}: limits.syn.rate: must be ≤ 10000000")),
            ("[limits]\nudp = { rate = 1, burst = 10000001 }", format!("{f}: limits.udp.burst: must be ≤ 10000000")),
            ("[limits]\nicmp = { rate = 5, burst = 0 }", format!("{f}: limits.icmp.burst: must be ≥ 1 when rate > 0 (a burst of 0 would drop every packet)")),
            ("[limits]\npmtu = { burst = 5 }", format!("{f}: limits.pmtu: missing field `rate` (line 2, column 8)")),
            ("[limits]\nsyn = { rate = -1 }", format!("{f}: limits.syn.rate: invalid value: integer `-1`, expected u64 (line 2, column 16)")),
            ("[defences]\nsyn_cookie_ports = [80, 0]", format!("{f}: defences.syn_cookie_ports[1]: port 0 is not a port (1-65535)")),
            ("[defences]\nudp_service_ports = [65536]", format!("{f}: defences.udp_service_ports[0]: port 65536 is not a port (1-65535)")),
            ("[defences]\namplification_ports = [53, 70000]", format!("{f}: defences.amplification_ports[1]: port 70000 is not a port (1-65535)")),
            ("[defences]\nsyn_cookies = true\nsyn_cookie_ports = []", format!("{f}: defences.syn_cookie_ports: is empty but defences.syn_cookies = true (no port would get cookies)")),
            ("[defences]\namplification_drop = true\namplification_ports = []", format!("{f}: defences.amplification_ports: is empty but defences.amplification_drop = true (nothing would be dropped)")),
            ("[limits]\nfragment = { rate = 0 }", format!("{f}: defences.fragments: \"rate-limit\" needs limits.fragment.rate > 0 (use \"pass\" or \"drop\" otherwise)")),
            ("[defences]\nport_cap = true\n[limits]\nudp_port = { rate = 0 }", format!("{f}: defences.port_cap: needs limits.udp_port.rate > 0")),
            ("[defences]\nfragments = \"maybe\"", format!("{f}: defences.fragments: unknown variant `maybe`, expected one of `pass`, `rate-limit`, `drop` (line 2, column 13)")),
            ("[sampling]\none_in = 1000001", format!("{f}: sampling.one_in: must be ≤ 1000000 (0 turns sampling off)")),
            ("[sampling]\nmax_per_second = 1000001", format!("{f}: sampling.max_per_second: must be ≤ 1000000")),
            ("[sampling]\nmax_per_second = 0", format!("{f}: sampling.max_per_second: must be ≥ 1 while sampling is on (set sampling.one_in = 0 to turn it off)")),
            ("[tracking]\nsources = 10", format!("{f}: tracking.sources: must be between 1024 and 16777216")),
            ("[tracking]\nsources = 16777217", format!("{f}: tracking.sources: must be between 1024 and 16777216")),
            // Allowlist.
            ("[allowlist]\nprefixes = [\"10.0.0.0/8\", \"10.0.0.0/33\"]", format!("{f}: allowlist.prefixes[1]: invalid prefix '10.0.0.0/33': prefix length 33 is longer than 32 for IPv4")),
            ("[allowlist]\nprefixes = [\"mgmt\"]", format!("{f}: allowlist.prefixes[0]: invalid prefix 'mgmt': expected an IPv4 or IPv6 address or CIDR prefix like 192.0.2.0/24 or 2001:db8::/32")),
            ("[allowlist]\nprefixes = \"10.0.0.0/8\"", format!("{f}: allowlist.prefixes: invalid type: string \"10.0.0.0/8\", expected a sequence (line 2, column 12)")),
            // Daemon.
            ("[daemon]\nmetrics_addr = \"localhost\"", format!("{f}: daemon.metrics_addr: 'localhost' is not an address like 127.0.0.1:9947 or [::1]:9947 (or \"off\")")),
            ("[daemon]\nsocket = \"run/m.sock\"", format!("{f}: daemon.socket: 'run/m.sock' must be an absolute path")),
            ("[daemon]\nstate_dir = \"\"", format!("{f}: daemon.state_dir: '' must be an absolute path")),
            ("[daemon]\nsocket_group = \"no-such-group-mitigator\"", format!("{f}: daemon.socket_group: no group named 'no-such-group-mitigator' on this host")),
            ("[daemon]\nsocket_group = -1", format!("{f}: daemon.socket_group: gid -1 is not a valid group id")),
            ("[daemon]\nsocket_group = \"\"", format!("{f}: daemon.socket_group: is empty (give a group name or a gid, or leave the key out)")),
            ("[daemon]\nsocket_group = true", format!("{f}: daemon.socket_group: invalid type: boolean `true`, expected a group name or a numeric gid (line 2, column 16)")),
            ("[daemon]\nmode = \"fast\"", format!("{f}: daemon.mode: unknown variant `fast`, expected one of `auto`, `native`, `skb` (line 2, column 8)")),
            ("[daemon]\nmonitor = \"yes\"", format!("{f}: daemon.monitor: invalid type: string \"yes\", expected a boolean (line 2, column 11)")),
            // Unknown keys, at every level.
            ("[limits]\nsyn = { rate = 1, brust = 2 }", format!("{f}: limits.syn.brust: unknown key; expected `rate` or `burst` (line 2, column 19)")),
            ("[daemon]\nsockets = \"/x\"", format!("{f}: daemon.sockets: unknown key; expected `socket`, `socket_group`, `state_dir`, `pin_root`, `metrics_addr`, `mode`, `monitor` (line 2, column 1)")),
            ("[defense]\nrate_limit = true", format!("{f}: defense: unknown key; expected `daemon`, `allowlist`, `limits`, `defences`, `sampling`, `tracking`, `detect`, `escalation` (line 1, column 2)")),
            ("[tracking]\nsources = 4096\nttl = 5", format!("{f}: tracking.ttl: unknown key; expected `sources` (line 3, column 1)")),
            // Detection and escalation sections (validated by their owners).
            ("[escalation]\ndown_ratio = 1.5", format!("{f}: escalation.down_ratio: must be between 0 and 1 (exclusive)")),
            ("[escalation.udp]\nmin_pps = 0", format!("{f}: escalation.udp.min_pps: must be a number > 0")),
            ("[escalation.syn]\nmin_ppps = 1", format!("{f}: escalation.syn.min_ppps: unknown key; expected `min_pps`, `min_bps`, `baseline_factor`, `max_level`, `rate_limit`, `defence` (line 2, column 1)")),
            ("[detect.top]\ncapacity = 1", format!("{f}: detect.top.capacity: must be between 16 and 65536")),
            // Not TOML at all.
            ("[limits\nsyn = 1", format!("{f}: not valid TOML: unclosed table, expected `]` (line 1, column 8)")),
            ("a = 1\na = 2", format!("{f}: not valid TOML: duplicate key (line 2, column 1)")),
        ];
        for (text, want) in cases {
            assert_eq!(&error(text), want, "for config text:\n{text}");
        }
    }

    #[test]
    fn unreadable_file() {
        let e = Settings::load(Path::new("/nonexistent/mitigator.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config /nonexistent/mitigator.toml: cannot read: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn metrics_addr_flag_values() {
        assert_eq!(parse_metrics_addr("off"), Ok(None));
        assert_eq!(
            parse_metrics_addr("0.0.0.0:9947"),
            Ok(Some("0.0.0.0:9947".parse().unwrap()))
        );
        assert!(parse_metrics_addr("9947").is_err());
    }
}
