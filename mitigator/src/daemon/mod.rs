//! `mitigator run`: load or adopt the datapath, restore rules, serve the
//! control socket, expire rules on time, and stop cleanly on a signal.

pub mod engine;
pub mod server;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use mitigator_common::{Config, FLAG_MONITOR};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    datapath::{AttachMode, Datapath, DatapathOptions},
    state::StateDir,
};
use engine::{now_secs, Engine};
use server::AccessPolicy;

pub struct RunOptions {
    pub iface: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub pin_root: PathBuf,
    pub mode: AttachMode,
    pub monitor: bool,
    pub detach_on_exit: bool,
    pub policy: AccessPolicy,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Read the state first: a corrupt file must stop us before we touch anything.
    let state = StateDir::new(&opts.state_dir);
    let store = state.load()?;
    let mut datapath = Datapath::open(&DatapathOptions {
        iface: opts.iface.clone(),
        mode: opts.mode,
        pin_root: opts.pin_root.clone(),
        source_capacity: mitigator_common::DEFAULT_SOURCE_CAPACITY,
    })?;
    let mut config = datapath.config()?;
    config.flags = if opts.monitor {
        config.flags | FLAG_MONITOR
    } else {
        config.flags & !FLAG_MONITOR
    };
    datapath.set_config(Config { ..config })?;
    if opts.monitor {
        warn!("monitor mode: decisions are counted but every packet passes");
    }
    let engine = Engine::new(datapath, store, state, opts.monitor)?;
    let engine = Arc::new(Mutex::new(engine));
    let listener = server::bind(&opts.socket, opts.policy)?;
    info!(
        iface = %opts.iface,
        socket = %opts.socket.display(),
        state_dir = %opts.state_dir.display(),
        "mitigator running"
    );

    let serve = tokio::spawn(server::serve(
        listener,
        engine.clone(),
        opts.policy,
        opts.socket.clone(),
    ));
    let expiry = tokio::spawn(expire_loop(engine.clone()));

    wait_for_shutdown().await?;
    serve.abort();
    expiry.abort();
    let _ = std::fs::remove_file(&opts.socket);

    let _ = serve.await;
    let _ = expiry.await;
    let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
    let datapath = engine.datapath_mut();
    if opts.detach_on_exit {
        datapath.detach_and_unpin()?;
    } else {
        info!(
            iface = %opts.iface,
            "daemon stopping; XDP program and rules stay in force (pinned). Use --detach-on-exit to remove them"
        );
    }
    Ok(())
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
