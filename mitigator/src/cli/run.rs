//! `mitigator run`.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;

use crate::{
    config::{parse_metrics_addr, Overrides, Settings},
    daemon::{self, RunOptions},
    datapath::AttachMode,
};

/// `--metrics-addr`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn metrics_addr_arg(s: &str) -> Result<MetricsAddr, String> {
    parse_metrics_addr(s).map(MetricsAddr)
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Interface to protect.
    #[arg(long, required_unless_present = "check_config")]
    pub iface: Option<String>,
    /// Configuration file (TOML); see packaging/mitigator.toml. Flags win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Control socket path [default: /run/mitigator/mitigator.sock].
    #[arg(long, env = "MITIGATOR_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Where the rule store is kept [default: /var/lib/mitigator].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Prometheus metrics address (host:port), or `off` [default: 127.0.0.1:9947].
    #[arg(long, value_parser = metrics_addr_arg)]
    pub metrics_addr: Option<MetricsAddr>,
    /// bpffs directory for pinned maps and links, one subdirectory per
    /// interface [default: /sys/fs/bpf/mitigator].
    #[arg(long)]
    pub pin_root: Option<PathBuf>,
    /// XDP attach mode: auto tries native, then generic (skb) with a warning [default: auto].
    #[arg(long, value_enum)]
    pub mode: Option<AttachMode>,
    /// Count what would be dropped but pass every packet.
    #[arg(long)]
    pub monitor: bool,
    /// Remove the XDP program and its pins when the daemon stops (default: keep enforcing).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Validate the configuration (file and flags), print one line and exit:
    /// 0 when valid, 1 when not. Attaches nothing, creates no socket.
    #[arg(long)]
    pub check_config: bool,
}

impl RunArgs {
    /// The file's settings with the flags applied.
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = Settings::load_or_default(self.config.as_deref())?;
        settings.apply(Overrides {
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            pin_root: self.pin_root.clone(),
            metrics_addr: self.metrics_addr.map(|m| m.0),
            mode: self.mode,
            monitor: self.monitor,
        });
        Ok(settings)
    }
}

pub fn execute(args: RunArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    if args.check_config {
        if let Some(iface) = &args.iface {
            nix::net::if_::if_nametoindex(iface.as_str())
                .map_err(|_| anyhow::anyhow!("unknown network interface '{iface}'"))?;
        }
        println!("config {}: OK ({})", settings.label(), settings.summary());
        return Ok(());
    }
    let iface = args.iface.context("--iface is required")?;
    init_logging();
    let opts = RunOptions {
        iface,
        settings,
        detach_on_exit: args.detach_on_exit,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(opts))
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("MITIGATOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
