//! `cargo xtask`: the project's developer tasks.
//!
//! Each subcommand lives in its own module. Everything a fresh machine needs
//! is done here (see `setup`), so `cargo xtask test` and `cargo xtask demo`
//! are the only two commands a newcomer has to know.

mod bench;
mod build;
mod demo;
mod lab;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for mitigator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: Debian's rustc-web with the BPF core library,
    /// LLVM 22, bpf-linker 0.13.0 and the tools the tests use (needs root).
    ///
    /// Example: `cargo xtask setup --check`
    Setup(setup::Args),
    /// Build the XDP object and the `mitigator` binary (release).
    Build,
    /// Build, check formatting, run clippy and every test.
    ///
    /// Arguments after `--` go to `cargo test`, e.g. `cargo xtask test -- blocklist`.
    Test(test::Args),
    /// Build, then run a narrated lab in network namespaces (needs root).
    Demo(demo::Args),
    /// Benchmarks (not yet).
    Bench(bench::Args),
    /// Lab helper: send a bounded, paced stream of UDP datagrams.
    #[command(hide = true)]
    LabSend(lab::SendArgs),
    /// Lab helper: count UDP datagrams per source address.
    #[command(hide = true)]
    LabListen(lab::ListenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::ensure_cargo_bin_on_path();
    let result = match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::Build => build::run().map(|_| ()),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::LabSend(args) => lab::send(&args),
        Command::LabListen(args) => lab::listen(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_args_after_double_dash_to_cargo_test() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "blocklist", "--nocapture"]).unwrap();
        let Command::Test(args) = cli.command else {
            panic!("not test")
        };
        assert_eq!(args.cargo_test_args, ["blocklist", "--nocapture"]);
    }
}
