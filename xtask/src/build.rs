//! `cargo xtask build`: the XDP object, then the `mitigator` binary that
//! embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{setup, util};

/// What a build produced (absolute paths).
pub struct Artifacts {
    pub object: PathBuf,
    pub binary: PathBuf,
}

pub fn object_path() -> PathBuf {
    util::repo_root().join("target/ebpf/bpfel-unknown-none/release/mitigator")
}

pub fn binary_path() -> PathBuf {
    util::repo_root().join("target/release/mitigator")
}

/// Debian's cargo when present; any cargo works as long as RUSTC points at
/// Debian's rustc, which has the prebuilt BPF `core`.
fn ebpf_cargo() -> Command {
    if Path::new("/usr/bin/cargo").exists() {
        Command::new("/usr/bin/cargo")
    } else {
        Command::new("cargo")
    }
}

/// Build the XDP program (its own workspace, target set in its
/// .cargo/config.toml, linker bpf-linker).
pub fn build_ebpf() -> Result<PathBuf> {
    util::heading("building the XDP program (mitigator-ebpf)");
    let mut cmd = ebpf_cargo();
    cmd.current_dir(util::repo_root().join("mitigator-ebpf"))
        // aya-ebpf uses #![feature(asm_experimental_arch)].
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", "/usr/bin/rustc")
        .args(["build", "--release", "--target-dir", "../target/ebpf"]);
    util::run(&mut cmd).context("building the XDP program failed")?;
    let object = object_path();
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    Ok(object)
}

/// Host cargo with the XDP object's location set, so that build, clippy and
/// test all see the same environment (and build.rs does not rerun).
pub fn host_cargo(object: &Path) -> Command {
    let mut cmd = util::cargo();
    cmd.env("MITIGATOR_EBPF_OBJECT", object);
    cmd
}

pub fn build_all() -> Result<Artifacts> {
    setup::ensure()?;
    let object = build_ebpf()?;
    util::heading("building the mitigator binary");
    util::run(host_cargo(&object).args(["build", "--release", "-p", "mitigator"]))
        .context("building the mitigator binary failed")?;
    let binary = binary_path();
    if !binary.is_file() {
        bail!("the build succeeded but {} is missing", binary.display());
    }
    Ok(Artifacts { object, binary })
}

pub fn run() -> Result<Artifacts> {
    let artifacts = build_all()?;
    println!("\nXDP object: {}", artifacts.object.display());
    println!("binary:     {}", artifacts.binary.display());
    Ok(artifacts)
}
