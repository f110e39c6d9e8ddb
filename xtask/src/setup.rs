//! `cargo xtask setup`: detect what is missing and install only that.
//!
//! The XDP program is built with Debian's rustc-web (LLVM 22), which ships a
//! prebuilt `core` for `bpfel-unknown-none`, and linked by bpf-linker 0.13.0
//! built against the same LLVM (see ../shared/TOOLCHAIN.md). The tests and
//! benchmarks use a handful of networking tools.

use std::process::Command;

use anyhow::{bail, Result};

use crate::util;

/// Debian packages the project needs, with what each is for.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "rustc 1.96 with LLVM 22, builds the XDP program",
    ),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core/alloc for bpfel-unknown-none",
    ),
    ("llvm-22-dev", "LLVM 22, to build bpf-linker"),
    ("libpolly-22-dev", "LLVM 22 Polly, to build bpf-linker"),
    (
        "iproute2",
        "ip: network namespaces and veth pairs for tests and the demo",
    ),
    ("hping3", "SYN/UDP flood generator for tests"),
    (
        "xdp-tools",
        "xdp-filter, the comparison point for benchmarks",
    ),
    ("bpftool", "inspect loaded programs and maps"),
    ("nftables", "nft ingress drop, a benchmark baseline"),
    ("iptables", "iptables raw drop, a benchmark baseline"),
    ("tcpdump", "packet capture in tests"),
    ("python3", "helper scripts in tests and benchmarks"),
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

#[derive(clap::Args)]
pub struct Args {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    check: bool,
}

/// What a check found missing.
#[derive(Default)]
pub struct Missing {
    pub apt: Vec<&'static str>,
    /// Why bpf-linker needs installing, if it does.
    pub bpf_linker: Option<String>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.apt.is_empty() && self.bpf_linker.is_none()
    }
}

fn apt_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed"
        })
        .unwrap_or(false)
}

/// The installed bpf-linker version, if any.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    // "bpf-linker 0.13.0"
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_string)
}

/// Look at the machine; install nothing.
pub fn check(verbose: bool) -> Missing {
    let mut missing = Missing::default();
    for (package, purpose) in APT_PACKAGES {
        let present = apt_installed(package);
        if verbose {
            let mark = if present { "ok     " } else { "MISSING" };
            println!("  {mark} {package:<25} {purpose}");
        }
        if !present {
            missing.apt.push(package);
        }
    }
    let linker = bpf_linker_version();
    match linker.as_deref() {
        Some(BPF_LINKER_VERSION) => {}
        Some(other) => {
            missing.bpf_linker = Some(format!(
                "bpf-linker {other} is installed, {BPF_LINKER_VERSION} is needed"
            ))
        }
        None => missing.bpf_linker = Some("bpf-linker is not installed".into()),
    }
    if verbose {
        let mark = if missing.bpf_linker.is_none() {
            "ok     "
        } else {
            "MISSING"
        };
        let found = linker.map(|v| format!("(found {v})")).unwrap_or_default();
        println!(
            "  {mark} {:<25} links the XDP program {found}",
            format!("bpf-linker {BPF_LINKER_VERSION}")
        );
    }
    missing
}

fn apt_commands(missing: &Missing) -> Vec<Command> {
    let mut cmds = Vec::new();
    if !missing.apt.is_empty() {
        let mut update = Command::new("apt-get");
        update
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive");
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y"])
            .args(&missing.apt)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmds.push(update);
        cmds.push(install);
    }
    cmds
}

fn bpf_linker_command() -> Command {
    // Built against LLVM 22 so it matches rustc-web; without LLVM_PREFIX the
    // build looks in /usr/lib64 and fails with "unable to find -lLLVM".
    let mut cmd = util::cargo();
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ])
    .args(["--no-default-features", "--features", "llvm-22"])
    .env("LLVM_PREFIX", LLVM_PREFIX);
    cmd
}

/// Make sure everything is present, installing what is missing (as root).
/// Quiet when nothing is missing.
pub fn ensure() -> Result<()> {
    let missing = check(false);
    if missing.is_empty() {
        println!("setup: all build and test dependencies are present");
        return Ok(());
    }
    install(&missing)
}

fn install(missing: &Missing) -> Result<()> {
    let mut plan = apt_commands(missing);
    if missing.bpf_linker.is_some() {
        plan.push(bpf_linker_command());
    }
    if !util::is_root() {
        eprintln!("setup: missing:");
        for package in &missing.apt {
            eprintln!("  apt package {package}");
        }
        if let Some(why) = &missing.bpf_linker {
            eprintln!("  {why}");
        }
        eprintln!("setup: as root, this would run:");
        for cmd in &plan {
            eprintln!("  {}", util::render(cmd));
        }
        bail!("missing dependencies and not root: run `cargo xtask setup` as root");
    }
    if !missing.apt.is_empty() {
        util::heading(&format!(
            "installing apt packages: {}",
            missing.apt.join(" ")
        ));
    }
    if let Some(why) = &missing.bpf_linker {
        println!("setup: {why}; it will be built (about a minute)");
    }
    for mut cmd in plan {
        util::run(&mut cmd)?;
    }
    let after = check(false);
    if !after.is_empty() {
        let mut left: Vec<String> = after.apt.iter().map(|p| p.to_string()).collect();
        left.extend(after.bpf_linker);
        bail!("still missing after installing: {}", left.join(", "));
    }
    println!("setup: done, everything is present now");
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    util::heading("checking build and test dependencies");
    let missing = check(true);

    let problems = util::kernel_problems();
    match util::kernel_version() {
        Some((_, _, release)) if problems.is_empty() => {
            println!("  ok      kernel {release} with BTF")
        }
        _ => {
            for p in &problems {
                println!("  WARNING {p}: XDP tests and the demo need Linux >= 5.15 with BTF");
            }
        }
    }

    if missing.is_empty() {
        println!("setup: everything is present, nothing to do");
        return Ok(());
    }
    if args.check {
        bail!("some dependencies are missing (run `cargo xtask setup` as root to install them)");
    }
    install(&missing)
}
