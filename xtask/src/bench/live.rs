//! Part 2: a flood over a veth pair between two namespaces, against each
//! receiving-side filter in turn.
//!
//! Generator: BPF_PROG_TEST_RUN in live-frame mode. A two-instruction
//! `XDP_TX` program (kept attached to an idle, down veth so the kernel's XDP
//! dispatcher is not swapped on every call) is run with the flood frame as
//! input and the sending veth as ingress device; the kernel turns every
//! XDP_TX into a transmit on that veth, so its peer in the receiving
//! namespace gets real frames through its own NAPI, one receive path per
//! packet, as from a NIC queue. The generator runs pinned to CPU 0.
//!
//! Receiver: the receiving veth has threaded NAPI on, and its NAPI thread is
//! pinned to CPU 1: everything the receiver does per packet (XDP, and for
//! the non-XDP filters the skb path up to the netfilter hook) runs in that
//! thread, so its CPU time (`/proc/PID/schedstat`) divided by the packets it
//! received is the receiver's CPU cost per packet, untouched by whatever
//! else this shared machine runs.
//!
//! veth only receives XDP_TX'd frames while the receiving side has an XDP
//! program, so the configurations without one (no filter, iptables,
//! nftables) get a bare XDP_PASS program. The SYN-ACKs mitigator sends back
//! land on the generator's veth, which has an XDP_DROP sink (threaded NAPI
//! on CPU 0) so that they cost the receiver a real, successful transmit.

use std::{
    net::{Ipv4Addr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};

use super::{
    elf::{Tiny, XDP_DROP, XDP_PASS, XDP_TX},
    median,
    mitigator::{udp_limited_config, Mitigator, COOKIE_PORT},
    pkt::{linux_syn_options, Frame, L3, L4, TCP_SYN},
    prefixes::{self, BLOCKED_V4, BLOCKED_V4_NET},
    sys::{self, Netns},
};
use crate::util;

pub struct Opts {
    pub seconds: f64,
    pub runs: usize,
    pub id: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rx {
    /// A bare XDP_DROP program: the floor.
    Floor,
    /// The floor plus a read of the frame's first cache line.
    FloorRead,
    None,
    Iptables,
    Nftables,
    XdpFilter,
    Mitigator,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flood {
    /// UDP from the blocked source.
    Blocked,
    /// UDP from one unblocked source, over its per-source limit.
    OverLimit,
    /// SYNs to the cookie-protected port.
    Syn,
    /// SYNs to the cookie-protected port, a random source each (65,536).
    SynSpoofed,
}

struct Case {
    id: &'static str,
    label: &'static str,
    rx: Rx,
    flood: Flood,
}

const CASES: [Case; 10] = [
    Case {
        id: "xdp-drop",
        label: "floor: bare XDP_DROP program",
        rx: Rx::Floor,
        flood: Flood::Blocked,
    },
    Case {
        id: "xdp-drop-read",
        label: "floor that reads the header (XDP_DROP after loading the first cache line)",
        rx: Rx::FloorRead,
        flood: Flood::Blocked,
    },
    Case {
        id: "none",
        label: "no filter (XDP_PASS, kernel stack)",
        rx: Rx::None,
        flood: Flood::Blocked,
    },
    Case {
        id: "iptables",
        label: "iptables raw PREROUTING drop",
        rx: Rx::Iptables,
        flood: Flood::Blocked,
    },
    Case {
        id: "nftables",
        label: "nftables netdev ingress drop",
        rx: Rx::Nftables,
        flood: Flood::Blocked,
    },
    Case {
        id: "xdp-filter",
        label: "xdp-filter (source IP, native XDP)",
        rx: Rx::XdpFilter,
        flood: Flood::Blocked,
    },
    Case {
        id: "mitigator-block",
        label: "mitigator: blocklist (100k prefixes)",
        rx: Rx::Mitigator,
        flood: Flood::Blocked,
    },
    Case {
        id: "mitigator-rate",
        label: "mitigator: UDP over per-source limit",
        rx: Rx::Mitigator,
        flood: Flood::OverLimit,
    },
    Case {
        id: "mitigator-syn",
        label: "mitigator: SYN flood, one source → XDP SYN cookies",
        rx: Rx::Mitigator,
        flood: Flood::Syn,
    },
    Case {
        id: "mitigator-syn-spoofed",
        label: "mitigator: SYN flood, random sources (65,536) → XDP SYN cookies",
        rx: Rx::Mitigator,
        flood: Flood::SynSpoofed,
    },
];

#[derive(Clone, Debug)]
pub struct Sample {
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    pub napi_ns: u64,
    pub reached_ip: u64,
    /// Busy time of the receiver's CPU not spent in the receiver's thread
    /// (other work on a shared machine), ns.
    pub other_ns: u64,
    /// NET_RX softirqs on the receiver's CPU (not ours: see sys::net_rx_softirqs).
    pub foreign_softirqs: u64,
}

/// Other network softirqs per second on the receiver's CPU above which a
/// run counts as disturbed (an idle machine shows a few per second).
pub const DISTURBED_SOFTIRQS_PER_S: f64 = 1000.0;

impl Sample {
    pub fn disturbed(&self) -> bool {
        self.foreign_softirqs as f64 / self.seconds > DISTURBED_SOFTIRQS_PER_S
    }
}

pub struct Row {
    pub id: &'static str,
    pub label: &'static str,
    pub frame_len: usize,
    /// Medians over the runs.
    pub received_pps: f64,
    pub sent_pps: f64,
    pub ns_per_packet: f64,
    pub napi_busy: f64,
    pub reached_ip_fraction: f64,
    /// Median share of the receiver's CPU busy with something else.
    pub other_busy: f64,
    /// Median NET_RX softirqs per second on the receiver's CPU.
    pub foreign_softirqs_per_s: f64,
    pub samples: Vec<Sample>,
    /// Why a configuration has no samples (empty when measured).
    pub note: String,
}

pub struct Results {
    pub rows: Vec<Row>,
    pub seconds: f64,
    pub runs: usize,
    pub generator: String,
    pub receiver_cpu: usize,
    pub generator_cpu: usize,
}

/// Moves the calling thread into `path`'s network namespace for `f`, then back.
pub(super) fn in_netns<T>(path: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    sys::join_netns(path)?;
    let out = f();
    // SAFETY: a valid namespace fd we opened above.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&home), libc::CLONE_NEWNET) } != 0 {
        panic!("cannot return to the original network namespace");
    }
    out
}

pub(super) struct Topology {
    pub gen: Netns,
    pub rx: Netns,
    pub g: String,
    pub r: String,
    /// Where the generators stay attached: one end of each of two veth
    /// pairs that are never brought up, so no frame can ever loop between
    /// two XDP_TX programs (an earlier version looped IPv6 neighbour
    /// discovery between two generators at line rate).
    pub idle: String,
    pub idle2: String,
}

impl Topology {
    pub(super) fn new(id: &str) -> Result<Self> {
        let gen = Netns::new(&format!("mbgen{id}"))?;
        let rx = Netns::new(&format!("mbrx{id}"))?;
        let (g, r) = (format!("mbg{id}"), format!("mbr{id}"));
        let (idle, idle2) = (format!("mbi{id}"), format!("mbk{id}"));
        gen.ip(&[
            "link", "add", &g, "type", "veth", "peer", "name", &r, "netns", &rx.name,
        ])?;
        gen.ip(&[
            "link",
            "add",
            &idle,
            "type",
            "veth",
            "peer",
            "name",
            &format!("mbj{id}"),
        ])?;
        gen.ip(&[
            "link",
            "add",
            &idle2,
            "type",
            "veth",
            "peer",
            "name",
            &format!("mbl{id}"),
        ])?;
        gen.ip(&["link", "set", &g, "up"])?;
        rx.ip(&["link", "set", &r, "up"])?;
        gen.ip(&["addr", "add", "10.201.0.1/24", "dev", &g])?;
        rx.ip(&["addr", "add", "10.201.0.2/24", "dev", &r])?;
        let gmac = mac_string(&gen.mac(&g)?);
        rx.ip(&[
            "neigh",
            "replace",
            "10.201.0.1",
            "lladdr",
            &gmac,
            "dev",
            &r,
            "nud",
            "permanent",
        ])?;
        // The floods come from addresses the receiver has no route back to
        // through anything but this veth: route them there (for ICMP errors).
        rx.ip(&["route", "add", "default", "via", "10.201.0.1", "dev", &r])?;
        // Cookies from XDP need the kernel's cookie code on unconditionally.
        rx.run("sysctl", &["-qw", "net.ipv4.tcp_syncookies=2"])?;
        Ok(Self {
            gen,
            rx,
            g,
            r,
            idle,
            idle2,
        })
    }

    /// Threaded NAPI on a device, its thread pinned to `cpu`; returns the thread.
    fn napi(&self, ns: &Netns, iface: &str, cpu: usize) -> Result<i32> {
        ns.sysfs_sh(&format!("echo 1 > /sys/class/net/{iface}/threaded"))?;
        let mut pid = None;
        sys::wait_for(Duration::from_secs(3), || {
            pid = sys::napi_thread(iface);
            pid.is_some()
        });
        let pid = pid
            .ok_or_else(|| anyhow!("no NAPI thread for {iface} (threaded NAPI not supported?)"))?;
        sys::pin_to_cpu(pid, cpu)?;
        // Real-time priority: on this shared machine, builds running on the
        // same CPU would otherwise take turns with the receiver (without
        // threaded NAPI it would run in softirq context and preempt them).
        sys::set_fifo(pid, 10)?;
        Ok(pid)
    }
}

fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(super) fn attach(
    prog: &mut Xdp,
    ns: &Netns,
    iface: &str,
) -> Result<aya::programs::xdp::XdpLinkId> {
    in_netns(&ns.path(), || {
        prog.attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching XDP to {iface} (native)"))
    })
}

pub(super) fn detach(prog: &mut Xdp, id: aya::programs::xdp::XdpLinkId) {
    if let Err(e) = prog.detach(id) {
        eprintln!("bench: detaching XDP: {e}");
    }
}

/// `Ip: InReceives` of a namespace: packets that reached the IP layer.
fn ip_in_receives(ns: &Netns) -> u64 {
    let Ok(text) = ns.run("cat", &["/proc/net/snmp"]) else {
        return 0;
    };
    let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(h), Some(v)) = (lines.next(), lines.next()) else {
        return 0;
    };
    h.split_whitespace()
        .zip(v.split_whitespace())
        .find(|(k, _)| *k == "InReceives")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The generator: live-frame test runs of the XDP_TX program, pinned to
/// CPU 0, in the generator's namespace, until `seconds` pass. Returns
/// (frames generated, seconds).
fn generate(
    prog: &Xdp,
    ns_path: &str,
    ifindex: u32,
    frame: &[u8],
    seconds: f64,
) -> Result<(u64, f64)> {
    thread::scope(|s| {
        s.spawn(|| -> Result<(u64, f64)> {
            sys::join_netns(ns_path)?;
            sys::pin_to_cpu(0, 0)?;
            sys::set_fifo(0, 10)?;
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes()); // data_end
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
            const CHUNK: u32 = 250_000;
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                prog.test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat: CHUNK,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..Default::default()
                })
                .context("live-frame BPF_PROG_TEST_RUN")?;
                sent += CHUNK as u64;
            }
            Ok((sent, start.elapsed().as_secs_f64()))
        })
        .join()
        .map_err(|_| anyhow!("generator thread panicked"))?
    })
}

pub fn run(object: &[u8], opts: Opts) -> Result<Results> {
    if sys::nproc() < 2 {
        bail!("the flood needs 2 CPUs (generator and receiver each get one)");
    }
    let topo = Topology::new(&opts.id)?;
    let gen_ifindex = topo.gen.ifindex(&topo.g)?;

    let mut gen_prog = Tiny::load(XDP_TX)?;
    let mut spoofer = Tiny::spoofer()?;
    let mut read_drop = Tiny::read_drop()?;
    let mut sink = Tiny::load(XDP_DROP)?;
    let mut pass = Tiny::load(XDP_PASS)?;
    let idle_link = attach(gen_prog.prog_mut(), &topo.gen, &topo.idle)?;
    let idle_link2 = attach(spoofer.prog_mut(), &topo.gen, &topo.idle2)?;
    let sink_link = attach(sink.prog_mut(), &topo.gen, &topo.g)?;
    topo.napi(&topo.gen, &topo.g, 0)?;

    let start = Instant::now();
    let mut mitigator = Mitigator::load(object)?;
    mitigator.block_v4(&prefixes::v4(100_000, 2))?;
    mitigator.set_config(udp_limited_config(1000))?;
    println!(
        "  loaded mitigator with 100k IPv4 prefixes in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // A listener for the SYN cookies (sockets live in the namespace they
    // were made in).
    let listener = {
        let path = topo.rx.path();
        thread::spawn(move || -> Result<TcpListener> {
            sys::join_netns(&path)?;
            Ok(TcpListener::bind(("0.0.0.0", COOKIE_PORT))?)
        })
        .join()
        .map_err(|_| anyhow!("listener thread panicked"))??
    };

    let rmac = topo.rx.mac(&topo.r)?;
    let gmac = topo.gen.mac(&topo.g)?;
    let dst = Ipv4Addr::new(10, 201, 0, 2);
    let frame = |flood: Flood| -> Vec<u8> {
        let mut f = match flood {
            Flood::Blocked => Frame::udp64(L3::V4(BLOCKED_V4, dst), 40000, 9, None),
            Flood::OverLimit => {
                Frame::udp64(L3::V4(Ipv4Addr::new(10, 99, 0, 1), dst), 40000, 9, None)
            }
            Flood::Syn | Flood::SynSpoofed => Frame::new(
                L3::V4(Ipv4Addr::new(10, 99, 0, 5), dst),
                L4::Tcp {
                    sport: 41000,
                    dport: COOKIE_PORT,
                    flags: TCP_SYN,
                    seq: 1,
                    ack: 0,
                    options: linux_syn_options(),
                },
            )
            .spoofable(),
        };
        f.dst_mac = rmac;
        f.src_mac = gmac;
        f.build()
    };

    let mut samples: Vec<Vec<Sample>> = CASES.iter().map(|_| Vec::new()).collect();
    let mut notes: Vec<String> = CASES.iter().map(|_| String::new()).collect();
    for run in 0..opts.runs {
        for (ci, case) in CASES.iter().enumerate() {
            util::check_interrupted()?;
            let f = frame(case.flood);
            // Set up the receiver; a configuration that cannot be set up
            // (a tool missing, say) is reported and skipped.
            let mut link = None;
            let setup = (|| -> Result<()> {
                match case.rx {
                    Rx::None | Rx::Iptables | Rx::Nftables => {
                        link = Some((attach(pass.prog_mut(), &topo.rx, &topo.r)?, 0));
                    }
                    Rx::Floor => {
                        link = Some((attach(sink.prog_mut(), &topo.rx, &topo.r)?, 2));
                    }
                    Rx::FloorRead => {
                        link = Some((attach(read_drop.prog_mut(), &topo.rx, &topo.r)?, 3));
                    }
                    Rx::XdpFilter => {
                        topo.rx
                            .run("xdp-filter", &["load", &topo.r, "-m", "native"])?;
                        topo.rx
                            .run("xdp-filter", &["ip", &BLOCKED_V4.to_string(), "-m", "src"])?;
                    }
                    Rx::Mitigator => {
                        link = Some((attach(mitigator.prog_mut(), &topo.rx, &topo.r)?, 1));
                    }
                }
                let net = format!("{}/{}", BLOCKED_V4_NET.0, BLOCKED_V4_NET.1);
                match case.rx {
                    Rx::Iptables => {
                        topo.rx.run(
                            "iptables",
                            &["-t", "raw", "-A", "PREROUTING", "-s", &net, "-j", "DROP"],
                        )?;
                    }
                    Rx::Nftables => {
                        let rules = format!(
                            "table netdev mbbench {{\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority -500;\n    ip saddr {} drop\n  }}\n}}\n",
                            topo.r, net
                        );
                        let file = std::env::temp_dir().join(format!("mbbench-{}.nft", opts.id));
                        std::fs::write(&file, rules)?;
                        let res = topo.rx.run("nft", &["-f", &file.to_string_lossy()]);
                        let _ = std::fs::remove_file(&file);
                        res?;
                    }
                    _ => {}
                }
                Ok(())
            })();
            let generator = if case.flood == Flood::SynSpoofed {
                &spoofer
            } else {
                &gen_prog
            };
            let measured = setup
                .context("setting up the receiver")
                .and_then(|()| {
                    // A run disturbed by other network work on the
                    // receiver's CPU is repeated, at most twice.
                    let mut attempt = 0;
                    loop {
                        let s = measure(&topo, generator, gen_ifindex, &f, opts.seconds)?;
                        attempt += 1;
                        if !s.disturbed() || attempt == 3 {
                            break Ok(s);
                        }
                        println!(
                            "  run {}/{} {}: {:.0} other NET_RX softirqs/s on the receiver's CPU; repeating",
                            run + 1,
                            opts.runs,
                            case.id,
                            s.foreign_softirqs as f64 / s.seconds
                        );
                    }
                });
            // Tear down whatever happened.
            match case.rx {
                Rx::Iptables => {
                    let _ = topo.rx.run("iptables", &["-t", "raw", "-F", "PREROUTING"]);
                }
                Rx::Nftables => {
                    let _ = topo
                        .rx
                        .run("nft", &["delete", "table", "netdev", "mbbench"]);
                }
                Rx::XdpFilter => {
                    let _ = topo.rx.run("xdp-filter", &["unload", &topo.r]);
                }
                _ => {}
            }
            if let Some((id, which)) = link {
                match which {
                    0 => detach(pass.prog_mut(), id),
                    1 => detach(mitigator.prog_mut(), id),
                    3 => detach(read_drop.prog_mut(), id),
                    _ => detach(sink.prog_mut(), id),
                }
            }
            let s = match measured {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("bench: {} not measured: {e:#}", case.id);
                    notes[ci] = format!("not measured: {e:#}");
                    continue;
                }
            };
            println!(
                "  run {}/{} {:16} sent {:5.2} Mpps, received {:5.2} Mpps, {:6.1} ns/pkt, NAPI busy {:3.0}%, other work on its CPU {:3.0}%, NET_RX softirqs there {:.0}/s, reached IP {:.3}",
                run + 1,
                opts.runs,
                case.id,
                s.sent as f64 / s.seconds / 1e6,
                s.received as f64 / s.seconds / 1e6,
                s.napi_ns as f64 / s.received.max(1) as f64,
                s.napi_ns as f64 / s.seconds / 1e7,
                s.other_ns as f64 / s.seconds / 1e7,
                s.foreign_softirqs as f64 / s.seconds,
                s.reached_ip as f64 / s.received.max(1) as f64,
            );
            samples[ci].push(s);
        }
    }
    drop(listener);
    detach(sink.prog_mut(), sink_link);
    detach(gen_prog.prog_mut(), idle_link);
    detach(spoofer.prog_mut(), idle_link2);

    let rows = CASES
        .iter()
        .zip(samples)
        .zip(notes)
        .map(|((case, s), note)| {
            let m = |f: &dyn Fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
            Row {
                id: case.id,
                label: case.label,
                frame_len: frame(case.flood).len(),
                received_pps: m(&|x| x.received as f64 / x.seconds),
                sent_pps: m(&|x| x.sent as f64 / x.seconds),
                ns_per_packet: m(&|x| x.napi_ns as f64 / x.received.max(1) as f64),
                napi_busy: m(&|x| x.napi_ns as f64 / 1e9 / x.seconds),
                reached_ip_fraction: m(&|x| x.reached_ip as f64 / x.received.max(1) as f64),
                other_busy: m(&|x| x.other_ns as f64 / 1e9 / x.seconds),
                foreign_softirqs_per_s: m(&|x| x.foreign_softirqs as f64 / x.seconds),
                samples: s,
                note,
            }
        })
        .collect();
    drop(topo);
    Ok(Results {
        rows,
        seconds: opts.seconds,
        runs: opts.runs,
        generator: "BPF_PROG_TEST_RUN live frames (XDP_TX program, batch 64; for the spoofed flood a program that also writes a random 16-bit source word) on CPU 0".into(),
        receiver_cpu: 1,
        generator_cpu: 0,
    })
}

fn measure(
    topo: &Topology,
    gen: &Tiny,
    ifindex: u32,
    frame: &[u8],
    seconds: f64,
) -> Result<Sample> {
    let napi = topo.napi(&topo.rx, &topo.r, 1)?;
    // Let the attach settle.
    thread::sleep(Duration::from_millis(200));
    let rx0 = topo.rx.rx_stats(&topo.r)?.0;
    let ip0 = ip_in_receives(&topo.rx);
    let t0 = sys::task_runtime_ns(napi)?;
    let c0 = sys::cpu_busy_ns(1);
    let n0 = sys::net_rx_softirqs(1);
    let (sent, secs) = generate(gen.prog(), &topo.gen.path(), ifindex, frame, seconds)?;
    // Let the receiver drain its ring.
    thread::sleep(Duration::from_millis(100));
    let t1 = sys::task_runtime_ns(napi)?;
    let c1 = sys::cpu_busy_ns(1);
    let n1 = sys::net_rx_softirqs(1);
    let rx1 = topo.rx.rx_stats(&topo.r)?.0;
    let ip1 = ip_in_receives(&topo.rx);
    Ok(Sample {
        seconds: secs,
        sent,
        received: rx1.saturating_sub(rx0),
        napi_ns: t1.saturating_sub(t0),
        reached_ip: ip1.saturating_sub(ip0),
        other_ns: c1.saturating_sub(c0).saturating_sub(t1.saturating_sub(t0)),
        foreign_softirqs: n1.saturating_sub(n0),
    })
}
