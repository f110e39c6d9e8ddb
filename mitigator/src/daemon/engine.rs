//! Applies control requests to the rule store and the datapath, keeping the
//! two in step and the state file current. Every change is all or nothing.

use std::{
    collections::HashSet,
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use tracing::{info, warn};

use crate::{
    datapath::Datapath,
    prefix::parse_prefix,
    protocol::{ListedRule, Reply, Request, StatusReport},
    rules::{Rule, RuleKind, RuleSource, RuleStore},
    state::StateDir,
    stats,
};

pub fn now_secs() -> u64 {
    now_millis() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The longest TTL accepted: a century. Longer is "forever" (no --ttl), and
/// keeps every expiry printable as a date.
pub const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 3600;

/// Requests touching more rules than this log one summary line instead of
/// one line per rule (a bulk load of 1M prefixes must not log 1M lines).
pub const LOG_EACH_MAX: usize = 16;

/// When a rule made at `now_ms` with `ttl_secs` expires, in whole unix
/// seconds rounded up: it lives at least its TTL and at most 1 s longer,
/// and the expiry loop (which compares with the clock truncated to whole
/// seconds, i.e. `now_ms >= expires * 1000`) removes it on time.
pub fn expiry_for(now_ms: u64, ttl_secs: u64) -> u64 {
    now_ms
        .saturating_add(ttl_secs.saturating_mul(1000))
        .div_ceil(1000)
}

/// Who sent a request, for the audit log and the rule's `uid`.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub pid: Option<i32>,
}

pub struct Engine {
    datapath: Datapath,
    store: RuleStore,
    state: StateDir,
    started: u64,
    monitor: bool,
}

impl Engine {
    /// Builds the engine and makes the maps hold exactly the stored rules.
    pub fn new(
        datapath: Datapath,
        store: RuleStore,
        state: StateDir,
        monitor: bool,
    ) -> anyhow::Result<Self> {
        let mut engine = Self {
            datapath,
            store,
            state,
            started: now_secs(),
            monitor,
        };
        engine.expire(now_secs())?;
        engine.reconcile()?;
        Ok(engine)
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    /// The rules as stored (cheap: no map walk, unlike a `List` request).
    pub fn store(&self) -> &RuleStore {
        &self.store
    }

    pub fn next_expiry(&self) -> Option<u64> {
        self.store.next_expiry()
    }

    /// Removes map entries that no rule accounts for and adds missing ones.
    fn reconcile(&mut self) -> anyhow::Result<()> {
        let t = std::time::Instant::now();
        let (mut added, mut removed) = (0, 0);
        for kind in [RuleKind::Block, RuleKind::Allow] {
            let in_map = self.datapath.entries(kind)?;
            for (net, _) in &in_map {
                if !self.store.contains(kind, net) {
                    self.datapath.remove(kind, net)?;
                    removed += 1;
                }
            }
            let present: std::collections::HashSet<IpNet> =
                in_map.into_iter().map(|(n, _)| n).collect();
            for rule in self.store.iter().filter(|r| r.kind == kind) {
                if !present.contains(&rule.prefix) {
                    self.datapath.insert(kind, &rule.prefix)?;
                    added += 1;
                }
            }
        }
        info!(
            rules = self.store.len(),
            added,
            removed,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "maps reconciled with the rule store"
        );
        Ok(())
    }

    pub fn handle(&mut self, request: Request, caller: Caller) -> Result<Reply, String> {
        match request {
            Request::Add {
                kind,
                prefixes,
                ttl_secs,
                reason,
            } => self.add(kind, &prefixes, ttl_secs, reason, caller),
            Request::Remove { kind, prefixes } => self.remove(kind, &prefixes, caller),
            Request::List {} => self.list(),
            Request::Stats {} => {
                let cells = self.datapath.counters().map_err(|e| e.to_string())?;
                Ok(Reply::Stats(stats::report(
                    self.datapath.iface(),
                    now_secs(),
                    &cells,
                )))
            }
            Request::Status {} => Ok(Reply::Status(self.status())),
            // The server hands these to the escalation controller.
            Request::Escalate { .. } | Request::Top { .. } => {
                Err("escalation is not running in this daemon".into())
            }
        }
    }

    fn add(
        &mut self,
        kind: RuleKind,
        prefixes: &[String],
        ttl_secs: Option<u64>,
        reason: String,
        caller: Caller,
    ) -> Result<Reply, String> {
        let nets = parse_all(prefixes)?;
        match ttl_secs {
            Some(0) => return Err("invalid ttl: must be at least 1s; nothing was changed".into()),
            Some(t) if t > MAX_TTL_SECS => {
                return Err(format!(
                    "invalid ttl: {t}s is longer than the maximum of {MAX_TTL_SECS}s (100 years; \
                     omit --ttl for a rule that never expires); nothing was changed"
                ))
            }
            _ => {}
        }
        let now_ms = now_millis();
        let now = now_ms / 1000;
        let expires = ttl_secs.map(|t| expiry_for(now_ms, t));
        // Insert into the maps first; on failure undo what this request added.
        let mut inserted: Vec<IpNet> = Vec::new();
        for net in &nets {
            if self.store.contains(kind, net) {
                continue;
            }
            if let Err(e) = self.datapath.insert(kind, net) {
                for done in &inserted {
                    let _ = self.datapath.remove(kind, done);
                }
                return Err(format!("{e}; nothing was changed"));
            }
            inserted.push(*net);
        }
        let mut previous = Vec::new();
        let (mut added, mut updated) = (0, 0);
        for net in &nets {
            let rule = Rule {
                prefix: *net,
                kind,
                source: RuleSource::Operator,
                reason: reason.clone(),
                created: now,
                expires,
                uid: Some(caller.uid),
            };
            match self.store.upsert(rule) {
                Some(old) => {
                    updated += 1;
                    previous.push(old);
                }
                None => added += 1,
            }
        }
        if let Err(e) = self.state.save(&self.store) {
            for net in &nets {
                self.store.remove(kind, net);
            }
            for old in previous {
                self.store.upsert(old);
            }
            for net in &inserted {
                let _ = self.datapath.remove(kind, net);
            }
            return Err(format!("{e}; nothing was changed"));
        }
        if nets.len() <= LOG_EACH_MAX {
            for net in &nets {
                info!(
                    action = kind.as_str(),
                    prefix = %net,
                    uid = caller.uid,
                    pid = caller.pid,
                    reason = %reason,
                    ttl_secs,
                    "rule added"
                );
            }
        } else {
            info!(
                action = kind.as_str(),
                rules = nets.len(),
                added,
                updated,
                first = %nets[0],
                last = %nets[nets.len() - 1],
                uid = caller.uid,
                pid = caller.pid,
                reason = %reason,
                ttl_secs,
                "rules added in bulk"
            );
        }
        Ok(Reply::Changed {
            added,
            updated,
            removed: 0,
        })
    }

    fn remove(
        &mut self,
        kind: RuleKind,
        prefixes: &[String],
        caller: Caller,
    ) -> Result<Reply, String> {
        let nets = parse_all(prefixes)?;
        if let Some(missing) = nets.iter().find(|n| !self.store.contains(kind, n)) {
            let what = match kind {
                RuleKind::Block => "blocked",
                RuleKind::Allow => "allowed",
            };
            return Err(format!("{missing} is not {what}; nothing was changed"));
        }
        let removed: Vec<Rule> = nets
            .iter()
            .filter_map(|n| self.store.remove(kind, n))
            .collect();
        if let Err(e) = self.state.save(&self.store) {
            for rule in removed {
                self.store.upsert(rule);
            }
            return Err(format!("{e}; nothing was changed"));
        }
        // The store and the file are committed; a map entry that cannot be
        // deleted is reported but must not stop the others from going.
        let mut failed = Vec::new();
        for rule in &removed {
            if let Err(e) = self.datapath.remove(kind, &rule.prefix) {
                warn!(prefix = %rule.prefix, error = %e, "cannot remove rule from the map");
                failed.push(format!("{}: {e}", rule.prefix));
            }
        }
        if removed.len() <= LOG_EACH_MAX {
            for rule in &removed {
                info!(
                    action = kind.as_str(),
                    prefix = %rule.prefix,
                    uid = caller.uid,
                    pid = caller.pid,
                    "rule removed"
                );
            }
        } else {
            info!(
                action = kind.as_str(),
                rules = removed.len(),
                uid = caller.uid,
                pid = caller.pid,
                "rules removed in bulk"
            );
        }
        if let Some(first) = failed.first() {
            return Err(format!(
                "removed {} rule(s) from the store, but {} map entr(ies) could not be deleted (first: {first})",
                removed.len(),
                failed.len()
            ));
        }
        Ok(Reply::Changed {
            added: 0,
            updated: 0,
            removed: removed.len(),
        })
    }

    fn list(&self) -> Result<Reply, String> {
        let mut hits = std::collections::HashMap::new();
        for kind in [RuleKind::Block, RuleKind::Allow] {
            for (net, v) in self.datapath.entries(kind).map_err(|e| e.to_string())? {
                hits.insert((kind, net), v);
            }
        }
        let rules = self
            .store
            .iter()
            .map(|r| {
                let v = hits.get(&(r.kind, r.prefix)).copied().unwrap_or_default();
                ListedRule {
                    rule: r.clone(),
                    packets: v.packets,
                    bytes: v.bytes,
                }
            })
            .collect();
        Ok(Reply::Rules { rules })
    }

    fn status(&self) -> StatusReport {
        StatusReport {
            interface: self.datapath.iface().to_string(),
            attach_mode: self.datapath.attached_mode().to_string(),
            monitor: self.monitor,
            adopted: self.datapath.adopted(),
            pid: std::process::id(),
            started: self.started,
            block_rules: self.store.count(RuleKind::Block),
            allow_rules: self.store.count(RuleKind::Allow),
            state_file: self.state.path().display().to_string(),
            escalation: None,
        }
    }

    /// Drops every rule expired at `now` (unix seconds: a rule expiring at
    /// `t` goes once the clock reads `t.000`) from the store, the file and
    /// the maps. If the file cannot be written nothing is removed, so the
    /// next call retries.
    pub fn expire(&mut self, now: u64) -> anyhow::Result<()> {
        let gone = self.store.take_expired(now);
        if gone.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.state.save(&self.store) {
            for rule in gone {
                self.store.upsert(rule);
            }
            return Err(e.into());
        }
        let mut failed = 0;
        for rule in &gone {
            if let Err(e) = self.datapath.remove(rule.kind, &rule.prefix) {
                warn!(prefix = %rule.prefix, error = %e, "cannot remove expired rule from the map");
                failed += 1;
            }
        }
        if gone.len() <= LOG_EACH_MAX {
            for rule in &gone {
                info!(
                    action = rule.kind.as_str(),
                    prefix = %rule.prefix,
                    reason = %rule.reason,
                    expires = rule.expires,
                    "rule expired"
                );
            }
        } else {
            info!(rules = gone.len(), "rules expired");
        }
        if failed > 0 {
            anyhow::bail!("{failed} expired rule(s) could not be removed from the maps");
        }
        Ok(())
    }
}

/// Block rules the escalation ladder makes and takes back on its own.
impl Engine {
    /// Adds or refreshes an automatic block. An operator's rule for the same
    /// prefix wins and is left as it is. Returns whether anything changed.
    pub fn add_auto_block(
        &mut self,
        prefix: IpNet,
        ttl_secs: u64,
        reason: &str,
    ) -> anyhow::Result<bool> {
        let previous = self.store.get(RuleKind::Block, &prefix).cloned();
        if previous
            .as_ref()
            .is_some_and(|r| r.source == RuleSource::Operator)
        {
            return Ok(false);
        }
        let now_ms = now_millis();
        let rule = Rule {
            prefix,
            kind: RuleKind::Block,
            source: RuleSource::Auto,
            reason: reason.to_string(),
            created: previous.as_ref().map_or(now_ms / 1000, |r| r.created),
            expires: Some(expiry_for(now_ms, ttl_secs)),
            uid: None,
        };
        self.datapath.insert(RuleKind::Block, &prefix)?;
        self.store.upsert(rule);
        if let Err(e) = self.state.save(&self.store) {
            match previous {
                Some(old) => {
                    self.store.upsert(old);
                }
                None => {
                    self.store.remove(RuleKind::Block, &prefix);
                    let _ = self.datapath.remove(RuleKind::Block, &prefix);
                }
            }
            return Err(e.into());
        }
        info!(
            action = "block",
            source = "auto",
            prefix = %prefix,
            reason,
            ttl_secs,
            refreshed = previous.is_some(),
            "rule added"
        );
        Ok(true)
    }

    /// Removes an automatic block (an operator rule is never touched).
    pub fn remove_auto_block(&mut self, prefix: &IpNet) -> anyhow::Result<bool> {
        match self.store.get(RuleKind::Block, prefix) {
            Some(r) if r.source == RuleSource::Auto => {}
            _ => return Ok(false),
        }
        let old = self
            .store
            .remove(RuleKind::Block, prefix)
            .expect("checked above");
        if let Err(e) = self.state.save(&self.store) {
            self.store.upsert(old);
            return Err(e.into());
        }
        self.datapath.remove(RuleKind::Block, prefix)?;
        info!(action = "block", source = "auto", prefix = %prefix, "rule removed");
        Ok(true)
    }
}

/// Parses every prefix (all or nothing), dropping repeats so a prefix named
/// twice in one request is one rule, added once.
fn parse_all(prefixes: &[String]) -> Result<Vec<IpNet>, String> {
    if prefixes.is_empty() {
        return Err("no prefix given; nothing was changed".into());
    }
    let mut seen = HashSet::with_capacity(prefixes.len());
    let mut nets = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        let net = parse_prefix(p).map_err(|e| format!("{e}; nothing was changed"))?;
        if seen.insert(net) {
            nets.push(net);
        }
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rounds_up_to_a_whole_second() {
        assert_eq!(expiry_for(100_000, 2), 102);
        assert_eq!(expiry_for(100_001, 2), 103);
        assert_eq!(expiry_for(100_999, 2), 103);
        assert_eq!(expiry_for(u64::MAX, 2), u64::MAX.div_ceil(1000));
    }

    #[test]
    fn parse_all_dedupes_and_refuses_bad_input() {
        let p = |v: &[&str]| parse_all(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let nets = p(&["10.0.0.1", "10.0.0.1/32", "10.1.2.3/8", "10.0.0.0/8"]).unwrap();
        assert_eq!(nets.len(), 2);
        assert_eq!(
            p(&["10.0.0.1", "10.0.0.0/33"]).unwrap_err(),
            "invalid prefix '10.0.0.0/33': prefix length 33 is longer than 32 for IPv4; nothing was changed"
        );
        assert!(p(&[]).is_err());
    }
}
