//! `cargo xtask bench`: mitigator side by side with the bare-XDP floor,
//! xdp-filter, nftables and iptables, in one run. Writes bench/results.md,
//! bench/results.json and bench/main.png. Needs root. Numbers never fail
//! the command: it fails only when it cannot measure at all.
//!
//! See docs/BENCHMARKS.md for what each number means.

mod control;
mod elf;
mod live;
mod mitigator;
mod pkt;
mod plot;
mod prefixes;
mod report;
mod sys;
mod testrun;

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{build, util};

#[derive(clap::Args)]
pub struct Args {
    /// A short run (a few minutes) for smoke tests: fewer repetitions,
    /// shorter floods. Its numbers are noisier; do not publish them.
    #[arg(long)]
    pub quick: bool,
    /// Skip part 1 (BPF_PROG_TEST_RUN per-packet cost).
    #[arg(long)]
    pub skip_testrun: bool,
    /// Skip part 2 (floods over veth between namespaces).
    #[arg(long)]
    pub skip_live: bool,
    /// Skip part 3 (control plane: rule loading, RSS).
    #[arg(long)]
    pub skip_control: bool,
    /// Where to write results.md, results.json and main.png (default: bench/).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Skip `cargo xtask build` (use the artifacts already in target/).
    #[arg(long)]
    pub no_build: bool,
}

/// The median of a non-empty sample (NaN for an empty one).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// A file's modification time, UTC, for the record.
fn mtime(path: &std::path::Path) -> String {
    util::output(
        std::process::Command::new("date")
            .args(["-u", "-r"])
            .arg(path)
            .arg("+%Y-%m-%dT%H:%M:%SZ"),
    )
    .map(|s| format!("built {}", s.trim()))
    .unwrap_or_else(|_| "missing".into())
}

pub fn run(args: &Args) -> Result<()> {
    if !util::is_root() {
        bail!("cargo xtask bench needs root (BPF, network namespaces, XDP)");
    }
    let started = Instant::now();
    let (object_path, binary) = if args.no_build {
        (build::object_path(), build::binary_path())
    } else {
        let a = build::build_all()?;
        (a.object, a.binary)
    };
    let artifacts = format!(
        "{} (XDP object {}, daemon {})",
        if args.no_build {
            "--no-build: as found in target/"
        } else {
            "built by this run"
        },
        mtime(&object_path),
        mtime(&binary)
    );
    let object = std::fs::read(&object_path)
        .with_context(|| format!("reading {}", object_path.display()))?;
    util::catch_interrupts();
    sys::private_mounts()?;
    let machine = sys::Machine::probe();
    let id = format!("{}", std::process::id() % 100_000);
    println!(
        "\nbench on {} ({} CPUs), kernel {}, commit {}, load {:.2}",
        machine.cpu, machine.nproc, machine.kernel, machine.commit, machine.loadavg_start
    );
    if machine.nproc < 2 {
        eprintln!("bench: only one CPU: the flood's generator and receiver will share it");
    }

    let testrun = if args.skip_testrun {
        None
    } else {
        util::heading("part 1: per-packet cost (BPF_PROG_TEST_RUN)");
        let opts = if args.quick {
            testrun::Opts {
                repeat: 200_000,
                rounds: 3,
                calls: 50_000,
                id: id.clone(),
            }
        } else {
            testrun::Opts {
                repeat: 1_000_000,
                rounds: 5,
                calls: 200_000,
                id: id.clone(),
            }
        };
        Some(testrun::run(object.clone(), opts)?)
    };

    let live = if args.skip_live {
        None
    } else {
        util::heading("part 2: floods over veth between namespaces");
        let opts = if args.quick {
            live::Opts {
                seconds: 1.0,
                runs: 3,
                id: id.clone(),
            }
        } else {
            live::Opts {
                seconds: 5.0,
                runs: 5,
                id: id.clone(),
            }
        };
        Some(live::run(&object, opts)?)
    };

    let control = if args.skip_control {
        None
    } else {
        util::heading("part 3: control plane");
        let sizes: &[usize] = if args.quick {
            &[10_000, 100_000]
        } else {
            &[100_000, 1_000_000]
        };
        Some(control::run(&binary, sizes, &id)?)
    };

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| util::repo_root().join("bench"));
    let report = report::Report {
        machine,
        artifacts,
        quick: args.quick,
        testrun,
        live,
        control,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    report.write(&out)?;
    Ok(())
}
