//! `mitigator list`.

use super::{fmt_time, print_json, table::Table, OutputArgs, SocketArg};
use crate::{
    client,
    protocol::{Reply, Request},
};

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn execute(args: ListArgs) -> anyhow::Result<()> {
    let Reply::Rules { rules } = client::call(&args.socket.socket, &Request::List {})? else {
        anyhow::bail!("unexpected reply from daemon");
    };
    if args.output.json {
        return print_json(&serde_json::json!({ "rules": rules }));
    }
    let mut t = Table::new(&[
        "prefix", "kind", "source", "reason", "created", "expires", "packets", "bytes",
    ])
    .right_align(&[6, 7]);
    for r in &rules {
        t.row(vec![
            r.rule.prefix.to_string(),
            r.rule.kind.as_str().into(),
            r.rule.source.as_str().into(),
            r.rule.reason.clone(),
            fmt_time(r.rule.created),
            r.rule.expires.map_or("never".into(), fmt_time),
            r.packets.to_string(),
            r.bytes.to_string(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}
