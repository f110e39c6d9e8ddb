//! `cargo xtask test`: everything CI runs, in order.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{build, util};

#[derive(clap::Args)]
pub struct Args {
    /// Passed to `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    // Setup and build are fatal: nothing after them means anything without.
    let artifacts = match build::build_all() {
        Ok(a) => a,
        Err(e) => bail!("step `build` failed: {e:#}"),
    };
    let object = &artifacts.object;

    let mut steps: Vec<(&str, Command)> = Vec::new();

    let mut fmt = util::cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    steps.push(("fmt", fmt));

    // The eBPF crate is its own workspace. Only formatting is checked there:
    // clippy would have to compile it for bpfel-unknown-none with Debian's
    // rustc and bpf-linker, and rustup's clippy has no core for that target.
    let mut fmt_ebpf = util::cargo();
    fmt_ebpf
        .current_dir(util::repo_root().join("mitigator-ebpf"))
        .args(["fmt", "--", "--check"]);
    steps.push(("fmt (mitigator-ebpf)", fmt_ebpf));

    let mut clippy = build::host_cargo(object);
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    steps.push(("clippy", clippy));

    let mut test = build::host_cargo(object);
    test.env("MITIGATOR_BIN", &artifacts.binary)
        // Every test binary runs even after one fails: CI shows all failures.
        .args(["test", "--workspace", "--release", "--no-fail-fast"]);
    if !args.cargo_test_args.is_empty() {
        test.arg("--").args(&args.cargo_test_args);
    }
    steps.push(("cargo test", test));

    if !util::is_root() {
        println!(
            "\nNOTE: not running as root: privileged tests (loading and attaching XDP, \
             network namespaces, BPF_PROG_TEST_RUN) will be skipped."
        );
    }

    let mut failed = Vec::new();
    for (name, mut cmd) in steps {
        util::heading(name);
        if let Err(e) = util::run(&mut cmd) {
            eprintln!("step `{name}` failed: {e:#}");
            failed.push(name);
        }
    }

    if !failed.is_empty() {
        bail!("failed steps: {}", failed.join(", "));
    }
    println!("\nall steps passed: build, fmt, clippy, tests");
    if !util::is_root() {
        println!("(privileged tests were skipped: not root)");
    }
    Ok(())
}
