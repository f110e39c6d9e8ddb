//! `mitigator status`.

use super::{fmt_time, print_json, OutputArgs, SocketArg};
use crate::{
    client,
    protocol::{Reply, Request},
};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn execute(args: StatusArgs) -> anyhow::Result<()> {
    let Reply::Status(s) = client::call(&args.socket.socket, &Request::Status {})? else {
        anyhow::bail!("unexpected reply from daemon");
    };
    if args.output.json {
        return print_json(&s);
    }
    println!(
        "interface    {} (XDP {} mode{})",
        s.interface,
        s.attach_mode,
        if s.adopted {
            ", adopted from a previous daemon"
        } else {
            ""
        }
    );
    println!(
        "mode         {}",
        if s.monitor {
            "monitor (dry run: nothing is dropped)"
        } else {
            "enforcing"
        }
    );
    println!(
        "daemon       pid {}, up since {}",
        s.pid,
        fmt_time(s.started)
    );
    println!(
        "rules        {} block, {} allow",
        s.block_rules, s.allow_rules
    );
    println!("state file   {}", s.state_file);
    if let Some(esc) = &s.escalation {
        print!("\n{}", render_escalation(esc));
    }
    Ok(())
}

/// Per attack class: level, what it does, since when, why, pinned or not.
fn render_escalation(esc: &crate::escalation::EscalationStatus) -> String {
    let mut t = super::table::Table::new(&["class", "level", "defence", "since", "pinned", "why"]);
    for c in &esc.classes {
        t.row(vec![
            c.class.to_string(),
            format!("{} {}", c.level.number(), c.level_name),
            c.defence.clone(),
            fmt_time(c.since),
            if c.pinned { "pinned" } else { "auto" }.into(),
            c.why.clone(),
        ]);
    }
    let dry = if esc.dry_run {
        " (monitor: dry run)"
    } else {
        ""
    };
    format!(
        "escalation{dry}: {} of at most {} auto-blocks in force\n{}",
        esc.auto_blocks,
        esc.max_auto_blocks,
        t.render()
    )
}
