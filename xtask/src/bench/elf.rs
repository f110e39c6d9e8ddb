//! Tiny XDP programs written as ELF objects at run time, so the bench needs
//! no C compiler and no second eBPF crate: the floor (`XDP_DROP`), the
//! receiver's stand-in (`XDP_PASS`) and the traffic generator (`XDP_TX`).
//!
//! Each program is two instructions, `r0 = ACTION; exit`, in a section named
//! `xdp` with a global function symbol and a `license` section: exactly what
//! aya's object parser needs to find and load an XDP program.

use anyhow::{anyhow, Context, Result};
use aya::{programs::Xdp, Ebpf};
use object::{
    write::{Object, Symbol, SymbolSection},
    Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The program's function name for an action.
pub fn name(action: u32) -> &'static str {
    match action {
        XDP_DROP => "bench_drop",
        XDP_PASS => "bench_pass",
        XDP_TX => "bench_tx",
        _ => "bench_other",
    }
}

/// `r0 = action; exit` as an ELF relocatable object for the BPF target.
pub fn object(action: u32) -> Result<Vec<u8>> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let text = obj.add_section(Vec::new(), b"xdp".to_vec(), SectionKind::Text);
    let mut code = Vec::with_capacity(16);
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm = action
    code.extend_from_slice(&[0xb7, 0x00, 0x00, 0x00]);
    code.extend_from_slice(&(action as i32).to_le_bytes());
    // BPF_JMP | BPF_EXIT
    code.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]);
    let offset = obj.append_section_data(text, &code, 8);
    obj.add_symbol(Symbol {
        name: name(action).as_bytes().to_vec(),
        value: offset,
        size: code.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    let license = obj.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    obj.append_section_data(license, b"GPL\0", 1);
    obj.write()
        .map_err(|e| anyhow!("writing the {} object: {e}", name(action)))
}

/// Copies object bytes into an 8-byte aligned buffer (the ELF parser reads
/// headers in place) and loads them.
pub fn load_bytes(bytes: &[u8]) -> Result<Ebpf> {
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
    let aligned = &bytemuck::cast_slice::<u64, u8>(&words)[..bytes.len()];
    Ebpf::load(aligned).context("loading a BPF object")
}

/// A loaded tiny program (the `Ebpf` owns it; keep it alive).
pub struct Tiny {
    pub ebpf: Ebpf,
    pub action: u32,
}

impl Tiny {
    pub fn load(action: u32) -> Result<Self> {
        let mut ebpf = load_bytes(&object(action)?)?;
        let prog: &mut Xdp = ebpf
            .program_mut(name(action))
            .ok_or_else(|| anyhow!("no program {} in the generated object", name(action)))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("loading {} (verifier)", name(action)))?;
        Ok(Self { ebpf, action })
    }

    pub fn prog(&self) -> &Xdp {
        self.ebpf
            .program(name(self.action))
            .expect("checked at load")
            .try_into()
            .expect("an XDP program")
    }

    pub fn prog_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(name(self.action))
            .expect("checked at load")
            .try_into()
            .expect("an XDP program")
    }
}
