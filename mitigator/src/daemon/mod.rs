//! `mitigator run`: load or adopt the datapath, apply the configuration,
//! restore rules, serve the control socket and the metrics, expire rules on
//! time, and stop cleanly on a signal.

pub mod engine;
pub mod escalator;
pub mod server;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use ipnet::IpNet;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    config::Settings,
    datapath::{Datapath, DatapathOptions, MapFill},
    metrics::{self, Adaptive, CounterSample, Metrics, RuleCount, Snapshot},
    protocol::{Reply, Request},
    rules::{RuleKind, RuleSource},
    state::StateDir,
    sysctl::SysctlGuard,
};
use engine::{now_secs, Caller, Engine};
use escalator::Escalator;
use server::AccessPolicy;

/// How often detection closes a window of rates and the ladder steps.
const DETECT_INTERVAL: Duration = Duration::from_secs(1);

/// The reason given to allow rules made from `[allowlist] prefixes`; rules
/// with exactly this reason are the config's to add and remove.
pub const CONFIG_ALLOW_REASON: &str = "config allowlist";

pub struct RunOptions {
    pub iface: String,
    /// The validated configuration, command-line flags applied.
    pub settings: Settings,
    pub detach_on_exit: bool,
}

/// The daemon itself, as the caller of requests it makes on its own.
fn own_caller() -> Caller {
    Caller {
        uid: nix::unistd::geteuid().as_raw(),
        pid: Some(std::process::id() as i32),
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let s = &opts.settings;
    server::check_not_running(&s.socket)?;
    if nix::net::if_::if_nametoindex(opts.iface.as_str()).is_err() {
        return Err(crate::datapath::DatapathError::UnknownInterface(opts.iface.clone()).into());
    }
    // Claim the metrics port before touching anything (served later).
    let metrics_listener = match s.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    // Read the state first: a corrupt file must stop us before we touch anything.
    let state = StateDir::new(&s.state_dir);
    let store = state.load()?;
    let mut datapath = Datapath::open(&DatapathOptions {
        iface: opts.iface.clone(),
        mode: s.mode,
        pin_root: s.pin_root.clone(),
        source_capacity: s.tracked_sources,
    })?;
    let (config, ports) = s.to_datapath();
    datapath.set_config(config)?;
    datapath.set_port_flags(&ports)?;
    if s.monitor {
        warn!("monitor mode: decisions are counted but every packet passes");
    }
    // XDP SYN cookies use the kernel's cookie code, which answers XDP only
    // with net.ipv4.tcp_syncookies = 2: set while the defence is on. (When
    // escalation switches cookies on at run time it must hold such a guard.)
    let mut syncookies = if s.defences.syn_cookies {
        SysctlGuard::enable_syncookies()
            .map_err(|e| warn!(error = %e, "cannot set net.ipv4.tcp_syncookies = 2; SYN cookies from XDP will not answer"))
            .ok()
    } else {
        None
    };
    let samples = datapath.take_samples();
    let mut engine = Engine::new(datapath, store, state, s.monitor)?;
    apply_allowlist(&mut engine, s)?;
    let escalator = Arc::new(Mutex::new(Escalator::new(escalation_controller(
        &mut engine,
        s,
        config,
    )?)));
    let started = now_secs();
    let engine = Arc::new(Mutex::new(engine));

    // Metrics are served from before the control socket answers.
    let policy = AccessPolicy {
        group: s.socket_group.as_ref().map(|g| g.gid),
    };
    let listener = server::bind(&s.socket, policy)?;
    // The registry outlives its server task: the escalation loop (issue 5)
    // sets `metrics.escalation()` levels as the ladder moves.
    let metrics: Option<Arc<Metrics>> = metrics_listener.as_ref().map(|_| {
        let source = Arc::new(EngineSource {
            engine: engine.clone(),
            slow: Adaptive::default(),
        });
        Arc::new(Metrics::new(source, started as f64))
    });
    let metrics_task = metrics_listener
        .zip(metrics.clone())
        .map(|(listener, metrics)| {
            if let Ok(addr) = listener.local_addr() {
                info!(addr = %addr, "serving Prometheus metrics at /metrics");
            }
            tokio::spawn(metrics::serve(listener, metrics))
        });
    info!(
        iface = %opts.iface,
        config = %s.label(),
        socket = %s.socket.display(),
        socket_group = s.socket_group.as_ref().map(|g| g.spec.as_str()),
        state_dir = %s.state_dir.display(),
        settings = %s.summary(),
        "mitigator running"
    );

    let serve = tokio::spawn(server::serve(
        listener,
        engine.clone(),
        escalator.clone(),
        policy,
        s.socket.clone(),
    ));
    let expiry = tokio::spawn(expire_loop(engine.clone()));
    let detect = tokio::spawn(escalator::interval_loop(
        engine.clone(),
        escalator.clone(),
        metrics.clone(),
        DETECT_INTERVAL,
    ));
    let sampler = samples.map(|ring| tokio::spawn(escalator::sample_loop(escalator.clone(), ring)));

    wait_for_shutdown().await?;
    serve.abort();
    expiry.abort();
    detect.abort();
    if let Some(t) = &sampler {
        t.abort();
    }
    if let Some(t) = &metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&s.socket);

    let _ = serve.await;
    let _ = expiry.await;
    let _ = detect.await;
    if let Some(t) = sampler {
        let _ = t.await;
    }
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let mut escalator = escalator.lock().unwrap_or_else(|p| p.into_inner());
    let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
    let datapath = engine.datapath_mut();
    if opts.detach_on_exit {
        datapath.detach_and_unpin()?;
        if let Some(g) = syncookies.as_mut() {
            g.restore();
        }
        escalator.restore_sysctl();
    } else {
        // The program keeps answering with cookies: keep the sysctl too.
        std::mem::forget(syncookies.take());
        escalator.forget_sysctl();
        info!(
            iface = %opts.iface,
            "daemon stopping; XDP program and rules stay in force (pinned). Use --detach-on-exit to remove them"
        );
    }
    Ok(())
}

/// The detection and escalation controller, built from the settings: the
/// configured datapath config is the base escalation adds to, and every
/// allowlisted prefix is out of bounds for auto-blocks.
fn escalation_controller(
    engine: &mut Engine,
    s: &Settings,
    base: mitigator_common::Config,
) -> anyhow::Result<crate::escalation::Controller> {
    let mut cfg = s.escalation.clone();
    // A daemon in monitor mode escalates in monitor mode too.
    cfg.monitor |= s.monitor;
    Ok(crate::escalation::Controller::new(
        &s.detect,
        cfg,
        base,
        allow_prefixes(engine)?,
        escalator::now_ms(),
    ))
}

/// Every allowlisted prefix (config and operator rules), from the store:
/// no map walk, so cheap with a million block rules.
pub fn allow_prefixes(engine: &mut Engine) -> anyhow::Result<Vec<IpNet>> {
    Ok(engine
        .store()
        .iter()
        .filter(|r| r.kind == RuleKind::Allow)
        .map(|r| r.prefix)
        .collect())
}

/// Makes the allow rules with reason `CONFIG_ALLOW_REASON` match
/// `[allowlist] prefixes`: adds what is missing (a prefix already allowed
/// by an operator rule is left as it is) and removes what the file no
/// longer lists.
fn apply_allowlist(engine: &mut Engine, s: &Settings) -> anyhow::Result<()> {
    let caller = own_caller();
    let allow_rules: Vec<_> = engine
        .store()
        .iter()
        .filter(|r| r.kind == RuleKind::Allow)
        .cloned()
        .collect();
    let allowed: HashSet<IpNet> = allow_rules.iter().map(|r| r.prefix).collect();
    let stale: Vec<String> = allow_rules
        .iter()
        .filter(|r| r.reason == CONFIG_ALLOW_REASON && !s.allowlist.contains(&r.prefix))
        .map(|r| r.prefix.to_string())
        .collect();
    let missing: Vec<String> = s
        .allowlist
        .iter()
        .filter(|n| !allowed.contains(n))
        .map(|n| n.to_string())
        .collect();
    if !stale.is_empty() {
        engine
            .handle(
                Request::Remove {
                    kind: RuleKind::Allow,
                    prefixes: stale.clone(),
                },
                caller,
            )
            .map_err(|e| anyhow::anyhow!("config {}: allowlist: {e}", s.label()))?;
    }
    if !missing.is_empty() {
        engine
            .handle(
                Request::Add {
                    kind: RuleKind::Allow,
                    prefixes: missing.clone(),
                    ttl_secs: None,
                    reason: CONFIG_ALLOW_REASON.into(),
                },
                caller,
            )
            .map_err(|e| anyhow::anyhow!("config {}: allowlist.prefixes: {e}", s.label()))?;
    }
    info!(
        prefixes = s.allowlist.len(),
        added = missing.len(),
        removed = stale.len(),
        "allowlist from the config applied"
    );
    Ok(())
}

/// Scrape-time numbers from the engine. Counters and status are read on
/// every scrape; rule counts by source and map fill walk the maps, so they
/// are reused for a while when the walk is slow (a million rules).
struct EngineSource {
    engine: Arc<Mutex<Engine>>,
    slow: Adaptive<(Vec<RuleCount>, Vec<MapFill>)>,
}

impl metrics::Source for EngineSource {
    fn snapshot(&self) -> Result<Snapshot, String> {
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let caller = own_caller();
        let Reply::Status(status) = engine.handle(Request::Status {}, caller)? else {
            return Err("unexpected status reply".into());
        };
        let counters = engine
            .datapath()
            .counters()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(reason, class, c)| CounterSample {
                reason: reason.name(),
                class: class.name(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        let events = engine.datapath().events().ok();
        let (rules, maps) = self.slow.get(|| {
            let mut counts = Vec::new();
            for kind in [RuleKind::Block, RuleKind::Allow] {
                for source in [RuleSource::Operator, RuleSource::Auto] {
                    let count = engine
                        .store()
                        .iter()
                        .filter(|r| r.kind == kind && r.source == source)
                        .count() as u64;
                    counts.push(RuleCount {
                        kind: kind.as_str(),
                        source: source.as_str(),
                        count,
                    });
                }
            }
            let maps = engine.datapath().map_fill().map_err(|e| e.to_string())?;
            Ok((counts, maps))
        })?;
        Ok(Snapshot {
            interface: status.interface,
            attach_mode: status.attach_mode,
            monitor: status.monitor,
            counters,
            events,
            rules,
            maps,
        })
    }
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}

/// Wakes at least every 250 ms so a rule goes within a second of its expiry.
async fn expire_loop(engine: Arc<Mutex<Engine>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = now_secs();
        let engine = engine.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
            if engine.next_expiry().is_some_and(|t| t <= now) {
                engine.expire(now)
            } else {
                Ok(())
            }
        })
        .await;
        if let Ok(Err(e)) = result {
            warn!(error = %e, "expiring rules failed; will retry");
        }
    }
}
