//! The rule store on disk: one JSON file in the state directory, replaced
//! atomically (write a temp file, fsync it, rename over, fsync the
//! directory), so a crash leaves either the old or the new file, never half.
//!
//! Format 2 groups rules that share everything but the prefix (a bulk load
//! of a million prefixes is one group), so the file stays small and quick
//! to rewrite on every change:
//!
//! ```json
//! {"version":2,"groups":[{"kind":"block","source":"operator","reason":"udp flood",
//!   "created":1700000000,"expires":null,"uid":0,"prefixes":["192.0.2.0/24"]}]}
//! ```
//!
//! Format 1 (`{"version":1,"rules":[{"prefix":..,"kind":..,...}]}`) is still read.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::rules::{Rule, RuleKind, RuleSource, RuleStore, UnixSecs};

const STATE_FILE: &str = "rules.json";
const FORMAT_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("state file {path} is corrupt ({reason}); refusing to start so it is not overwritten: fix or move it away")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What is read: either format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(default)]
    rules: Option<Vec<Rule>>,
    #[serde(default)]
    groups: Option<Vec<Group>>,
}

#[derive(Serialize)]
struct StateFileOut<'a> {
    version: u32,
    groups: Vec<GroupOut<'a>>,
}

/// Rules that differ only in their prefix.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    kind: RuleKind,
    source: RuleSource,
    #[serde(default)]
    reason: String,
    created: UnixSecs,
    #[serde(default)]
    expires: Option<UnixSecs>,
    #[serde(default)]
    uid: Option<u32>,
    prefixes: PrefixesIn,
}

#[derive(Serialize)]
struct GroupOut<'a> {
    kind: RuleKind,
    source: RuleSource,
    reason: &'a str,
    created: UnixSecs,
    expires: Option<UnixSecs>,
    uid: Option<u32>,
    prefixes: PrefixesOut<'a>,
}

type GroupKey<'a> = (
    RuleKind,
    RuleSource,
    &'a str,
    UnixSecs,
    Option<UnixSecs>,
    Option<u32>,
);

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved rules; an absent file is an empty store. A file that is
    /// empty, truncated, not JSON or not ours is corrupt, and left alone.
    pub fn load(&self) -> Result<RuleStore, StateError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RuleStore::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.clone(),
            reason,
        };
        if bytes.is_empty() {
            return Err(corrupt("the file is empty".into()));
        }
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let rules = match (file.version, file.rules, file.groups) {
            (1, Some(rules), None) => rules,
            (2, None, Some(groups)) => {
                let mut rules = Vec::with_capacity(groups.iter().map(|g| g.prefixes.0.len()).sum());
                for g in groups {
                    for prefix in g.prefixes.0 {
                        rules.push(Rule {
                            prefix,
                            kind: g.kind,
                            source: g.source,
                            reason: g.reason.clone(),
                            created: g.created,
                            expires: g.expires,
                            uid: g.uid,
                        });
                    }
                }
                rules
            }
            (1 | 2, _, _) => {
                return Err(corrupt(format!(
                    "format version {} needs exactly the `{}` list",
                    file.version,
                    if file.version == 1 { "rules" } else { "groups" }
                )))
            }
            (v, _, _) => return Err(corrupt(format!("unknown format version {v}"))),
        };
        Ok(RuleStore::from_rules(rules))
    }

    pub fn save(&self, store: &RuleStore) -> Result<(), StateError> {
        let path = self.path();
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(werr)?;
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        write_synced(&tmp, &encode(store)).map_err(werr)?;
        fs::rename(&tmp, &path).map_err(werr)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(werr)?;
        Ok(())
    }
}

/// The file's bytes: rules grouped by everything but their prefix.
fn encode(store: &RuleStore) -> Vec<u8> {
    let mut groups: BTreeMap<GroupKey<'_>, Vec<&IpNet>> = BTreeMap::new();
    for r in store.iter() {
        groups
            .entry((r.kind, r.source, &r.reason, r.created, r.expires, r.uid))
            .or_default()
            .push(&r.prefix);
    }
    let file = StateFileOut {
        version: FORMAT_VERSION,
        groups: groups
            .into_iter()
            .map(
                |((kind, source, reason, created, expires, uid), prefixes)| GroupOut {
                    kind,
                    source,
                    reason,
                    created,
                    expires,
                    uid,
                    prefixes: PrefixesOut(prefixes),
                },
            )
            .collect(),
    };
    serde_json::to_vec(&file).expect("rules always serialize")
}

/// A group's prefixes, written without going through `Display` (a million
/// prefixes are written on every change; IPv4 is formatted by hand).
struct PrefixesOut<'a>(Vec<&'a IpNet>);

impl Serialize for PrefixesOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        let mut buf = String::with_capacity(64);
        for net in &self.0 {
            buf.clear();
            write_net(&mut buf, net);
            seq.serialize_element(buf.as_str())?;
        }
        seq.end()
    }
}

fn write_net(buf: &mut String, net: &IpNet) {
    fn push_u8(buf: &mut String, n: u8) {
        if n >= 100 {
            buf.push((b'0' + n / 100) as char);
        }
        if n >= 10 {
            buf.push((b'0' + n / 10 % 10) as char);
        }
        buf.push((b'0' + n % 10) as char);
    }
    match net {
        IpNet::V4(n) => {
            for (i, o) in n.addr().octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                push_u8(buf, o);
            }
            buf.push('/');
            push_u8(buf, n.prefix_len());
        }
        IpNet::V6(n) => {
            use std::fmt::Write;
            let _ = write!(buf, "{}/{}", n.addr(), n.prefix_len());
        }
    }
}

/// A group's prefixes, parsed with std's address parsers (quicker than
/// `IpNet`'s own for a million entries) and checked like `IpNet` would.
struct PrefixesIn(Vec<IpNet>);

impl<'de> Deserialize<'de> for PrefixesIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PrefixesIn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of CIDR prefixes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PrefixesIn, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(s) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
                    let net = parse_net(&s)
                        .ok_or_else(|| serde::de::Error::custom(format!("invalid prefix '{s}'")))?;
                    out.push(net);
                }
                Ok(PrefixesIn(out))
            }
        }
        d.deserialize_seq(Visitor)
    }
}

/// `a.b.c.d/len` or `v6/len`, host bits clear (as the daemon writes them).
fn parse_net(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    let net = match addr.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) => IpNet::V4(ipnet::Ipv4Net::new(a, len).ok()?),
        std::net::IpAddr::V6(a) => IpNet::V6(ipnet::Ipv6Net::new(a, len).ok()?),
    };
    (net.trunc() == net).then_some(net)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{RuleKind, RuleSource};

    fn sample() -> RuleStore {
        RuleStore::from_rules([Rule {
            prefix: "2001:db8::/32".parse().unwrap(),
            kind: RuleKind::Block,
            source: RuleSource::Auto,
            reason: "udp flood".into(),
            created: 1,
            expires: Some(2),
            uid: None,
        }])
    }

    #[test]
    fn round_trips_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("nested"));
        assert!(state.load().unwrap().is_empty());
        state.save(&sample()).unwrap();
        assert_eq!(state.load().unwrap(), sample());
        assert!(!dir.path().join("nested/.rules.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.save(&sample()).unwrap();
        let full = fs::read(state.path()).unwrap();
        fs::write(state.path(), &full[..full.len() / 2]).unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("is corrupt"), "{err}");
        assert_eq!(fs::read(state.path()).unwrap(), &full[..full.len() / 2]);
    }

    fn rule(prefix: &str, reason: &str, created: u64) -> Rule {
        Rule {
            prefix: prefix.parse().unwrap(),
            kind: RuleKind::Block,
            source: RuleSource::Operator,
            reason: reason.into(),
            created,
            expires: None,
            uid: Some(0),
        }
    }

    #[test]
    fn rules_sharing_everything_but_the_prefix_are_one_group() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let mut rules: Vec<Rule> = (0..1000)
            .map(|i| rule(&format!("10.0.{}.{}/32", i / 256, i % 256), "bulk", 5))
            .collect();
        rules.push(rule("2001:db8::/32", "other", 5));
        rules.push(rule("10.9.0.0/16", "bulk", 6));
        let store = RuleStore::from_rules(rules.clone());
        state.save(&store).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(state.path()).unwrap()).unwrap();
        assert_eq!(json["version"], 2);
        let groups = json["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 3);
        let sizes: Vec<usize> = groups
            .iter()
            .map(|g| g["prefixes"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [1000, 1, 1]);
        assert_eq!(state.load().unwrap(), store);
    }

    #[test]
    fn prefixes_are_written_and_read_like_ipnet_does() {
        for p in [
            "0.0.0.0/0",
            "1.2.3.4/32",
            "10.20.0.0/16",
            "255.255.255.255/32",
            "100.64.0.0/10",
            "::/0",
            "2001:db8::/32",
            "fd00:bad::1:0/128",
            "::ffff:1.2.3.4/128",
        ] {
            let net: IpNet = p.parse().unwrap();
            let mut buf = String::new();
            write_net(&mut buf, &net);
            assert_eq!(buf, net.to_string());
            assert_eq!(parse_net(&buf), Some(net));
        }
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "10.0.0.1/8",
            "x/8",
            "10.0.0.0/-1",
            "",
        ] {
            assert_eq!(parse_net(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bad_prefix_in_the_file_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        fs::write(
            state.path(),
            r#"{"version":2,"groups":[{"kind":"block","source":"operator","created":1,"prefixes":["10.0.0.0/33"]}]}"#,
        )
        .unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(
            err.contains("is corrupt (invalid prefix '10.0.0.0/33' at line 1"),
            "{err}"
        );
    }

    #[test]
    #[ignore = "timing: cargo test --release -p mitigator --lib -- --ignored --nocapture"]
    fn a_million_rules_save_and_load_quickly() {
        let rules = (0..1_100_000u32).map(|i| Rule {
            prefix: IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
                0x0b00_0000 + i,
            ))),
            kind: RuleKind::Block,
            source: RuleSource::Operator,
            reason: "bulk".into(),
            created: 5,
            expires: None,
            uid: Some(0),
        });
        let store = RuleStore::from_rules(rules);
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let t = std::time::Instant::now();
        state.save(&store).unwrap();
        let save = t.elapsed();
        let t = std::time::Instant::now();
        assert_eq!(state.load().unwrap().len(), store.len());
        eprintln!("1.1M rules: save {save:?}, load {:?}", t.elapsed());
    }

    #[test]
    fn format_1_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        fs::write(
            state.path(),
            r#"{"version":1,"rules":[{"prefix":"10.0.0.0/8","kind":"block","source":"auto","reason":"x","created":1,"expires":9,"uid":null}]}"#,
        )
        .unwrap();
        let store = state.load().unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(store.next_expiry(), Some(9));
    }

    #[test]
    fn empty_wrong_version_and_foreign_files_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let path = state.path().display().to_string();
        for (content, reason) in [
            ("", "the file is empty"),
            ("{\"version\":3,\"groups\":[]}", "unknown format version 3"),
            ("{\"version\":2,\"rules\":[]}", "format version 2 needs exactly the `groups` list"),
            ("42", "invalid type: integer `42`, expected struct StateFile at line 1 column 2"),
            ("{\"version\":2,\"groups\":[],\"x\":1}", "unknown field `x`, expected one of `version`, `rules`, `groups` at line 1 column 28"),
        ] {
            fs::write(state.path(), content).unwrap();
            assert_eq!(
                state.load().unwrap_err().to_string(),
                format!("state file {path} is corrupt ({reason}); refusing to start so it is not overwritten: fix or move it away"),
                "{content}"
            );
            assert_eq!(fs::read_to_string(state.path()).unwrap(), content);
        }
    }
}
