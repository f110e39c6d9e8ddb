//! Namespaces, CPUs, clocks and the machine: the system plumbing the bench
//! stands on. Everything it creates is removed by a guard's `Drop`.

use std::{
    fs,
    os::fd::AsRawFd,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::util;

/// Runs the rest of the bench in a private mount namespace with a fresh
/// bpffs on /sys/fs/bpf: every pin the bench (and xdp-filter, bpftool, the
/// daemon) makes is invisible to the other users of this machine and
/// vanishes with the process, and theirs cannot collide with ours.
/// Must be called while the process is single-threaded.
pub fn private_mounts() -> Result<()> {
    // SAFETY: plain syscalls with valid, NUL-terminated arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("making / private: {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            bail!(
                "mounting a private bpffs: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// A network namespace made with `ip netns add`, deleted on drop (which
/// also destroys the veths inside it and detaches their XDP programs).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Self> {
        let _ = util::capture(Command::new("ip").args(["netns", "del", name]));
        util::output(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        util::output(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command run inside the namespace with `nsenter --net` (the mount
    /// namespace, and so our private bpffs, stays the same).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg(program);
        c
    }

    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        util::output(self.cmd(program).args(args))
    }

    /// A shell line run with `ip netns exec`, which also remounts /sys so
    /// that /sys/class/net shows this namespace's devices.
    pub fn sysfs_sh(&self, line: &str) -> Result<String> {
        util::output(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", line]))
    }

    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        let out = self.ip(&["-j", "link", "show", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["ifindex"]
            .as_u64()
            .map(|i| i as u32)
            .ok_or_else(|| anyhow!("no ifindex for {iface}"))
    }

    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        let out = self.ip(&["-j", "link", "show", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let s = v[0]["address"]
            .as_str()
            .ok_or_else(|| anyhow!("no MAC for {iface}"))?;
        let mut mac = [0u8; 6];
        for (i, part) in s.split(':').enumerate().take(6) {
            mac[i] = u8::from_str_radix(part, 16)?;
        }
        Ok(mac)
    }

    /// The id of the XDP program attached to `iface`, if any.
    pub fn xdp_prog_id(&self, iface: &str) -> Result<Option<u32>> {
        let out = self.ip(&["-j", "link", "show", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v[0]["xdp"]["prog"]["id"].as_u64().map(|i| i as u32))
    }

    /// (rx packets, rx dropped) of a device.
    pub fn rx_stats(&self, iface: &str) -> Result<(u64, u64)> {
        let out = self.ip(&["-s", "-j", "link", "show", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let rx = &v[0]["stats64"]["rx"];
        Ok((
            rx["packets"].as_u64().unwrap_or(0),
            rx["dropped"].as_u64().unwrap_or(0),
        ))
    }

    /// Runs `f` on a thread that has joined this namespace (sockets it
    /// opens and test runs it makes belong to the namespace).
    pub fn on_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> thread::JoinHandle<Result<T>> {
        let path = self.path();
        thread::spawn(move || {
            join_netns(&path)?;
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = util::capture(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// Moves the calling thread into a network namespace.
pub fn join_netns(path: &str) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid namespace fd; setns affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins a thread (0 = the calling one) to one CPU.
pub fn pin_to_cpu(tid: i32, cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity({tid}, cpu {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// SCHED_FIFO at `prio` for a thread (0 = the calling one). The kernel's
/// real-time throttling still leaves other tasks 5% of the CPU.
pub fn set_fifo(tid: i32, prio: i32) -> Result<()> {
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: a valid sched_param.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) } != 0 {
        bail!(
            "sched_setscheduler({tid}, FIFO {prio}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub fn nproc() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// CPU time a task has run, in ns (`/proc/PID/schedstat`, first field).
pub fn task_runtime_ns(pid: i32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("bad /proc/{pid}/schedstat"))
}

/// Busy time of one CPU in ns from /proc/stat (user, nice, system, irq,
/// softirq, steal; 10 ms resolution).
pub fn cpu_busy_ns(cpu: usize) -> u64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let tag = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&tag)) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * 1_000_000_000 / hz
}

/// NET_RX softirqs run so far on one CPU (/proc/softirqs). Threaded NAPI
/// does not raise them, so during a flood they count other network work
/// on that CPU — whose time this kernel (no IRQ time accounting) charges
/// to whatever thread it interrupted.
pub fn net_rx_softirqs(cpu: usize) -> u64 {
    fs::read_to_string("/proc/softirqs")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.trim_start().starts_with("NET_RX:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(cpu + 1)
                        .and_then(|v| v.parse().ok())
                })
        })
        .unwrap_or(0)
}

/// The kernel thread that runs a device's NAPI when threaded NAPI is on
/// (`napi/IFACE-ID`).
pub fn napi_thread(iface: &str) -> Option<i32> {
    let prefix = format!("napi/{iface}-");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(entry.path().join("comm")) {
            if comm.trim_end().starts_with(&prefix) {
                return Some(pid);
            }
        }
    }
    None
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// 1-minute load average.
pub fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// What the results were measured on.
pub struct Machine {
    pub cpu: String,
    pub nproc: usize,
    pub kernel: String,
    pub date: String,
    pub commit: String,
    pub loadavg_start: f64,
}

impl Machine {
    pub fn probe() -> Self {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let date = util::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let root = util::repo_root();
        let mut commit = util::output(Command::new("git").arg("-C").arg(&root).args([
            "rev-parse",
            "--short=12",
            "HEAD",
        ]))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
        let dirty = util::output(Command::new("git").arg("-C").arg(&root).args([
            "status",
            "--porcelain",
            "--untracked-files=no",
        ]))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
        if dirty {
            commit.push_str("+dirty");
        }
        Self {
            cpu,
            nproc: nproc(),
            kernel,
            date,
            commit,
            loadavg_start: loadavg(),
        }
    }
}
