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
    let Reply::Status(s) = client::call(&args.socket.socket, &Request::Status)? else {
        anyhow::bail!("unexpected reply from daemon");
    };
    if args.output.json {
        return print_json(&s);
    }
    println!("interface    {} (XDP {} mode{})", s.interface, s.attach_mode, if s.adopted { ", adopted from a previous daemon" } else { "" });
    println!("mode         {}", if s.monitor { "monitor (dry run: nothing is dropped)" } else { "enforcing" });
    println!("daemon       pid {}, up since {}", s.pid, fmt_time(s.started));
    println!("rules        {} block, {} allow", s.block_rules, s.allow_rules);
    println!("state file   {}", s.state_file);
    Ok(())
}
