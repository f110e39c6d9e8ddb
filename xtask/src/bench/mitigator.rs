//! mitigator's XDP object loaded straight from the build output with aya,
//! and its maps filled directly (the layouts come from mitigator-common), so
//! that the bench measures the datapath alone, with any configuration.

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use mitigator_common::{
    Config, Gcra, RuleValue, DEFAULT_AMP_PORTS, FLAG_AMP_DROP, FLAG_PORT_CAP, FLAG_RATE_LIMIT,
    FLAG_SYN_COOKIES, MAP_BLOCK_V4, MAP_BLOCK_V6, MAP_CONFIG, MAP_PORTS, PORT_TCP_SYN_COOKIES,
    PORT_UDP_AMP_SOURCE, PROGRAM_NAME,
};

use super::prefixes::{V4Prefix, V6Prefix};

/// The TCP port the bench protects with SYN cookies.
pub const COOKIE_PORT: u16 = 80;

/// A limit no single test stream reaches: one packet per ns with a second
/// of burst, so every packet takes the "conforms, book it" path.
pub const UNLIMITED: Gcra = Gcra {
    interval_ns: 1,
    tolerance_ns: 1_000_000_000,
};

/// Every defence on (per-source limits for SYN/UDP/ICMP, SYN cookies on
/// port 80, amplification drop, UDP per-port cap), with limits high
/// enough that clean traffic only pays for the checks.
pub fn full_config() -> Config {
    Config {
        flags: FLAG_RATE_LIMIT | FLAG_SYN_COOKIES | FLAG_AMP_DROP | FLAG_PORT_CAP,
        syn: UNLIMITED,
        udp: UNLIMITED,
        icmp: UNLIMITED,
        pmtu: UNLIMITED,
        udp_port: UNLIMITED,
        ..Config::default()
    }
}

/// `full_config` with a UDP limit of `rate` packets per second per source.
pub fn udp_limited_config(rate: u32) -> Config {
    Config {
        udp: Gcra::per_second(rate, 1),
        ..full_config()
    }
}

pub struct Mitigator {
    pub ebpf: Ebpf,
}

impl Mitigator {
    pub fn load(object: &[u8]) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .context("loading mitigator's XDP object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("no program {PROGRAM_NAME} in the object"))?
            .try_into()?;
        prog.load()
            .context("loading mitigator's XDP program (verifier)")?;
        let mut m = Self { ebpf };
        m.set_ports()?;
        m.set_config(full_config())?;
        Ok(m)
    }

    pub fn prog(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .expect("checked")
            .try_into()
            .expect("XDP")
    }

    pub fn prog_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .expect("checked")
            .try_into()
            .expect("XDP")
    }

    pub fn set_config(&mut self, cfg: Config) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(MAP_CONFIG)
            .ok_or_else(|| anyhow!("no {MAP_CONFIG}"))?;
        let mut a: Array<&mut MapData, Config> = Array::try_from(map)?;
        a.set(0, cfg, 0)?;
        Ok(())
    }

    /// Port 80 protected by SYN cookies, the default amplification ports.
    fn set_ports(&mut self) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(MAP_PORTS)
            .ok_or_else(|| anyhow!("no {MAP_PORTS}"))?;
        let mut a: Array<&mut MapData, u32> = Array::try_from(map)?;
        a.set(COOKIE_PORT as u32, PORT_TCP_SYN_COOKIES, 0)?;
        for p in DEFAULT_AMP_PORTS {
            a.set(p as u32, PORT_UDP_AMP_SOURCE, 0)?;
        }
        Ok(())
    }

    pub fn block_v4(&mut self, prefixes: &[V4Prefix]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(MAP_BLOCK_V4)
            .ok_or_else(|| anyhow!("no {MAP_BLOCK_V4}"))?;
        let mut t: LpmTrie<&mut MapData, [u8; 4], RuleValue> = LpmTrie::try_from(map)?;
        for p in prefixes {
            t.insert(&Key::new(p.len, p.addr), RuleValue::default(), 0)
                .with_context(|| format!("blocking {:?}/{}", p.addr, p.len))?;
        }
        Ok(())
    }

    pub fn block_v6(&mut self, prefixes: &[V6Prefix]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(MAP_BLOCK_V6)
            .ok_or_else(|| anyhow!("no {MAP_BLOCK_V6}"))?;
        let mut t: LpmTrie<&mut MapData, [u8; 16], RuleValue> = LpmTrie::try_from(map)?;
        for p in prefixes {
            t.insert(&Key::new(p.len, p.addr), RuleValue::default(), 0)
                .with_context(|| format!("blocking {:?}/{}", p.addr, p.len))?;
        }
        Ok(())
    }
}
