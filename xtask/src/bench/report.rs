//! Results as a markdown table (bench/results.md), JSON
//! (bench/results.json) and a PNG chart (bench/main.png).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{control, live, sys::Machine, testrun};

pub struct Report {
    pub machine: Machine,
    /// Where the measured XDP object and daemon came from.
    pub artifacts: String,
    pub quick: bool,
    pub testrun: Option<testrun::Results>,
    pub live: Option<live::Results>,
    pub control: Option<control::Results>,
    pub elapsed_s: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

impl Report {
    pub fn write(&self, out: &Path) -> Result<()> {
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let md = self.markdown();
        fs::write(out.join("results.md"), &md)?;
        let json = serde_json::to_string_pretty(&self.json())?;
        fs::write(out.join("results.json"), json + "\n")?;
        let png = out.join("main.png");
        match super::plot::draw(self, &png) {
            Ok(()) => println!("\nwrote {}", png.display()),
            Err(e) => eprintln!("bench: no chart: {e:#}"),
        }
        println!(
            "wrote {}\nwrote {}",
            out.join("results.md").display(),
            out.join("results.json").display()
        );
        println!("\n{md}");
        Ok(())
    }

    /// The targets from the issue, each with where we stand.
    pub fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut t = Vec::new();
        if let Some(tr) = &self.testrun {
            let worst = tr
                .rows
                .iter()
                .map(|r| (r.id, ratio(r.mitigator_ns, r.floor_ns)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let block = tr.rows.iter().find(|r| r.id == "block-v4-1m");
            if let Some((id, x)) = worst {
                t.push((
                    "full packet path ≤ 1.5× the bare-drop floor (test run)".into(),
                    format!(
                        "worst class {id}: {x:.1}×{}",
                        block
                            .map(|b| format!(
                                "; blocklist drop (1M prefixes) {:.1}×",
                                ratio(b.mitigator_ns, b.floor_ns)
                            ))
                            .unwrap_or_default()
                    ),
                    Some(x <= 1.5),
                ));
            }
            let slower: Vec<String> = tr
                .rows
                .iter()
                .filter_map(|r| {
                    let xf = r.xdp_filter_ns?;
                    (r.mitigator_ns > xf).then(|| format!("{} ({:.2}×)", r.id, r.mitigator_ns / xf))
                })
                .collect();
            if tr.rows.iter().any(|r| r.xdp_filter_ns.is_some()) {
                t.push((
                    "no slower than xdp-filter on the same packets (test run)".into(),
                    if slower.is_empty() {
                        "every class is at or below xdp-filter".into()
                    } else {
                        format!(
                            "slower on {} of {} classes: {}",
                            slower.len(),
                            tr.rows.len(),
                            slower.join(", ")
                        )
                    },
                    Some(slower.is_empty()),
                ));
            }
        }
        if let Some(l) = &self.live {
            let get = |id: &str| l.rows.iter().find(|r| r.id == id && !r.samples.is_empty());
            if let (Some(m), Some(f)) = (get("mitigator-block"), get("xdp-drop")) {
                let x = ratio(m.ns_per_packet, f.ns_per_packet);
                let read = get("xdp-drop-read")
                    .map(|r| {
                        format!(
                            "; {:.2}× the floor that reads the header ({:.0} ns)",
                            ratio(m.ns_per_packet, r.ns_per_packet),
                            r.ns_per_packet
                        )
                    })
                    .unwrap_or_default();
                let rate = get("mitigator-rate")
                    .map(|r| {
                        format!(
                            "; rate-limit drop {:.2}× the bare floor",
                            ratio(r.ns_per_packet, f.ns_per_packet)
                        )
                    })
                    .unwrap_or_default();
                t.push((
                    "full packet path ≤ 1.5× the bare-drop floor (veth flood, receiver CPU per packet)".into(),
                    format!(
                        "blocklist drop {x:.2}× the bare floor ({:.0} vs {:.0} ns){read}{rate}",
                        m.ns_per_packet, f.ns_per_packet
                    ),
                    Some(x <= 1.5),
                ));
            }
            if let (Some(m), Some(x)) = (get("mitigator-block"), get("xdp-filter")) {
                let r = ratio(m.ns_per_packet, x.ns_per_packet);
                t.push((
                    "no slower than xdp-filter (veth flood, receiver CPU per packet)".into(),
                    format!(
                        "blocklist drop {r:.2}× xdp-filter ({:.0} vs {:.0} ns)",
                        m.ns_per_packet, x.ns_per_packet
                    ),
                    Some(r <= 1.0),
                ));
            }
            if let (Some(m), Some(n)) = (get("mitigator-block"), get("nftables")) {
                let x = ratio(m.received_pps, n.received_pps);
                t.push((
                    "receiver drop rate ≥ 3× nftables on the same veth".into(),
                    format!(
                        "{x:.2}× ({:.2} vs {:.2} Mpps; CPU per packet {:.0} vs {:.0} ns)",
                        m.received_pps / 1e6,
                        n.received_pps / 1e6,
                        m.ns_per_packet,
                        n.ns_per_packet
                    ),
                    Some(x >= 3.0),
                ));
            }
        }
        if let Some(c) = &self.control {
            if let Some(a) = c.applies.iter().find(|a| a.prefixes == 1_000_000) {
                t.push((
                    "1M prefixes applied in under 5 s".into(),
                    match a.seconds {
                        Some(s) => format!("{s:.2} s"),
                        None => format!("failed: {}", a.output),
                    },
                    Some(a.seconds.is_some_and(|s| s < 5.0)),
                ));
            }
        }
        t
    }

    fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# mitigator benchmark results\n");
        let _ = writeln!(
            s,
            "Generated by `cargo xtask bench{}` — see [docs/BENCHMARKS.md](../docs/BENCHMARKS.md) for what each number means and the caveats.\n",
            if self.quick { " --quick" } else { "" }
        );
        if self.quick {
            let _ = writeln!(
                s,
                "**Quick run: fewer repetitions and shorter floods; noisier than a full run.**\n"
            );
        }
        let _ = writeln!(s, "| machine | |\n| --- | --- |");
        let _ = writeln!(s, "| CPU | {} |", m.cpu);
        let _ = writeln!(s, "| CPUs | {} |", m.nproc);
        let _ = writeln!(s, "| kernel | {} |", m.kernel);
        let _ = writeln!(s, "| date (UTC) | {} |", m.date);
        let _ = writeln!(s, "| commit | {} |", m.commit);
        let _ = writeln!(s, "| artifacts | {} |", self.artifacts);
        let _ = writeln!(
            s,
            "| load average at start / end | {:.2} / {:.2} |",
            m.loadavg_start,
            super::sys::loadavg()
        );
        let _ = writeln!(s, "| bench wall time | {:.0} s |\n", self.elapsed_s);

        let targets = self.targets();
        if !targets.is_empty() {
            let _ = writeln!(
                s,
                "## Targets\n\n| target | where we stand | met |\n| --- | --- | --- |"
            );
            for (name, stand, met) in &targets {
                let met = match met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                };
                let _ = writeln!(s, "| {name} | {stand} | {met} |");
            }
            let _ = writeln!(s);
        }

        if let Some(t) = &self.testrun {
            let _ = writeln!(
                s,
                "## 1. Per-packet cost, BPF_PROG_TEST_RUN (ns/packet, median of {} rounds)\n",
                t.rounds
            );
            let _ = writeln!(
                s,
                "Same frames through each program. Floor: a bare `XDP_DROP` program. Peer: {}. mitigator: every defence on (see BENCHMARKS.md).\n",
                t.xdp_filter
            );
            let _ = writeln!(
                s,
                "| class | frame | timed as | floor | xdp-filter | mitigator | mitigator / floor | mitigator / xdp-filter | verdict floor / xdp-filter / mitigator |"
            );
            let _ = writeln!(
                s,
                "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"
            );
            for r in &t.rows {
                let _ = writeln!(
                    s,
                    "| {} `{}` | {} B | {} | {:.1} | {} | {:.1} | {:.2}× | {} | {} / {} / {}{} |",
                    r.label,
                    r.id,
                    r.frame_len,
                    r.method,
                    r.floor_ns,
                    opt(r.xdp_filter_ns, 1),
                    r.mitigator_ns,
                    ratio(r.mitigator_ns, r.floor_ns),
                    r.xdp_filter_ns
                        .map(|x| format!("{:.2}×", ratio(r.mitigator_ns, x)))
                        .unwrap_or_else(|| "–".into()),
                    r.verdicts[0],
                    r.verdicts[1],
                    r.verdicts[2],
                    if r.note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.note)
                    }
                );
            }
            let _ = writeln!(s);
            if !t.ablation.is_empty() {
                let _ = writeln!(
                    s,
                    "Where mitigator's time goes (clean 64-byte UDP, repeat {}, median of {} rounds; each row adds one thing to the row above):\n",
                    t.repeat, t.rounds
                );
                let _ = writeln!(s, "| mitigator configuration | ns/packet | Δ vs previous row |\n| --- | ---: | ---: |");
                let mut prev = None;
                for (label, ns) in &t.ablation {
                    let d = prev
                        .map(|p: f64| format!("{:+.1}", ns - p))
                        .unwrap_or_else(|| "–".into());
                    let _ = writeln!(s, "| {label} | {ns:.1} | {d} |");
                    prev = Some(*ns);
                }
                let _ = writeln!(s);
            }
            let loads: Vec<String> = t
                .load_times
                .iter()
                .map(|(n, secs)| format!("{n}: {secs:.1} s"))
                .collect();
            let _ = writeln!(
                s,
                "Repeat-mode rows: one test run with repeat = {}, the kernel's mean. SYN rows: {} test runs of repeat 1 per round, averaged (the program rewrites the SYN into a SYN-ACK in place, and the kernel reuses the buffer across repetitions); per-call timing includes one clock read, so compare that row's columns with each other. Prefix loading through aya (one syscall per prefix): {}.\n",
                t.repeat,
                t.calls,
                loads.join("; ")
            );
        }

        if let Some(l) = &self.live {
            let _ = writeln!(
                s,
                "## 2. Flood over veth between namespaces (median of {} interleaved runs of {:.0} s)\n",
                l.runs, l.seconds
            );
            let _ = writeln!(
                s,
                "Generator: {}. Receiver: threaded NAPI of the receiving veth pinned to CPU {} (SCHED_FIFO); its CPU time per received packet is the receiver's cost.\n",
                l.generator, l.receiver_cpu
            );
            let nft = l
                .rows
                .iter()
                .find(|r| r.id == "nftables")
                .map(|r| r.received_pps);
            let _ = writeln!(
                s,
                "| receiver | frame | offered Mpps | received (dropped) Mpps | receiver CPU ns/packet | receiver busy | one-core capacity Mpps | rate vs nftables | reached the IP stack | other work on the receiver's CPU | other NET_RX softirqs/s there |"
            );
            let _ = writeln!(
                s,
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for r in &l.rows {
                let disturbed = r.samples.iter().filter(|x| x.disturbed()).count();
                if r.samples.is_empty() {
                    let _ = writeln!(
                        s,
                        "| {} `{}` | {} |",
                        r.label,
                        r.id,
                        r.note.replace('|', "/")
                    );
                    continue;
                }
                let _ = writeln!(
                    s,
                    "| {}{} `{}` | {} B | {:.2} | {:.2} | {:.0} | {:.0}% | {:.2} | {} | {:.1}% | {:.0}% | {:.0} |",
                    r.label,
                    if disturbed > 0 { format!(" ({disturbed} of {} runs disturbed)", r.samples.len()) } else { String::new() },
                    r.id,
                    r.frame_len,
                    r.sent_pps / 1e6,
                    r.received_pps / 1e6,
                    r.ns_per_packet,
                    r.napi_busy * 100.0,
                    1e3 / r.ns_per_packet,
                    nft.map(|n| format!("{:.2}×", ratio(r.received_pps, n)))
                        .unwrap_or_else(|| "–".into()),
                    r.reached_ip_fraction * 100.0,
                    r.other_busy * 100.0,
                    r.foreign_softirqs_per_s,
                );
            }
            let _ = writeln!(
                s,
                "\n\"received\" counts every frame the receiving veth took in (all of them are dropped, answered or refused by the configuration under test); \"one-core capacity\" is 1000 / ns per packet. \"reached the IP stack\" is `Ip: InReceives` over frames received: 100% for no filter and iptables (the raw table sits after the IP layer's receive), ~0% for the drops before it. \"other work on the receiver's CPU\" is that CPU's busy time (/proc/stat) not spent in the receiver's thread: on a shared machine, softirq work of other traffic that lands on that CPU is charged to whichever thread is running (this kernel has no IRQ time accounting), and \"other NET_RX softirqs\" counts network softirqs on that CPU, which threaded NAPI does not raise: other traffic on the machine (a test's flood, say), whose time the kernel (no IRQ time accounting here) charges to whatever thread it interrupts — ours included. Runs with either high are suspect; a run with more than 1,000 such softirqs/s is repeated up to twice, and a row that still has disturbed runs says so.\n"
            );
        }

        if let Some(c) = &self.control {
            let _ = writeln!(
                s,
                "## 3. Control plane\n\n| measurement | result |\n| --- | --- |"
            );
            let _ = writeln!(
                s,
                "| daemon RSS, idle (no rules) | {} |",
                c.idle_rss_kib
                    .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_else(|| "–".into())
            );
            for a in &c.applies {
                let _ =
                    writeln!(
                    s,
                    "| `mitigator block --from-file` with {} prefixes (fresh daemon) | {} — {} |",
                    a.prefixes,
                    a.seconds.map(|x| format!("{x:.2} s")).unwrap_or_else(|| "failed".into()),
                    a.output.replace('|', "/")
                );
                let _ = writeln!(
                    s,
                    "| daemon RSS with {} prefixes | {} |",
                    a.prefixes,
                    a.rss_after_kib
                        .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                        .unwrap_or_else(|| "–".into())
                );
            }
            let _ = writeln!(
                s,
                "| time from flood start to escalation | {} |\n",
                c.escalation
            );
        }
        s
    }

    fn json(&self) -> Value {
        let m = &self.machine;
        let testrun = self.testrun.as_ref().map(|t| {
            json!({
                "repeat": t.repeat,
                "rounds": t.rounds,
                "calls_per_round_for_rewritten_frames": t.calls,
                "peer": t.xdp_filter,
                "prefix_load_seconds": t.load_times.iter().map(|(n, s)| json!({"set": n, "seconds": s})).collect::<Vec<_>>(),
                "rows": t.rows.iter().map(|r| json!({
                    "class": r.id,
                    "label": r.label,
                    "frame_bytes": r.frame_len,
                    "timed_as": r.method,
                    "floor_ns": r.floor_ns,
                    "xdp_filter_ns": r.xdp_filter_ns,
                    "mitigator_ns": r.mitigator_ns,
                    "mitigator_over_floor": ratio(r.mitigator_ns, r.floor_ns),
                    "mitigator_over_xdp_filter": r.xdp_filter_ns.map(|x| ratio(r.mitigator_ns, x)),
                    "verdicts": {"floor": r.verdicts[0], "xdp_filter": r.verdicts[1], "mitigator": r.verdicts[2]},
                    "note": r.note,
                })).collect::<Vec<_>>(),
                "ablation_udp_clean": t.ablation.iter().map(|(l, ns)| json!({"config": l, "ns": ns})).collect::<Vec<_>>(),
            })
        });
        let live = self.live.as_ref().map(|l| {
            json!({
                "seconds_per_run": l.seconds,
                "runs": l.runs,
                "generator": l.generator,
                "generator_cpu": l.generator_cpu,
                "receiver_cpu": l.receiver_cpu,
                "rows": l.rows.iter().map(|r| json!({
                    "receiver": r.id,
                    "note": r.note,
                    "label": r.label,
                    "frame_bytes": r.frame_len,
                    "offered_pps": r.sent_pps,
                    "received_pps": r.received_pps,
                    "receiver_ns_per_packet": r.ns_per_packet,
                    "receiver_busy_fraction": r.napi_busy,
                    "other_work_on_receiver_cpu_fraction": r.other_busy,
                    "other_net_rx_softirqs_per_second": r.foreign_softirqs_per_s,
                    "reached_ip_fraction": r.reached_ip_fraction,
                    "runs": r.samples.iter().map(|x| json!({
                        "seconds": x.seconds, "sent": x.sent, "received": x.received,
                        "receiver_cpu_ns": x.napi_ns, "reached_ip": x.reached_ip, "other_cpu_ns": x.other_ns, "other_net_rx_softirqs": x.foreign_softirqs, "disturbed": x.disturbed(),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        });
        let control = self.control.as_ref().map(|c| {
            json!({
                "idle_rss_kib": c.idle_rss_kib,
                "applies": c.applies.iter().map(|a| json!({
                    "prefixes": a.prefixes, "seconds": a.seconds, "cli_output": a.output, "rss_after_kib": a.rss_after_kib,
                })).collect::<Vec<_>>(),
                "escalation": c.escalation,
            })
        });
        json!({
            "machine": {
                "cpu": m.cpu, "nproc": m.nproc, "kernel": m.kernel, "date": m.date, "commit": m.commit,
                "loadavg_start": m.loadavg_start, "loadavg_end": super::sys::loadavg(),
            },
            "quick": self.quick,
            "artifacts": self.artifacts,
            "elapsed_seconds": self.elapsed_s,
            "targets": self.targets().iter().map(|(n, s, met)| json!({"target": n, "where_we_stand": s, "met": met})).collect::<Vec<_>>(),
            "testrun": testrun,
            "live": live,
            "control": control,
        })
    }
}
