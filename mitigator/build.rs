//! Embeds the XDP object built by `cargo xtask build`.
//!
//! The object is built by a different toolchain (Debian's rustc with
//! bpf-linker, see xtask), so this script only looks for it. Without it the
//! crate still builds (for `cargo check`, clippy and unit tests) with an
//! empty object, and the binary says so when asked to load it.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/ebpf/bpfel-unknown-none/release/mitigator");
    let source = env::var_os("MITIGATOR_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or(default);
    println!("cargo:rerun-if-env-changed=MITIGATOR_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", source.display());

    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("mitigator.bpf.o");
    match fs::read(&source) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=no eBPF object at {}: building without it (run `cargo xtask build`)",
                source.display()
            );
            fs::write(&out, []).unwrap();
        }
    }
}
