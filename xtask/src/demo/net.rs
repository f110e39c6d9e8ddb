//! Namespace plumbing for the demo's in-process traffic: run code on a
//! thread that has joined a lab namespace, and a pass-everything XDP
//! program for the bridge side of the host's veth.

use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread::{self, JoinHandle},
};

use anyhow::{anyhow, bail, Context, Result};

/// Joins the calling thread to the network namespace `/run/netns/NS`.
/// Only this thread moves; sockets it creates stay in that namespace
/// whichever thread uses them later.
fn join(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a namespace fd we just opened; CLONE_NEWNET only affects this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("joining {ns}"));
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns`.
pub fn spawn_in<T, F>(ns: &str, name: &str, f: F) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = ns.to_string();
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            join(&ns)?;
            f()
        })
        .with_context(|| format!("starting thread {name}"))
}

/// Runs `f` inside namespace `ns` and waits for it (to create sockets there).
pub fn run_in<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    spawn_in(ns, "demo-netns", f)?
        .join()
        .map_err(|_| anyhow!("a namespace helper thread panicked"))?
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a #[repr(C)] prefix of union bpf_attr for `cmd`
    // and lives across the call; the kernel zero-extends the rest.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            std::mem::size_of::<A>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A two-instruction XDP program (`return XDP_PASS`) attached with a BPF
/// link to one interface. The link, and so the program, goes away when
/// this is dropped (or when the process dies).
pub struct XdpPass {
    _link: OwnedFd,
}

impl XdpPass {
    /// Attaches to `iface` in namespace `ns`, in native mode.
    pub fn attach(ns: &str, iface: &str) -> Result<XdpPass> {
        let iface = iface.to_string();
        run_in(ns, move || {
            // r0 = 2 (XDP_PASS); exit
            let insns: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];
            let license = b"GPL\0";
            let mut name = [0u8; 16];
            name[..9].copy_from_slice(b"demo_pass");
            let mut load = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_XDP,
                insn_cnt: insns.len() as u32,
                insns: insns.as_ptr() as u64,
                license: license.as_ptr() as u64,
                prog_name: name,
                expected_attach_type: BPF_XDP,
                ..Default::default()
            };
            let prog = bpf(BPF_PROG_LOAD, &mut load).context("loading the XDP_PASS program")?;
            let c = CString::new(iface.clone())?;
            // SAFETY: a valid C string; looked up in this thread's namespace.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {iface}");
            }
            let mut link = LinkCreateAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type: BPF_XDP,
                flags: 0,
            };
            let link = bpf(BPF_LINK_CREATE, &mut link)
                .with_context(|| format!("attaching XDP_PASS to {iface}"))?;
            Ok(XdpPass { _link: link })
        })
    }
}
