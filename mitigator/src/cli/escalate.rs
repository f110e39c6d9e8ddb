//! `mitigator escalate CLASS LEVEL|auto`.

use super::{print_json, OutputArgs, SocketArg};
use crate::{
    client,
    protocol::{Reply, Request},
};

#[derive(clap::Args, Debug)]
pub struct EscalateArgs {
    /// Attack class: syn, udp, icmp or frag.
    #[arg(value_parser = parse_class)]
    pub class: String,
    /// 0-4 or observe, rate-limit, defence, auto-block, upstream; `auto`
    /// releases the class back to automatic escalation.
    #[arg(value_parser = parse_level)]
    pub level: String,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub socket: SocketArg,
}

fn parse_class(s: &str) -> Result<String, String> {
    s.parse::<crate::detect::AttackClass>()
        .map(|c| c.name().to_string())
}

fn parse_level(s: &str) -> Result<String, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok("auto".into());
    }
    s.parse::<crate::escalation::Level>()
        .map(|l| l.number().to_string())
}

pub fn execute(args: EscalateArgs) -> anyhow::Result<()> {
    let level = (args.level != "auto").then(|| args.level.clone());
    let request = Request::Escalate {
        class: args.class.clone(),
        level,
    };
    let Reply::Escalation(status) = client::call(&args.socket.socket, &request)? else {
        anyhow::bail!("unexpected reply from daemon");
    };
    if args.output.json {
        return print_json(&status);
    }
    let Some(c) = status.classes.iter().find(|c| c.class.name() == args.class) else {
        anyhow::bail!("the daemon did not report class {}", args.class);
    };
    let how = if c.pinned { "pinned" } else { "automatic" };
    println!(
        "{}: level {} ({}, {how}): {}",
        c.class,
        c.level.number(),
        c.level_name,
        c.defence
    );
    Ok(())
}
