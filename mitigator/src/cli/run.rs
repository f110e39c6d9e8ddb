//! `mitigator run`.

use std::path::PathBuf;

use crate::{
    daemon::{self, server::AccessPolicy, RunOptions},
    datapath::{AttachMode, DEFAULT_PIN_ROOT},
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Interface to protect.
    #[arg(long)]
    pub iface: String,
    /// Control socket path.
    #[arg(long, env = "MITIGATOR_SOCKET", default_value = super::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where the rule store is kept.
    #[arg(long, default_value = "/var/lib/mitigator")]
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links (one subdirectory per interface).
    #[arg(long, default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// XDP attach mode: auto tries native, then generic (skb) with a warning.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub mode: AttachMode,
    /// Count what would be dropped but pass every packet.
    #[arg(long)]
    pub monitor: bool,
    /// Remove the XDP program and its pins when the daemon stops (default: keep enforcing).
    #[arg(long)]
    pub detach_on_exit: bool,
}

pub fn execute(args: RunArgs) -> anyhow::Result<()> {
    init_logging();
    let opts = RunOptions {
        iface: args.iface,
        socket: args.socket,
        state_dir: args.state_dir,
        pin_root: args.pin_root,
        mode: args.mode,
        monitor: args.monitor,
        detach_on_exit: args.detach_on_exit,
        policy: AccessPolicy::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(opts))
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MITIGATOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
