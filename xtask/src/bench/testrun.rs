//! Part 1: per-packet cost with BPF_PROG_TEST_RUN, the same frames through
//! the bare XDP_DROP floor, xdp-filter (Debian's xdp-tools) and mitigator.
//!
//! Everything runs on one thread that has joined a namespace of its own,
//! because the kernel runs a test-run XDP program "on" the loopback device
//! of the calling thread's namespace: that is where mitigator's socket
//! lookups for SYN cookies find the listener and the established
//! connection the bench opens there.

use std::{
    net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use mitigator_common::Config;

use super::{
    elf::{Tiny, XDP_DROP},
    median,
    mitigator::{full_config, udp_limited_config, Mitigator, COOKIE_PORT},
    pkt::{linux_syn_options, spoof, Frame, L3, L4, TCP_ACK, TCP_SYN},
    prefixes::{self, BLOCKED_V4, BLOCKED_V6},
    sys::{self, Netns},
};
use crate::util;

pub struct Opts {
    /// `repeat` of each timed test run.
    pub repeat: u32,
    /// Timed runs per (class, program), interleaved; the median is reported.
    pub rounds: usize,
    /// For classes the program rewrites (SYN → SYN-ACK): calls of repeat 1 per round.
    pub calls: u32,
    pub id: String,
}

/// How a class is timed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One test run with `repeat` = N; the kernel reports the mean.
    Repeat,
    /// N test runs with `repeat` = 1, averaged: used when the program
    /// rewrites the frame in place (the kernel reuses the same buffer for
    /// every repetition, so the second repetition would see the SYN-ACK).
    Calls,
}

#[derive(Clone, Copy)]
enum Inst {
    K1,
    K100,
    M1,
    Empty,
}

struct Class {
    id: &'static str,
    label: &'static str,
    frame: Vec<u8>,
    method: Method,
    inst: Inst,
    config: Config,
    /// mitigator's intended verdict.
    expect: u32,
}

pub struct Row {
    pub id: &'static str,
    pub label: &'static str,
    pub frame_len: usize,
    pub method: String,
    pub floor_ns: f64,
    pub xdp_filter_ns: Option<f64>,
    pub mitigator_ns: f64,
    pub verdicts: [String; 3],
    pub note: String,
}

pub struct Results {
    pub rows: Vec<Row>,
    pub repeat: u32,
    pub rounds: usize,
    pub calls: u32,
    pub xdp_filter: String,
    pub load_times: Vec<(String, f64)>,
    /// Clean UDP through mitigator with more and more switched on.
    pub ablation: Vec<(String, f64)>,
}

/// Clean UDP with the defences added one at a time: where the time goes.
fn ablation() -> Vec<(&'static str, Inst, Config)> {
    use mitigator_common::{FLAG_AMP_DROP, FLAG_RATE_LIMIT, FLAG_SYN_COOKIES};
    let full = full_config();
    let with = |flags| Config { flags, ..full };
    vec![
        ("empty tries, no defences (flags 0)", Inst::Empty, with(0)),
        (
            "+ 1M IPv4 prefixes in the blocklist (lookup misses)",
            Inst::M1,
            with(0),
        ),
        ("+ per-source rate limits", Inst::M1, with(FLAG_RATE_LIMIT)),
        (
            "+ amplification drop and SYN-cookie flags",
            Inst::M1,
            with(FLAG_RATE_LIMIT | FLAG_AMP_DROP | FLAG_SYN_COOKIES),
        ),
        (
            "+ UDP per-port cap (= the full configuration)",
            Inst::M1,
            full,
        ),
    ]
}

pub fn verdict_name(v: u32) -> String {
    match v {
        0 => "ABORTED".into(),
        1 => "DROP".into(),
        2 => "PASS".into(),
        3 => "TX".into(),
        4 => "REDIRECT".into(),
        n => format!("{n}"),
    }
}

/// xdp-filter loaded by its own CLI on an idle veth, configured with its
/// own CLI to drop the blocked sources, and opened by aya from a pin made
/// with bpftool: the exact program and maps a user of xdp-filter gets.
struct XdpFilter {
    prog: Xdp,
    name: String,
    ns_path: String,
    iface: String,
}

impl XdpFilter {
    fn setup(ns: &Netns, iface: &str, id: &str) -> Result<Self> {
        if !util::on_path("xdp-filter") || !util::on_path("bpftool") {
            bail!("xdp-filter or bpftool is not installed (apt-get install xdp-tools bpftool)");
        }
        ns.run("xdp-filter", &["load", iface, "-m", "native"])
            .context("xdp-filter load")?;
        let me = Self::attached(ns, iface, id);
        if me.is_err() {
            let _ = ns.run("xdp-filter", &["unload", iface]);
        }
        me
    }

    fn attached(ns: &Netns, iface: &str, id: &str) -> Result<Self> {
        ns.run("xdp-filter", &["ip", &BLOCKED_V4.to_string(), "-m", "src"])?;
        ns.run("xdp-filter", &["ip", &BLOCKED_V6.to_string(), "-m", "src"])?;
        let prog_id = ns
            .xdp_prog_id(iface)?
            .ok_or_else(|| anyhow!("xdp-filter loaded but no XDP program on {iface}"))?;
        let pin = PathBuf::from(format!("/sys/fs/bpf/mb-bench-{id}-xdpfilter"));
        let _ = std::fs::remove_file(&pin);
        util::output(
            Command::new("bpftool")
                .args(["prog", "pin", "id", &prog_id.to_string()])
                .arg(&pin),
        )?;
        let prog = Xdp::from_pin(&pin, XdpAttachType::Interface)
            .context("opening the pinned xdp-filter program")?;
        let _ = std::fs::remove_file(&pin);
        let info = util::output(Command::new("bpftool").args([
            "prog",
            "show",
            "id",
            &prog_id.to_string(),
        ]))
        .unwrap_or_default();
        let name = info
            .split_whitespace()
            .skip_while(|w| *w != "name")
            .nth(1)
            .unwrap_or("?")
            .to_string();
        Ok(Self {
            prog,
            name,
            ns_path: ns.path(),
            iface: iface.to_string(),
        })
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = util::capture(
            Command::new("nsenter")
                .arg(format!("--net={}", self.ns_path))
                .args(["xdp-filter", "unload", &self.iface]),
        );
    }
}

fn run_once(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as f64))
}

/// Mean ns per packet for one timed measurement.
fn time(prog: &Xdp, frame: &[u8], method: Method, opts: &Opts) -> Result<f64> {
    match method {
        Method::Repeat => Ok(run_once(prog, frame, opts.repeat)?.1),
        Method::Calls => {
            // A different source on every call (65,536 in rotation).
            let mut f = frame.to_vec();
            let mut total = 0.0;
            for i in 0..opts.calls {
                spoof(&mut f, i as u16);
                total += run_once(prog, &f, 1)?.1;
            }
            Ok(total / opts.calls as f64)
        }
    }
}

/// Warm up, then the verdict of the next packet.
fn warm_verdict(prog: &Xdp, frame: &[u8]) -> Result<u32> {
    run_once(prog, frame, 1000)?;
    Ok(run_once(prog, frame, 1)?.0)
}

fn classes() -> Vec<Class> {
    let lo: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    let v6_src: Ipv6Addr = "2001:db8:99::2".parse().unwrap();
    let v6_dst: Ipv6Addr = "2001:db8:99::1".parse().unwrap();
    let full = full_config();
    let udp = |src: Ipv4Addr, vlan| Frame::udp64(L3::V4(src, lo), 40000, 5201, vlan).build();
    let syn = Frame::new(
        L3::V4(Ipv4Addr::new(10, 99, 0, 5), lo),
        L4::Tcp {
            sport: 41000,
            dport: COOKIE_PORT,
            flags: TCP_SYN,
            seq: 1,
            ack: 0,
            options: linux_syn_options(),
        },
    )
    .build();
    vec![
        Class {
            id: "tcp-clean",
            label: "clean TCP: ACK of an established connection to a cookie-protected port",
            frame: Vec::new(), // filled in once the connection exists
            method: Method::Repeat,
            inst: Inst::M1,
            config: full,
            expect: 2,
        },
        Class {
            id: "udp-clean",
            label: "clean UDP (under every limit)",
            frame: udp(lo, None),
            method: Method::Repeat,
            inst: Inst::M1,
            config: full,
            expect: 2,
        },
        Class {
            id: "syn-cookie",
            label: "SYN to a protected port, a new source each packet (65,536 in rotation) → SYN-ACK cookie (XDP_TX)",
            frame: syn,
            method: Method::Calls,
            inst: Inst::M1,
            config: full,
            expect: 3,
        },
        Class {
            id: "udp-over-limit",
            label: "UDP over the per-source limit (1 pps)",
            frame: udp(Ipv4Addr::new(10, 99, 0, 3), None),
            method: Method::Repeat,
            inst: Inst::M1,
            config: udp_limited_config(1),
            expect: 1,
        },
        Class {
            id: "block-v4-1k",
            label: "blocklisted IPv4 source, 1k prefixes loaded",
            frame: udp(BLOCKED_V4, None),
            method: Method::Repeat,
            inst: Inst::K1,
            config: full,
            expect: 1,
        },
        Class {
            id: "block-v4-100k",
            label: "blocklisted IPv4 source, 100k prefixes loaded",
            frame: udp(BLOCKED_V4, None),
            method: Method::Repeat,
            inst: Inst::K100,
            config: full,
            expect: 1,
        },
        Class {
            id: "block-v4-1m",
            label: "blocklisted IPv4 source, 1M prefixes loaded",
            frame: udp(BLOCKED_V4, None),
            method: Method::Repeat,
            inst: Inst::M1,
            config: full,
            expect: 1,
        },
        Class {
            id: "block-v6-100k",
            label: "blocklisted IPv6 source, 100k IPv6 prefixes loaded",
            frame: Frame::udp64(L3::V6(BLOCKED_V6, v6_dst, 0), 40000, 5201, None).build(),
            method: Method::Repeat,
            inst: Inst::M1,
            config: full,
            expect: 1,
        },
        Class {
            id: "vlan-udp",
            label: "clean UDP in an 802.1Q VLAN tag",
            frame: udp(lo, Some(100)),
            method: Method::Repeat,
            inst: Inst::M1,
            config: full,
            expect: 2,
        },
        Class {
            id: "ipv6-ext-udp",
            label: "clean IPv6 UDP after hop-by-hop + destination-options headers",
            frame: Frame::udp64(L3::V6(v6_src, v6_dst, 2), 40000, 5201, None).build(),
            method: Method::Repeat,
            inst: Inst::M1,
            config: full,
            expect: 2,
        },
    ]
}

pub fn run(object: Vec<u8>, opts: Opts) -> Result<Results> {
    let ns = Netns::new(&format!("mbtr{}", opts.id))?;
    let (ifa, ifb) = (format!("mbt{}a", opts.id), format!("mbt{}b", opts.id));
    ns.ip(&["link", "add", &ifa, "type", "veth", "peer", "name", &ifb])?;
    ns.ip(&["link", "set", &ifa, "up"])?;
    ns.ip(&["link", "set", &ifb, "up"])?;
    ns.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:99::1/128",
        "dev",
        "lo",
        "nodad",
    ])?;
    // With tcp_syncookies=1 the kernel's cookie helper (which mitigator's
    // XDP cookies use) only answers once the listener's SYN queue is full;
    // 2 makes it answer always, so the test run measures the cookie path.
    ns.run("sysctl", &["-qw", "net.ipv4.tcp_syncookies=2"])?;

    let (xdp_filter, xdp_filter_note) = match XdpFilter::setup(&ns, &ifa, &opts.id) {
        Ok(f) => {
            let note = format!("xdp-filter {} (program {}, loaded by `xdp-filter load -m native`, blocked sources added with `xdp-filter ip ADDR -m src`)", xdp_filter_version(), f.name);
            (Some(f), note)
        }
        Err(e) => {
            eprintln!("bench: xdp-filter not measured: {e:#}");
            (None, format!("not measured: {e:#}"))
        }
    };

    let handle = ns.on_thread(move || measure(&object, xdp_filter, opts, xdp_filter_note));
    let result = handle
        .join()
        .map_err(|_| anyhow!("the test-run thread panicked"))?;
    drop(ns);
    result
}

fn xdp_filter_version() -> String {
    util::output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "xdp-tools"]))
        .unwrap_or_else(|_| "?".into())
}

fn measure(
    object: &[u8],
    xdp_filter: Option<XdpFilter>,
    opts: Opts,
    xdp_filter_note: String,
) -> Result<Results> {
    let cpu = sys::nproc().saturating_sub(1);
    let _ = sys::pin_to_cpu(0, cpu);
    // Real-time priority so that builds on this shared machine do not
    // share the CPU (and its caches) with the measured loop.
    let _ = sys::set_fifo(0, 10);

    // The SYN cookie needs a listener; clean TCP an established connection.
    let listener = TcpListener::bind(("0.0.0.0", COOKIE_PORT))
        .context("listening on port 80 in the bench namespace")?;
    let client = TcpStream::connect(("10.99.0.1", COOKIE_PORT))?;
    let (_server, _) = listener.accept()?;
    let cport = client.local_addr()?.port();

    let floor = Tiny::load(XDP_DROP)?;
    let mut load_times = Vec::new();
    let mut load = |name: &str, v4: usize, v6: usize, seed: u64| -> Result<Mitigator> {
        let start = Instant::now();
        let mut m = Mitigator::load(object)?;
        if v4 > 0 {
            m.block_v4(&prefixes::v4(v4, seed))?;
        }
        if v6 > 0 {
            m.block_v6(&prefixes::v6(v6, seed + 100))?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("  loaded mitigator with {name} in {secs:.1} s");
        load_times.push((name.to_string(), secs));
        Ok(m)
    };
    let mut instances = [
        load("1k IPv4 prefixes", 1_000, 0, 1)?,
        load("100k IPv4 prefixes", 100_000, 0, 2)?,
        load("1M IPv4 + 100k IPv6 prefixes", 1_000_000, 100_000, 3)?,
        load("no prefixes", 0, 0, 4)?,
    ];
    let ablation = ablation();
    let udp_clean = Frame::udp64(
        L3::V4(Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 1)),
        40000,
        5201,
        None,
    )
    .build();
    for (_, inst, cfg) in &ablation {
        let m = &mut instances[*inst as usize];
        m.set_config(*cfg)?;
        warm_verdict(m.prog(), &udp_clean)?;
    }
    let mut ablation_samples: Vec<Vec<f64>> = ablation.iter().map(|_| Vec::new()).collect();

    let mut classes = classes();
    classes[0].frame = Frame::new(
        L3::V4(Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 1)),
        L4::Tcp {
            sport: cport,
            dport: COOKIE_PORT,
            flags: TCP_ACK,
            seq: 1000,
            ack: 2000,
            options: Vec::new(),
        },
    )
    .build();

    // Verdicts first (and warm-up), so a wrong path shows in the table.
    let mut verdicts = Vec::new();
    for c in &classes {
        let m = &mut instances[c.inst as usize];
        m.set_config(c.config)?;
        let vf = warm_verdict(floor.prog(), &c.frame)?;
        let vx = match &xdp_filter {
            Some(x) => Some(warm_verdict(&x.prog, &c.frame)?),
            None => None,
        };
        let vm = warm_verdict(m.prog(), &c.frame)?;
        verdicts.push((vf, vx, vm));
    }

    let n = classes.len();
    let mut samples: Vec<[Vec<f64>; 3]> = (0..n)
        .map(|_| [Vec::new(), Vec::new(), Vec::new()])
        .collect();
    for round in 0..opts.rounds {
        crate::util::check_interrupted()?;
        println!(
            "  round {}/{} (load {:.2})",
            round + 1,
            opts.rounds,
            sys::loadavg()
        );
        for (i, c) in classes.iter().enumerate() {
            let m = &mut instances[c.inst as usize];
            m.set_config(c.config)?;
            samples[i][0].push(time(floor.prog(), &c.frame, c.method, &opts)?);
            if let Some(x) = &xdp_filter {
                samples[i][1].push(time(&x.prog, &c.frame, c.method, &opts)?);
            }
            samples[i][2].push(time(m.prog(), &c.frame, c.method, &opts)?);
        }
        for (i, (_, inst, cfg)) in ablation.iter().enumerate() {
            let m = &mut instances[*inst as usize];
            m.set_config(*cfg)?;
            ablation_samples[i].push(time(m.prog(), &udp_clean, Method::Repeat, &opts)?);
        }
    }

    let mut rows = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        let (vf, vx, vm) = verdicts[i];
        let mut note = String::new();
        if vm != c.expect {
            note = format!(
                "unexpected mitigator verdict {} (expected {})",
                verdict_name(vm),
                verdict_name(c.expect)
            );
        }
        let method = match c.method {
            Method::Repeat => format!("repeat {}", opts.repeat),
            Method::Calls => format!("{} calls × repeat 1", opts.calls),
        };
        rows.push(Row {
            id: c.id,
            label: c.label,
            frame_len: c.frame.len(),
            method,
            floor_ns: median(&samples[i][0]),
            xdp_filter_ns: xdp_filter.as_ref().map(|_| median(&samples[i][1])),
            mitigator_ns: median(&samples[i][2]),
            verdicts: [
                verdict_name(vf),
                vx.map(verdict_name).unwrap_or_else(|| "-".into()),
                verdict_name(vm),
            ],
            note,
        });
    }
    drop(xdp_filter);
    Ok(Results {
        rows,
        repeat: opts.repeat,
        rounds: opts.rounds,
        calls: opts.calls,
        xdp_filter: xdp_filter_note,
        load_times,
        ablation: ablation
            .iter()
            .zip(&ablation_samples)
            .map(|((label, _, _), v)| (label.to_string(), median(v)))
            .collect(),
    })
}
