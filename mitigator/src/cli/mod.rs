//! The command line: one module per subcommand, clap derive types here.

mod escalate;
mod list;
mod rules;
mod run;
mod stats;
mod status;
pub mod table;
mod top;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::rules::RuleKind;

pub const DEFAULT_SOCKET: &str = "/run/mitigator/mitigator.sock";

#[derive(Parser, Debug)]
#[command(
    name = "mitigator",
    version,
    about = "XDP flood mitigator: drops SYN/UDP floods and blocked prefixes at line rate",
    after_help = "Examples:\n  mitigator run --iface eth0\n  mitigator block 203.0.113.0/24 --ttl 2h --reason 'udp flood'\n  mitigator unblock 203.0.113.0/24\n  mitigator stats --watch"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How client commands reach the daemon.
#[derive(clap::Args, Debug, Clone)]
pub struct SocketArg {
    /// Control socket of the daemon.
    #[arg(long, env = "MITIGATOR_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: attach XDP to an interface and serve the control socket.
    ///
    /// Example: mitigator run --iface eth0 --state-dir /var/lib/mitigator
    Run(run::RunArgs),
    /// Block source prefixes (IPv4/IPv6 CIDR; a bare address is a /32 or /128).
    ///
    /// Example: mitigator block 198.51.100.0/24 2001:db8:bad::/48 --ttl 1h --reason 'syn flood'
    Block(rules::AddArgs),
    /// Remove block rules.
    ///
    /// Example: mitigator unblock 198.51.100.0/24
    Unblock(rules::RemoveArgs),
    /// Always pass these source prefixes (wins over any block rule).
    ///
    /// Example: mitigator allow 192.0.2.10 --reason monitoring
    Allow(rules::AddArgs),
    /// Remove allow rules.
    Unallow(rules::RemoveArgs),
    /// List every rule with its source, reason, expiry and hits.
    List(list::ListArgs),
    /// Packet and byte counters by verdict reason and traffic class.
    Stats(stats::StatsArgs),
    /// What the daemon is doing: interface, attach mode, rule counts.
    Status(status::StatusArgs),
    /// Heaviest sources (/32, /24, /128, /64, /48) and destinations under attack, from sampled headers.
    ///
    /// Example: mitigator top -n 20
    Top(top::TopArgs),
    /// Pin an attack class's escalation level, or give it back to the automatic ladder.
    ///
    /// Levels: 0 observe, 1 rate-limit, 2 defence (SYN cookies, amplification drop, ...),
    /// 3 auto-block, 4 upstream. Example: mitigator escalate syn 2; mitigator escalate syn auto
    Escalate(escalate::EscalateArgs),
}

impl Cli {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run::execute(args),
            Command::Block(args) => rules::add(RuleKind::Block, args),
            Command::Unblock(args) => rules::remove(RuleKind::Block, args),
            Command::Allow(args) => rules::add(RuleKind::Allow, args),
            Command::Unallow(args) => rules::remove(RuleKind::Allow, args),
            Command::List(args) => list::execute(args),
            Command::Stats(args) => stats::execute(args),
            Command::Status(args) => status::execute(args),
            Command::Top(args) => top::execute(args),
            Command::Escalate(args) => escalate::execute(args),
        }
    }
}

/// Prints a value as one JSON document on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Formats a unix-seconds timestamp as RFC 3339 (UTC).
pub fn fmt_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
