//! `block`, `unblock`, `allow`, `unallow`.

use std::path::PathBuf;

use anyhow::Context;

use super::SocketArg;
use crate::{
    client,
    prefix::parse_prefix,
    protocol::{Reply, Request},
    rules::RuleKind,
};

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// Prefixes: 203.0.113.0/24, 2001:db8::/32, or bare addresses.
    #[arg(required_unless_present = "from_file")]
    pub prefixes: Vec<String>,
    /// Remove the rule automatically after this long (e.g. 90s, 10m, 2h).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Why: shown in `list` and the logs.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Also read prefixes from a file, one per line; `#` starts a comment.
    #[arg(long)]
    pub from_file: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    #[arg(required = true)]
    pub prefixes: Vec<String>,
    #[command(flatten)]
    pub socket: SocketArg,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 90s, 10m or 2h ({e})"))?;
    if d.as_secs() == 0 {
        return Err(format!("'{s}' is shorter than the smallest TTL (1s)"));
    }
    Ok(d)
}

/// Validates every prefix locally, so a typo fails before the daemon is asked.
fn validated(prefixes: Vec<String>) -> anyhow::Result<Vec<String>> {
    for p in &prefixes {
        parse_prefix(p)?;
    }
    Ok(prefixes)
}

fn read_prefix_file(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        parse_prefix(line).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        out.push(line.to_string());
    }
    Ok(out)
}

pub fn add(kind: RuleKind, args: AddArgs) -> anyhow::Result<()> {
    let mut prefixes = validated(args.prefixes)?;
    if let Some(file) = &args.from_file {
        prefixes.extend(read_prefix_file(file)?);
    }
    if prefixes.is_empty() {
        anyhow::bail!("no prefix given");
    }
    let request = Request::Add {
        kind,
        prefixes,
        ttl_secs: args.ttl.map(|d| d.as_secs()),
        reason: args.reason,
    };
    report(client::call(&args.socket.socket, &request)?, kind)
}

pub fn remove(kind: RuleKind, args: RemoveArgs) -> anyhow::Result<()> {
    let request = Request::Remove {
        kind,
        prefixes: validated(args.prefixes)?,
    };
    report(client::call(&args.socket.socket, &request)?, kind)
}

fn report(reply: Reply, kind: RuleKind) -> anyhow::Result<()> {
    match reply {
        Reply::Changed {
            added,
            updated,
            removed,
        } => {
            let what = kind.as_str();
            if removed > 0 {
                println!("{what}: removed {removed} rule(s)");
            } else {
                println!("{what}: added {added}, updated {updated} rule(s)");
            }
            Ok(())
        }
        other => anyhow::bail!("unexpected reply from daemon: {other:?}"),
    }
}
