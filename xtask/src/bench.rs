//! `cargo xtask bench`: benchmarks against the bare-XDP floor, xdp-filter,
//! nftables and iptables. Not written yet; a later issue fills this in.

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Passed to the benchmarks once they exist.
    #[arg(last = true)]
    pub rest: Vec<String>,
}

pub fn run(_args: &Args) -> Result<()> {
    println!("benchmarks come in a later issue; nothing to run yet");
    Ok(())
}
