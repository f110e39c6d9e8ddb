//! Detection and escalation inside the daemon: header samples from the ring
//! buffer feed the top-talker tables, every interval the counters close a
//! window of rates, and what the ladder decides is applied through the
//! engine (datapath config, auto-block rules) and logged with its numbers.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use ipnet::IpNet;
use mitigator_common::{Sample, FLAG_SYN_COOKIES};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::engine::Engine;
use crate::{
    detect::AttackClass,
    escalation::{ActionKind, Controller, EscalationStatus, Level, StepOutput},
    metrics::Metrics,
    rules::RuleKind,
    sysctl::SysctlGuard,
};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The controller plus the kernel setting its SYN-cookie level needs.
pub struct Escalator {
    pub controller: Controller,
    syncookies: Option<SysctlGuard>,
    /// The allowlisted prefixes last handed to the controller (`None`:
    /// not yet synced with the rule store).
    allowlist: Option<Vec<IpNet>>,
}

impl Escalator {
    pub fn new(controller: Controller) -> Self {
        Self {
            controller,
            syncookies: None,
            allowlist: None,
        }
    }

    /// Hands the controller the allow rules in force now: operators add
    /// and remove them at run time (`mitigator allow` / `unallow`, TTLs),
    /// and an allowlisted prefix must never be auto-blocked. Auto-blocks
    /// that overlap a new allow rule are removed at once. Cheap when
    /// nothing changed: one lookup per known allow rule.
    fn sync_allowlist(&mut self, engine: &mut Engine) {
        let store = engine.store();
        let unchanged = self.allowlist.as_ref().is_some_and(|known| {
            known.len() == store.count(RuleKind::Allow)
                && known.iter().all(|p| store.contains(RuleKind::Allow, p))
        });
        if unchanged {
            return;
        }
        let allowlist: Vec<IpNet> = store
            .iter()
            .filter(|r| r.kind == RuleKind::Allow)
            .map(|r| r.prefix)
            .collect();
        self.allowlist = Some(allowlist.clone());
        let out = self.controller.set_allowlist(allowlist, now_ms());
        self.apply(engine, out);
    }

    /// Carries out a step of the ladder: config changes, auto-blocks, logs.
    pub fn apply(&mut self, engine: &mut Engine, out: StepOutput) {
        for event in &out.events {
            info!(
                target: "mitigator::escalation",
                class = ?event.class,
                from = event.from.number(),
                to = event.to.number(),
                dry_run = event.dry_run,
                "{event}"
            );
        }
        for action in out.actions {
            if !action.should_apply() {
                info!(target: "mitigator::escalation", action = ?action.kind, "dry run: not applied");
                continue;
            }
            if let Err(e) = self.apply_one(engine, action.kind) {
                warn!(target: "mitigator::escalation", error = %e, "escalation action failed");
            }
        }
    }

    fn apply_one(&mut self, engine: &mut Engine, kind: ActionKind) -> anyhow::Result<()> {
        match kind {
            ActionKind::SetConfig { config, .. } => {
                self.keep_syncookie_sysctl(config.has(FLAG_SYN_COOKIES));
                engine.datapath_mut().set_config(config)?;
            }
            ActionKind::AddAutoBlock {
                prefix,
                ttl_secs,
                reason,
                ..
            } => {
                engine.add_auto_block(prefix, ttl_secs, &reason)?;
            }
            ActionKind::RemoveAutoBlock { prefix, .. } => {
                engine.remove_auto_block(&prefix)?;
            }
            ActionKind::Upstream(rec) => {
                warn!(target: "mitigator::escalation", recommendation = %rec.summary, "upstream mitigation recommended: the pipe itself is filling");
            }
            ActionKind::UpstreamWithdraw { class } => {
                info!(target: "mitigator::escalation", class = ?class, "upstream recommendation withdrawn");
            }
        }
        Ok(())
    }

    /// SYN cookies from XDP need `tcp_syncookies=2` while they are on.
    fn keep_syncookie_sysctl(&mut self, on: bool) {
        if on && self.syncookies.is_none() {
            match SysctlGuard::enable_syncookies() {
                Ok(g) => self.syncookies = Some(g),
                Err(e) => {
                    warn!(error = %e, "cannot set net.ipv4.tcp_syncookies=2; SYN cookies from XDP will not answer")
                }
            }
        } else if !on {
            if let Some(mut g) = self.syncookies.take() {
                g.restore();
            }
        }
    }

    /// On a stop that leaves the program running: keep the sysctl as is.
    pub fn forget_sysctl(&mut self) {
        if let Some(g) = self.syncookies.take() {
            std::mem::forget(g);
        }
    }

    /// On a stop that detaches the program: put the sysctl back.
    pub fn restore_sysctl(&mut self) {
        if let Some(mut g) = self.syncookies.take() {
            g.restore();
        }
    }

    /// `mitigator escalate CLASS LEVEL|auto`.
    pub fn escalate(
        &mut self,
        engine: &mut Engine,
        class: &str,
        level: Option<&str>,
    ) -> Result<EscalationStatus, String> {
        let class: AttackClass = class.parse()?;
        // A pin at auto-block level blocks at once: with the allowlist of now.
        self.sync_allowlist(engine);
        let out = match level {
            None => self.controller.release(class, now_ms()),
            Some(l) => {
                let level: Level = l.parse()?;
                self.controller.pin(class, level, now_ms())
            }
        };
        self.apply(engine, out);
        Ok(self.controller.status())
    }
}

/// Closes one interval: read counters, step the ladder, apply. Lock order
/// everywhere: escalator, then engine.
pub fn tick(engine: &Arc<Mutex<Engine>>, esc: &Arc<Mutex<Escalator>>, metrics: Option<&Metrics>) {
    let mut esc = esc.lock().unwrap_or_else(|p| p.into_inner());
    let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
    esc.sync_allowlist(&mut engine);
    match engine.datapath().counters() {
        Ok(counters) => {
            let out = esc.controller.interval(now_ms(), &counters);
            esc.apply(&mut engine, out);
        }
        Err(e) => warn!(error = %e, "cannot read counters for detection"),
    }
    if let Some(m) = metrics {
        let levels = esc.controller.ladder().levels();
        for class in AttackClass::ALL {
            m.escalation()
                .set(class.name(), levels.get(class).number() as i64);
        }
    }
}

/// Every `interval`, close a detection window.
pub async fn interval_loop(
    engine: Arc<Mutex<Engine>>,
    esc: Arc<Mutex<Escalator>>,
    metrics: Option<Arc<Metrics>>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (engine, esc, metrics) = (engine.clone(), esc.clone(), metrics.clone());
        let _ = tokio::task::spawn_blocking(move || tick(&engine, &esc, metrics.as_deref())).await;
    }
}

/// Reads header samples as the kernel writes them and feeds the top-talker
/// tables. Samples are batched per wake-up so the lock is taken once.
pub async fn sample_loop(esc: Arc<Mutex<Escalator>>, ring: RingBuf<MapData>) {
    // SAFETY: the ring buffer owns its map's fd, which stays open and the
    // same for as long as the AsyncFd owns the ring buffer.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the sample ring buffer; top talkers unavailable");
            return;
        }
    };
    let mut batch: Vec<Sample> = Vec::with_capacity(256);
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "sample ring buffer poll failed");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let mut drained = false;
        while batch.len() < 4096 {
            let Some(item) = ring.next() else {
                drained = true;
                break;
            };
            if item.len() >= std::mem::size_of::<Sample>() {
                batch.push(bytemuck::pod_read_unaligned(
                    &item[..std::mem::size_of::<Sample>()],
                ));
            }
        }
        // Only an empty ring may wait for the next wake-up.
        if drained {
            guard.clear_ready();
        }
        if batch.is_empty() {
            continue;
        }
        let mut esc = esc.lock().unwrap_or_else(|p| p.into_inner());
        for s in &batch {
            esc.controller.observe(s);
        }
        drop(esc);
        batch.clear();
    }
}
