//! Applies control requests to the rule store and the datapath, keeping the
//! two in step and the state file current. Every change is all or nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tracing::info;

use crate::{
    datapath::Datapath,
    prefix::parse_prefix,
    protocol::{ListedRule, Reply, Request, StatusReport},
    rules::{Rule, RuleKind, RuleSource, RuleStore},
    state::StateDir,
    stats,
};

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

    pub fn next_expiry(&self) -> Option<u64> {
        self.store.next_expiry()
    }

    /// Removes map entries that no rule accounts for and adds missing ones.
    fn reconcile(&mut self) -> anyhow::Result<()> {
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
            added, removed, "maps reconciled with the rule store"
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
            Request::List => self.list(),
            Request::Stats => {
                let cells = self.datapath.counters().map_err(|e| e.to_string())?;
                Ok(Reply::Stats(stats::report(
                    self.datapath.iface(),
                    now_secs(),
                    &cells,
                )))
            }
            Request::Status => Ok(Reply::Status(self.status())),
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
        if ttl_secs == Some(0) {
            return Err("invalid ttl: must be at least 1s".into());
        }
        let now = now_secs();
        let expires = ttl_secs.map(|t| now.saturating_add(t));
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
        for rule in &removed {
            self.datapath
                .remove(kind, &rule.prefix)
                .map_err(|e| e.to_string())?;
            info!(
                action = kind.as_str(),
                prefix = %rule.prefix,
                uid = caller.uid,
                pid = caller.pid,
                "rule removed"
            );
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
        }
    }

    /// Drops every rule expired at `now` from the store, the file and the maps.
    pub fn expire(&mut self, now: u64) -> anyhow::Result<()> {
        let gone = self.store.take_expired(now);
        if gone.is_empty() {
            return Ok(());
        }
        self.state.save(&self.store)?;
        for rule in gone {
            self.datapath.remove(rule.kind, &rule.prefix)?;
            info!(
                action = rule.kind.as_str(),
                prefix = %rule.prefix,
                reason = %rule.reason,
                "rule expired"
            );
        }
        Ok(())
    }
}

fn parse_all(prefixes: &[String]) -> Result<Vec<IpNet>, String> {
    if prefixes.is_empty() {
        return Err("no prefix given".into());
    }
    prefixes
        .iter()
        .map(|p| parse_prefix(p).map_err(|e| format!("{e}; nothing was changed")))
        .collect()
}
