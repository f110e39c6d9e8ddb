//! A two-namespace lab: `protected` runs the daemon on its veth end, `peer`
//! sends traffic from as many source addresses as a test needs. Everything
//! is created by the test and removed on drop, even when the test fails.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

/// Why a privileged test cannot run here, if it cannot. Under CI (or when
/// MITIGATOR_BIN is set explicitly) a missing privilege or binary is a
/// failure, never a silent skip.
pub fn privileged_skip_reason() -> Option<String> {
    let strict = std::env::var_os("CI").is_some() || std::env::var_os("MITIGATOR_BIN").is_some();
    let reason = if !nix::unistd::geteuid().is_root() {
        Some("needs root (network namespaces, XDP)".to_string())
    } else if crate::daemon::binary().is_none() {
        Some("mitigator binary not built with its eBPF object: run `cargo xtask build`".to_string())
    } else {
        None
    };
    if let (Some(r), true) = (&reason, strict) {
        panic!("privileged test cannot run under CI: {r}");
    }
    reason
}

/// Returns early from a test, printing why, when it cannot run here.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if let Some(reason) = $crate::lab::privileged_skip_reason() {
            eprintln!("SKIP {}: {reason}", module_path!());
            return;
        }
    };
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    /// A pass-everything XDP program on the peer's veth: frames a program
    /// on the protected side sends back with XDP_TX reach the peer only if
    /// the peer veth runs XDP too (see TOOLCHAIN.md).
    peer_xdp: Option<aya::Ebpf>,
    /// Namespace with the protected interface (where the daemon runs).
    pub protected: String,
    /// Namespace of the traffic source.
    pub peer: String,
    /// Interface name inside `protected`.
    pub iface: String,
    /// Interface name inside `peer`.
    pub peer_iface: String,
    /// Address of the protected end.
    pub protected_addr: std::net::Ipv4Addr,
    pub protected_addr6: std::net::Ipv6Addr,
}

pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lab {
    /// Creates `mtg-<tag>-<pid>-<n>-{p,s}` with a veth pair, 10.201.0.1/24 and
    /// fd00:201::1/64 on the protected side, 10.201.0.2/24 and fd00:201::2/64
    /// on the peer.
    pub fn new(tag: &str) -> Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let base = format!("mtg-{tag}-{}-{id}", std::process::id());
        let lab = Lab {
            peer_xdp: None,
            protected: format!("{base}-p"),
            peer: format!("{base}-s"),
            iface: "mtg0".into(),
            peer_iface: "peer0".into(),
            protected_addr: "10.201.0.1".parse().unwrap(),
            protected_addr6: "fd00:201::1".parse().unwrap(),
        };
        ip(&["netns", "add", &lab.protected])?;
        ip(&["netns", "add", &lab.peer])?;
        ip(&[
            "link",
            "add",
            &lab.iface,
            "netns",
            &lab.protected,
            "type",
            "veth",
            "peer",
            "name",
            &lab.peer_iface,
            "netns",
            &lab.peer,
        ])?;
        for (ns, dev, v4, v6) in [
            (
                &lab.protected,
                &lab.iface,
                "10.201.0.1/24",
                "fd00:201::1/64",
            ),
            (
                &lab.peer,
                &lab.peer_iface,
                "10.201.0.2/24",
                "fd00:201::2/64",
            ),
        ] {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // The protected host routes everything else via the peer, like a
        // server on the internet: replies to spoofed sources leave by the
        // veth (and die in the peer namespace, which does not forward).
        ip(&[
            "-n",
            &lab.protected,
            "route",
            "add",
            "default",
            "via",
            "10.201.0.2",
        ])?;
        ip(&[
            "-n",
            &lab.protected,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:201::2",
        ])?;
        Ok(lab)
    }

    /// Adds another source address on the peer side (e.g. 10.201.0.66/24).
    pub fn add_peer_addr(&self, cidr: &str) -> Result<()> {
        let extra: &[&str] = if cidr.contains(':') { &["nodad"] } else { &[] };
        let mut args = vec![
            "-n",
            &self.peer,
            "addr",
            "add",
            cidr,
            "dev",
            &self.peer_iface,
        ];
        args.extend_from_slice(extra);
        ip(&args)
    }

    /// Attaches mitigator's own program with an empty configuration (it
    /// passes everything) to the peer's veth, so XDP_TX replies arrive.
    pub fn attach_peer_pass_program(&mut self) -> Result<()> {
        let object = std::fs::read(crate::testrun::object_path())?;
        let peer = self.peer.clone();
        let iface = self.peer_iface.clone();
        let ebpf = crate::traffic::in_netns(&peer, move || {
            let mut ebpf = aya::Ebpf::load(&object)?;
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(mitigator_common::PROGRAM_NAME)
                .context("no program in object")?
                .try_into()?;
            prog.load()?;
            prog.attach(&iface, aya::programs::XdpMode::Driver)?;
            Ok(ebpf)
        })?;
        self.peer_xdp = Some(ebpf);
        Ok(())
    }

    /// Adds many source addresses on the peer side with one `ip -batch`.
    pub fn add_peer_addrs(&self, cidrs: &[String]) -> Result<()> {
        use std::io::Write;
        let mut script = String::new();
        for cidr in cidrs {
            let extra = if cidr.contains(':') { " nodad" } else { "" };
            script.push_str(&format!("addr add {cidr} dev {}{extra}\n", self.peer_iface));
        }
        let mut child = Command::new("ip")
            .args(["-n", &self.peer, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running ip -batch")?;
        child.stdin.take().unwrap().write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// `ip -d link show` of the protected interface.
    pub fn protected_link(&self) -> Result<String> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.protected,
                "-d",
                "link",
                "show",
                "dev",
                &self.iface,
            ])
            .output()
            .context("running ip link show")?;
        if !out.status.success() {
            bail!(
                "ip link show: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether an XDP program (native or generic) is attached to the
    /// protected interface, as `ip link` reports it.
    pub fn xdp_attached(&self) -> bool {
        self.protected_link()
            .map(|s| s.contains("prog/xdp") || s.contains(" xdp") || s.contains("xdpgeneric"))
            .unwrap_or(false)
    }

    pub fn netns_path(ns: &str) -> String {
        format!("/run/netns/{ns}")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.peer_xdp.take();
        for ns in [&self.protected, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
