//! Deterministic mutation fuzz of the XDP parser through BPF_PROG_TEST_RUN.
//!
//! Valid frames of every shape the parser knows are mutated (bit flips,
//! random bytes, truncation, length and type fields set to edge values,
//! appended junk) by a seeded PRNG, so a failure reproduces exactly. Every
//! mutated frame is at least 14 bytes (the kernel's minimum for XDP
//! test-run). For each one the syscall must succeed and the verdict must be
//! a defined action, never XDP_ABORTED; afterwards the counters must have
//! grown by exactly one packet (and its length in bytes) per run: every
//! frame leaves through the one counting exit.
//!
//! `MITIGATOR_FUZZ_SEED` replaces the default seed.

use anyhow::{ensure, Result};
use mitigator_tests::{
    packet::{tcp_flags, Packet, ETH_HLEN},
    testrun::{Harness, Verdict},
};

const RUNS_PER_PHASE: usize = 10_000;
const DEFAULT_SEED: u64 = 0x6d69_7469_6761_746f; // "mitigato"
/// Keeps grown frames well inside what XDP test-run accepts (about a page).
const MAX_FRAME: usize = 2048;

/// splitmix64: tiny, fast, and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// A valid frame and the offsets of its interesting fields.
struct Seed {
    name: &'static str,
    frame: Vec<u8>,
    /// Length, type and offset fields: where mutations hurt the most.
    fields: Vec<usize>,
}

fn seed(name: &'static str, packet: Packet) -> Seed {
    let (frame, layers) = packet.build_with_layers();
    let mut fields = vec![12, 13]; // EtherType
    for layer in &layers {
        let at = |offsets: &[usize]| offsets.iter().map(|o| layer.start + o).collect::<Vec<_>>();
        fields.extend(match layer.name {
            "vlan" => at(&[2, 3]),
            "ipv4" => at(&[0, 2, 3, 6, 7, 9]),
            "ipv6" => at(&[0, 4, 5, 6]),
            "hop-by-hop" | "routing" | "destination-options" => at(&[0, 1]),
            "fragment" => at(&[0, 2, 3]),
            "tcp" => at(&[12, 13]),
            "udp" => at(&[4, 5]),
            _ => Vec::new(),
        });
    }
    Seed {
        name,
        frame,
        fields,
    }
}

fn seeds() -> Vec<Seed> {
    let v4 = || Packet::new().ipv4("198.51.100.7", "203.0.113.1");
    let v6 = || Packet::new().ipv6("2001:db8:bad::7", "2001:db8:ffff::1");
    vec![
        seed("v4 SYN", v4().tcp(40000, 443).tcp_flags(tcp_flags::SYN)),
        seed(
            "v4 ACK with options",
            v4().ipv4_options(&[1; 8])
                .tcp(1, 2)
                .tcp_options(&[1; 12])
                .payload(b"data"),
        ),
        seed("v4 UDP", v4().udp(53000, 53).payload(&[7; 20])),
        seed("v4 ICMP", v4().icmp(8, 0).payload(b"ping")),
        seed(
            "v4 first fragment",
            v4().ipv4_fragment(0, true).udp(1, 2).payload(&[1; 16]),
        ),
        seed(
            "v4 later fragment",
            v4().ipv4_fragment(100, false)
                .ip_proto(17)
                .payload(&[1; 16]),
        ),
        seed(
            "QinQ v4 UDP",
            Packet::new()
                .vlan_8021ad(1)
                .vlan_8021q(2)
                .ipv4("10.0.0.1", "10.0.0.2")
                .udp(1, 2),
        ),
        seed("v6 SYN", v6().tcp(40000, 443).tcp_flags(tcp_flags::SYN)),
        seed("v6 ICMPv6", v6().icmpv6(128, 0).payload(b"ping")),
        seed(
            "v6 ext chain",
            v6().hop_by_hop()
                .routing()
                .dest_opts()
                .ipv6_fragment(0, true)
                .udp(1, 2)
                .payload(b"x"),
        ),
        seed(
            "v6 later fragment",
            v6().ipv6_fragment(9, true).ip_proto(6).payload(&[2; 24]),
        ),
        seed(
            "802.1Q v6 UDP",
            Packet::new()
                .vlan_8021q(3)
                .ipv6("2001:db8::1", "2001:db8::2")
                .udp(1, 2),
        ),
        seed("ARP", Packet::new().arp_request("10.0.0.1", "10.0.0.2")),
    ]
}

/// Values that sit on the edges parsers get wrong.
const EDGE_BYTES: [u8; 12] = [
    0x00, 0x01, 0x04, 0x05, 0x06, 0x0f, 0x10, 0x3f, 0x40, 0x7f, 0x80, 0xff,
];
const EDGE_TYPES: [[u8; 2]; 5] = [
    [0x08, 0x00],
    [0x86, 0xdd],
    [0x81, 0x00],
    [0x88, 0xa8],
    [0x08, 0x06],
];
const EDGE_PROTOS: [u8; 9] = [0, 1, 6, 17, 43, 44, 58, 59, 60];

/// Applies one random mutation and says what it did (for failure reports).
fn mutate(rng: &mut Rng, seed: &Seed, frame: &mut Vec<u8>) -> String {
    let field = seed.fields[rng.below(seed.fields.len())].min(frame.len() - 1);
    let any = rng.below(frame.len());
    match rng.below(8) {
        0 => {
            let bit = rng.below(8);
            frame[any] ^= 1 << bit;
            format!("flip bit {bit} of byte {any}")
        }
        1 => {
            let value = rng.byte();
            frame[any] = value;
            format!("byte {any} = {value:#04x}")
        }
        2 => {
            let len = ETH_HLEN + rng.below(frame.len() - ETH_HLEN + 1);
            frame.truncate(len);
            format!("truncate to {len}")
        }
        3 => {
            let value = rng.pick(&EDGE_BYTES);
            frame[field] = value;
            format!("field byte {field} = {value:#04x}")
        }
        4 => {
            let value = rng.byte();
            frame[field] = value;
            format!("field byte {field} = random {value:#04x}")
        }
        5 => {
            let extra = 1 + rng.below(64);
            let junk: Vec<u8> = (0..extra).map(|_| rng.byte()).collect();
            frame.extend_from_slice(&junk);
            frame.truncate(MAX_FRAME);
            format!("append {extra} random bytes")
        }
        6 => {
            // An EtherType where one is expected: re-enter the VLAN/IP parsers.
            let value = rng.pick(&EDGE_TYPES);
            let at = field.min(frame.len() - 2);
            frame[at..at + 2].copy_from_slice(&value);
            format!("bytes {at}..{} = {value:02x?}", at + 2)
        }
        _ => {
            let value = rng.pick(&EDGE_PROTOS);
            frame[field] = value;
            format!("field byte {field} = protocol {value}")
        }
    }
}

/// One mutated frame: 1 to 4 mutations of a random seed.
fn mutant(rng: &mut Rng, seeds: &[Seed]) -> (Vec<u8>, String) {
    let seed = &seeds[rng.below(seeds.len())];
    let mut frame = seed.frame.clone();
    let steps: Vec<String> = (0..1 + rng.below(4))
        .map(|_| mutate(rng, seed, &mut frame))
        .collect();
    (frame, format!("{}: {}", seed.name, steps.join("; ")))
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `RUNS_PER_PHASE` mutants; returns the total bytes fed in.
fn fuzz_phase(harness: &Harness, rng: &mut Rng, seeds: &[Seed], monitor: bool) -> Result<u64> {
    let mut bytes = 0;
    for run in 0..RUNS_PER_PHASE {
        let (frame, how) = mutant(rng, seeds);
        let context = || {
            format!(
                "run {run} (monitor={monitor}) [{how}] frame {}",
                hex(&frame)
            )
        };
        let (verdict, _) = harness
            .run(&frame)
            .map_err(|e| anyhow::anyhow!("{}: test-run failed: {e:#}", context()))?;
        let defined = if monitor {
            verdict == Verdict::Pass
        } else {
            matches!(verdict, Verdict::Pass | Verdict::Drop | Verdict::Tx)
        };
        ensure!(defined, "{}: verdict {verdict:?}", context());
        bytes += frame.len() as u64;
    }
    Ok(bytes)
}

#[test]
fn mutated_frames_never_abort_and_are_always_counted() -> Result<()> {
    let Some(mut harness) = Harness::for_test("mutated_frames_never_abort_and_are_always_counted")
    else {
        return Ok(());
    };
    let seed_value = std::env::var("MITIGATOR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("fuzz seed {seed_value} (set MITIGATOR_FUZZ_SEED to change)");
    let mut rng = Rng(seed_value);
    let seeds = seeds();
    // Rules the seeds' sources fall into, so lookups and hit counters run too.
    harness.block("198.51.100.0/24")?;
    harness.block("2001:db8:bad::/48")?;
    harness.allow("10.0.0.0/8")?;

    let before = harness.counters()?;
    let mut bytes = 0;
    for monitor in [false, true] {
        harness.set_monitor(monitor)?;
        bytes += fuzz_phase(&harness, &mut rng, &seeds, monitor)?;
    }
    let moved = harness.counters()?.delta(&before);

    let runs = 2 * RUNS_PER_PHASE as u64;
    let counted_bytes: u64 = moved.nonzero().map(|(_, c)| c.bytes).sum();
    ensure!(
        moved.total_packets() == runs,
        "counted {} packets for {runs} runs: {moved}",
        moved.total_packets()
    );
    ensure!(
        counted_bytes == bytes,
        "counted {counted_bytes} bytes, fed {bytes}: {moved}"
    );
    eprintln!("fuzz: {runs} runs, counters moved {moved}");
    Ok(())
}
