//! `mitigator stats`.

use std::time::Duration;

use super::{print_json, table::Table, OutputArgs, SocketArg};
use crate::{
    client,
    protocol::{Reply, Request, StatsReport},
};

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Refresh every second in place, with rates, until interrupted.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub socket: SocketArg,
}

fn fetch(args: &StatsArgs) -> anyhow::Result<StatsReport> {
    match client::call(&args.socket.socket, &Request::Stats {})? {
        Reply::Stats(s) => Ok(s),
        _ => anyhow::bail!("unexpected reply from daemon"),
    }
}

pub fn execute(args: StatsArgs) -> anyhow::Result<()> {
    if !args.watch {
        let s = fetch(&args)?;
        return if args.output.json {
            print_json(&s)
        } else {
            print!("{}", render(&s, None));
            Ok(())
        };
    }
    let mut previous: Option<StatsReport> = None;
    loop {
        let s = fetch(&args)?;
        if args.output.json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            // Clear the screen and home the cursor: refresh in place.
            print!("\x1b[2J\x1b[H{}", render(&s, previous.as_ref()));
        }
        previous = Some(s);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The human view: totals, then every reason and class, with per-second
/// rates when a previous sample is given.
pub fn render(s: &StatsReport, prev: Option<&StatsReport>) -> String {
    let secs = prev.map(|p| s.at.saturating_sub(p.at).max(1));
    let rate = |now: u64, before: Option<u64>| match (secs, before) {
        (Some(d), Some(b)) => format!("{}", now.saturating_sub(b) / d),
        _ => "-".into(),
    };
    let mut out = format!(
        "interface {}: {} packets, {} passed, {} dropped\n\n",
        s.interface, s.total.packets, s.passed.packets, s.dropped.packets
    );
    for (title, map, prev_map) in [
        ("reason", &s.reasons, prev.map(|p| &p.reasons)),
        ("class", &s.classes, prev.map(|p| &p.classes)),
    ] {
        let mut t = Table::new(&[title, "packets", "bytes", "pps"]).right_align(&[1, 2, 3]);
        for (name, pb) in map {
            let before = prev_map.and_then(|m| m.get(name)).map(|p| p.packets);
            t.row(vec![
                name.clone(),
                pb.packets.to_string(),
                pb.bytes.to_string(),
                rate(pb.packets, before),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }
    out
}
