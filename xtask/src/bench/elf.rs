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

/// The spoofing generator's name (see [`spoof_code`]).
pub const SPOOF_TX: &str = "bench_spoof_tx";

/// One BPF instruction: opcode, dst and src registers, offset, immediate.
fn insn(code: &mut Vec<u8>, op: u8, dst: u8, src: u8, off: i16, imm: i32) {
    code.push(op);
    code.push((src << 4) | (dst & 0x0f));
    code.extend_from_slice(&off.to_le_bytes());
    code.extend_from_slice(&imm.to_le_bytes());
}

/// `r0 = action; exit`.
fn action_code(action: u32) -> Vec<u8> {
    let mut c = Vec::new();
    insn(&mut c, 0xb7, 0, 0, 0, action as i32); // r0 = action
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    c
}

/// A generator that spoofs sources: writes a random 16-bit word `w` over
/// the low half of the IPv4 source address (offset 28 of an untagged
/// frame) and `!w` over the IP identification (18) and the TCP urgent
/// pointer (52), then returns XDP_TX. Built from a frame whose
/// identification and urgent pointer are already `!` its source's low
/// word, the IP and TCP checksums stay valid (w + !w is constant in
/// ones'-complement arithmetic). Frames shorter than 54 bytes go out as
/// they are.
fn spoof_code() -> Vec<u8> {
    let mut c = Vec::new();
    insn(&mut c, 0xbf, 7, 1, 0, 0); // r7 = r1 (ctx)
    insn(&mut c, 0x85, 0, 0, 0, 7); // call bpf_get_prandom_u32
    insn(&mut c, 0xbf, 6, 0, 0, 0); // r6 = r0
    insn(&mut c, 0x61, 2, 7, 0, 0); // r2 = ctx->data
    insn(&mut c, 0x61, 3, 7, 4, 0); // r3 = ctx->data_end
    insn(&mut c, 0xbf, 4, 2, 0, 0); // r4 = r2
    insn(&mut c, 0x07, 4, 0, 0, 54); // r4 += 54
    insn(&mut c, 0x2d, 4, 3, 4, 0); // if r4 > r3 goto +4 (to r0 = XDP_TX)
    insn(&mut c, 0x6b, 2, 6, 28, 0); // *(u16 *)(r2 + 28) = r6
    insn(&mut c, 0xa7, 6, 0, 0, -1); // r6 ^= -1
    insn(&mut c, 0x6b, 2, 6, 18, 0); // *(u16 *)(r2 + 18) = r6
    insn(&mut c, 0x6b, 2, 6, 52, 0); // *(u16 *)(r2 + 52) = r6
    insn(&mut c, 0xb7, 0, 0, 0, XDP_TX as i32); // r0 = XDP_TX
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    c
}

/// The floor that reads the packet (see [`read_drop_code`]).
pub const READ_DROP: &str = "bench_read_drop";

/// Reads the Ethernet type and the IPv4 source address (the first cache
/// line of the frame), then `XDP_DROP`: the least any filter has to do.
fn read_drop_code() -> Vec<u8> {
    let mut c = Vec::new();
    insn(&mut c, 0x61, 2, 1, 0, 0); // r2 = ctx->data
    insn(&mut c, 0x61, 3, 1, 4, 0); // r3 = ctx->data_end
    insn(&mut c, 0xbf, 4, 2, 0, 0); // r4 = r2
    insn(&mut c, 0x07, 4, 0, 0, 30); // r4 += 30
    insn(&mut c, 0x2d, 4, 3, 2, 0); // if r4 > r3 goto +2
    insn(&mut c, 0x69, 5, 2, 12, 0); // r5 = *(u16 *)(r2 + 12)
    insn(&mut c, 0x61, 5, 2, 26, 0); // r5 = *(u32 *)(r2 + 26)
    insn(&mut c, 0xb7, 0, 0, 0, XDP_DROP as i32); // r0 = XDP_DROP
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    c
}

/// A one-program ELF relocatable object for the BPF target.
fn elf(name: &str, code: &[u8]) -> Result<Vec<u8>> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let text = obj.add_section(Vec::new(), b"xdp".to_vec(), SectionKind::Text);
    let offset = obj.append_section_data(text, code, 8);
    obj.add_symbol(Symbol {
        name: name.as_bytes().to_vec(),
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
        .map_err(|e| anyhow!("writing the {name} object: {e}"))
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
    pub name: &'static str,
}

impl Tiny {
    pub fn load(action: u32) -> Result<Self> {
        Self::load_code(name(action), &action_code(action))
    }

    /// The floor that reads the packet's first cache line (see [`read_drop_code`]).
    pub fn read_drop() -> Result<Self> {
        Self::load_code(READ_DROP, &read_drop_code())
    }

    /// The source-spoofing generator (see [`spoof_code`]).
    pub fn spoofer() -> Result<Self> {
        Self::load_code(SPOOF_TX, &spoof_code())
    }

    fn load_code(name: &'static str, code: &[u8]) -> Result<Self> {
        let mut ebpf = load_bytes(&elf(name, code)?)?;
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name} in the generated object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("loading {name} (verifier)"))?;
        Ok(Self { ebpf, name })
    }

    pub fn prog(&self) -> &Xdp {
        self.ebpf
            .program(self.name)
            .expect("checked at load")
            .try_into()
            .expect("an XDP program")
    }

    pub fn prog_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(self.name)
            .expect("checked at load")
            .try_into()
            .expect("an XDP program")
    }
}
