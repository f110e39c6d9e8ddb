//! `mitigator top`: the heaviest sources and destinations, live.

use std::{io::IsTerminal, time::Duration};

use super::{print_json, table::Table, OutputArgs, SocketArg};
use crate::{
    client,
    detect::TopReport,
    protocol::{Reply, Request},
};

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// How many entries per table.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub count: usize,
    /// Refresh every second until interrupted (the default on a terminal).
    #[arg(long)]
    pub watch: bool,
    /// Print once and exit, even on a terminal.
    #[arg(long, conflicts_with = "watch")]
    pub once: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub socket: SocketArg,
}

fn fetch(args: &TopArgs) -> anyhow::Result<TopReport> {
    match client::call(&args.socket.socket, &Request::Top { n: args.count })? {
        Reply::Top(t) => Ok(*t),
        _ => anyhow::bail!("unexpected reply from daemon"),
    }
}

pub fn execute(args: TopArgs) -> anyhow::Result<()> {
    let live = args.watch || (!args.once && !args.output.json && std::io::stdout().is_terminal());
    loop {
        let report = fetch(&args)?;
        if args.output.json {
            print_json(&report)?;
        } else if live {
            print!("\x1b[2J\x1b[H{}", render(&report));
        } else {
            print!("{}", render(&report));
        }
        if !live {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn rate(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.1}M", pps / 1e6)
    } else if pps >= 1e3 {
        format!("{:.1}k", pps / 1e3)
    } else {
        format!("{pps:.0}")
    }
}

/// One block per scope (all traffic, then each attack class with traffic):
/// top sources at every aggregation level and top destinations.
pub fn render(r: &TopReport) -> String {
    let mut out = format!(
        "top talkers from {} sampled headers (1 in {}), estimated rates\n",
        r.samples, r.sample_one_in
    );
    for scope in &r.scopes {
        if scope.pps < 0.5 && scope.scope != "all" {
            continue;
        }
        out.push_str(&format!(
            "\n== {}: {} pps, {}bit/s\n",
            scope.scope,
            rate(scope.pps),
            rate(scope.bps)
        ));
        let mut t =
            Table::new(&["level", "source", "pps", "share", "legit share"]).right_align(&[2, 3, 4]);
        for level in &scope.sources {
            for s in &level.sources {
                t.row(vec![
                    level.level.to_string(),
                    s.prefix.to_string(),
                    rate(s.est_pps),
                    format!("{:.1}%", s.share * 100.0),
                    format!("{:.1}%", s.legit_share * 100.0),
                ]);
            }
        }
        out.push_str(&t.render());
        if !scope.destinations.is_empty() {
            let mut d = Table::new(&["destination", "port", "proto", "pps", "share"])
                .right_align(&[1, 3, 4]);
            for dst in &scope.destinations {
                d.row(vec![
                    dst.addr.to_string(),
                    dst.port.to_string(),
                    dst.proto.to_string(),
                    rate(dst.est_pps),
                    format!("{:.1}%", dst.share * 100.0),
                ]);
            }
            out.push('\n');
            out.push_str(&d.render());
        }
    }
    out
}
