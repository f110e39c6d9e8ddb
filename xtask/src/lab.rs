//! Hidden traffic helpers for the demo lab, run inside a namespace by
//! re-executing xtask under `nsenter`. Both are bounded in count and time and
//! print one JSON document on stdout, so the lab needs no other tools.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, Write},
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;

const MAX_COUNT: u32 = 100_000;
const MAX_SENDER_SECONDS: u64 = 60;
const MAX_LISTENER_SECONDS: u64 = 120;

#[derive(clap::Args)]
pub struct SendArgs {
    /// Destination address and port.
    #[arg(long)]
    to: SocketAddr,
    /// Datagrams to send (at most 100000).
    #[arg(long, default_value_t = 200)]
    count: u32,
    /// Datagrams per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Payload bytes per datagram.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

/// Send `count` datagrams paced at `rate`; print `{"sent":..,"errors":..}`.
pub fn send(args: &SendArgs) -> Result<()> {
    if args.count > MAX_COUNT || args.rate == 0 || args.size > 1400 {
        bail!("count must be at most {MAX_COUNT}, rate above 0, size at most 1400");
    }
    let duration = Duration::from_secs_f64(f64::from(args.count) / f64::from(args.rate));
    if duration > Duration::from_secs(MAX_SENDER_SECONDS) {
        bail!("count/rate would take {duration:?}, more than {MAX_SENDER_SECONDS}s");
    }
    let bind = if args.to.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).context("binding the sender socket")?;
    let payload = vec![0x6d_u8; args.size];
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let start = Instant::now();
    let (mut sent, mut errors) = (0u32, 0u32);
    for i in 0..args.count {
        // Pacing: wait for this datagram's slot.
        let due = start + interval * i;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        match socket.send_to(&payload, args.to) {
            Ok(_) => sent += 1,
            Err(_) => errors += 1,
        }
    }
    let doc = json!({
        "to": args.to.to_string(),
        "sent": sent,
        "errors": errors,
        "elapsed_ms": start.elapsed().as_millis() as u64,
    });
    println!("{doc}");
    Ok(())
}

#[derive(clap::Args)]
pub struct ListenArgs {
    /// UDP port to listen on (all addresses).
    #[arg(long)]
    port: u16,
    /// Give up after this many seconds in any case (at most 120).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// After stdin closes, stop once no datagram arrived for this long.
    #[arg(long, default_value_t = 300)]
    quiet_ms: u64,
}

/// Count datagrams per source address until stdin closes (then a short
/// quiet period) or the time limit. Prints `{"ready":true}` once bound and
/// `{"received":N,"by_source":{...}}` at the end.
pub fn listen(args: &ListenArgs) -> Result<()> {
    if args.seconds > MAX_LISTENER_SECONDS {
        bail!("--seconds must be at most {MAX_LISTENER_SECONDS}");
    }
    let socket = UdpSocket::bind(("0.0.0.0", args.port)).context("binding the listener socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        thread::spawn(move || {
            // Any line or end of input means "the senders are done".
            let mut line = String::new();
            let _ = io::stdin().lock().read_line(&mut line);
            stop.store(true, Ordering::SeqCst);
        });
    }

    println!("{}", json!({ "ready": true }));
    io::stdout().flush()?;

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let quiet = Duration::from_millis(args.quiet_ms);
    let mut by_source: BTreeMap<String, u64> = BTreeMap::new();
    let mut received = 0u64;
    let mut last_event = Instant::now();
    let mut stop_seen = false;
    let mut buf = [0u8; 2048];
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        if !stop_seen && stop.load(Ordering::SeqCst) {
            stop_seen = true;
            last_event = now;
        }
        if stop_seen && now.duration_since(last_event) >= quiet {
            break;
        }
        match socket.recv_from(&mut buf) {
            Ok((_, from)) => {
                received += 1;
                *by_source.entry(from.ip().to_string()).or_default() += 1;
                last_event = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("receiving"),
        }
    }
    println!(
        "{}",
        json!({ "received": received, "by_source": by_source, "timed_out": timed_out })
    );
    Ok(())
}
