//! The rule store: every allow/block rule the daemon enforces, with who
//! made it, why, and until when. Plain data; the datapath mirrors it.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Block,
    Allow,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Block => "block",
            RuleKind::Allow => "allow",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleSource {
    /// Made by a person through the CLI.
    Operator,
    /// Made by the daemon's escalation.
    Auto,
}

impl RuleSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleSource::Operator => "operator",
            RuleSource::Auto => "auto",
        }
    }
}

/// Seconds since the Unix epoch: what the state file and the protocol carry.
pub type UnixSecs = u64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub prefix: IpNet,
    pub kind: RuleKind,
    pub source: RuleSource,
    #[serde(default)]
    pub reason: String,
    /// When the rule was created (unix seconds).
    pub created: UnixSecs,
    /// When the rule stops applying (unix seconds), if ever.
    #[serde(default)]
    pub expires: Option<UnixSecs>,
    /// Unix uid of whoever made it, for the audit log.
    #[serde(default)]
    pub uid: Option<u32>,
}

impl Rule {
    pub fn is_expired(&self, now: UnixSecs) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// Rules keyed by (kind, prefix): one block and one allow rule per prefix.
/// Kept with an index by expiry and a count per kind, so the expiry loop
/// and `status` cost O(log n), not a walk over a million rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleStore {
    rules: BTreeMap<(RuleKind, IpNet), Rule>,
    by_expiry: BTreeSet<(UnixSecs, RuleKind, IpNet)>,
    blocks: usize,
}

impl RuleStore {
    pub fn from_rules(rules: impl IntoIterator<Item = Rule>) -> Self {
        let mut store = Self::default();
        for rule in rules {
            store.upsert(rule);
        }
        store
    }

    /// Adds or replaces a rule; returns the rule it replaced, if any.
    pub fn upsert(&mut self, rule: Rule) -> Option<Rule> {
        if let Some(e) = rule.expires {
            self.by_expiry.insert((e, rule.kind, rule.prefix));
        }
        let kind = rule.kind;
        let old = self.rules.insert((rule.kind, rule.prefix), rule);
        match &old {
            Some(old) => self.unindex(old),
            None if kind == RuleKind::Block => self.blocks += 1,
            None => {}
        }
        old
    }

    pub fn remove(&mut self, kind: RuleKind, prefix: &IpNet) -> Option<Rule> {
        let old = self.rules.remove(&(kind, *prefix))?;
        self.unindex(&old);
        if kind == RuleKind::Block {
            self.blocks -= 1;
        }
        Some(old)
    }

    /// Drops a replaced or removed rule's expiry entry (unless the rule
    /// now stored under its key expires at the same time).
    fn unindex(&mut self, old: &Rule) {
        if let Some(e) = old.expires {
            let current = self.rules.get(&(old.kind, old.prefix));
            if current.and_then(|r| r.expires) != Some(e) {
                self.by_expiry.remove(&(e, old.kind, old.prefix));
            }
        }
    }

    pub fn get(&self, kind: RuleKind, prefix: &IpNet) -> Option<&Rule> {
        self.rules.get(&(kind, *prefix))
    }

    pub fn contains(&self, kind: RuleKind, prefix: &IpNet) -> bool {
        self.rules.contains_key(&(kind, *prefix))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn count(&self, kind: RuleKind) -> usize {
        match kind {
            RuleKind::Block => self.blocks,
            RuleKind::Allow => self.rules.len() - self.blocks,
        }
    }

    /// The earliest expiry among all rules, so the expiry task knows when to wake.
    pub fn next_expiry(&self) -> Option<UnixSecs> {
        self.by_expiry.first().map(|(e, _, _)| *e)
    }

    /// Removes and returns every rule expired at `now`.
    pub fn take_expired(&mut self, now: UnixSecs) -> Vec<Rule> {
        let mut gone = Vec::new();
        while let Some(&(e, kind, prefix)) = self.by_expiry.first() {
            if e > now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(rule) = self.remove(kind, &prefix) {
                gone.push(rule);
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, kind: RuleKind, expires: Option<u64>) -> Rule {
        Rule {
            prefix: prefix.parse().unwrap(),
            kind,
            source: RuleSource::Operator,
            reason: String::new(),
            created: 100,
            expires,
            uid: Some(0),
        }
    }

    #[test]
    fn upsert_replaces_same_kind_and_prefix_only() {
        let mut store = RuleStore::default();
        assert!(store
            .upsert(rule("10.0.0.0/8", RuleKind::Block, None))
            .is_none());
        assert!(store
            .upsert(rule("10.0.0.0/8", RuleKind::Allow, None))
            .is_none());
        assert!(store
            .upsert(rule("10.0.0.0/8", RuleKind::Block, Some(5)))
            .is_some());
        assert_eq!(store.len(), 2);
        assert_eq!(store.count(RuleKind::Block), 1);
        let net = "10.0.0.0/8".parse().unwrap();
        assert_eq!(store.get(RuleKind::Block, &net).unwrap().expires, Some(5));
    }

    #[test]
    fn take_expired_removes_exactly_the_expired() {
        let mut store = RuleStore::from_rules([
            rule("10.0.0.1/32", RuleKind::Block, Some(50)),
            rule("10.0.0.2/32", RuleKind::Block, Some(150)),
            rule("10.0.0.3/32", RuleKind::Block, None),
        ]);
        assert_eq!(store.next_expiry(), Some(50));
        let gone = store.take_expired(100);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].prefix.to_string(), "10.0.0.1/32");
        assert_eq!(store.len(), 2);
        assert_eq!(store.next_expiry(), Some(150));
        assert!(store.take_expired(100).is_empty());
        assert_eq!(store.take_expired(150).len(), 1);
        assert_eq!(store.next_expiry(), None);
        assert_eq!(store.count(RuleKind::Block), 1);
    }

    #[test]
    fn index_follows_replacements_and_removals() {
        let mut store = RuleStore::default();
        let net: IpNet = "10.0.0.1/32".parse().unwrap();
        store.upsert(rule("10.0.0.1/32", RuleKind::Block, Some(50)));
        // Refreshing the TTL moves the expiry; the old one must not fire.
        store.upsert(rule("10.0.0.1/32", RuleKind::Block, Some(500)));
        assert_eq!(store.next_expiry(), Some(500));
        assert!(store.take_expired(100).is_empty());
        // Made permanent: no expiry left.
        store.upsert(rule("10.0.0.1/32", RuleKind::Block, None));
        assert_eq!(store.next_expiry(), None);
        // Same expiry twice (re-block with the same TTL second) stays indexed.
        store.upsert(rule("10.0.0.1/32", RuleKind::Block, Some(70)));
        store.upsert(rule("10.0.0.1/32", RuleKind::Block, Some(70)));
        assert_eq!(store.next_expiry(), Some(70));
        store.upsert(rule("10.0.0.2/32", RuleKind::Allow, Some(60)));
        assert_eq!(
            (store.count(RuleKind::Block), store.count(RuleKind::Allow)),
            (1, 1)
        );
        assert!(store
            .remove(RuleKind::Allow, &"10.0.0.2/32".parse().unwrap())
            .is_some());
        assert_eq!(store.next_expiry(), Some(70));
        assert_eq!(store.take_expired(70)[0].prefix, net);
        assert!(store.is_empty());
        assert_eq!(store, RuleStore::default());
    }
}
