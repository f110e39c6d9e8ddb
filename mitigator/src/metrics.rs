//! Prometheus metrics in the OpenMetrics text format (`prometheus-client`),
//! served over plain HTTP on `GET /metrics`.
//!
//! Datapath numbers (counters, rule counts, map fill) are read when scraped,
//! through a [`Source`], so they are never stale and cost nothing between
//! scrapes. State the daemon owns (escalation levels) lives in handles the
//! daemon updates, e.g. [`Escalation::set`].
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `mitigator_packets_total`, `mitigator_bytes_total` | counter | `reason`, `class` |
//! | `mitigator_datapath_events_total` | counter | `event` |
//! | `mitigator_rules` | gauge | `kind` (block/allow), `source` (operator/auto) |
//! | `mitigator_map_entries`, `mitigator_map_capacity` | gauge | `map` |
//! | `mitigator_escalation_level` | gauge | `class` (syn/udp/icmp/frag) |
//! | `mitigator_monitor_mode` | gauge | |
//! | `mitigator_up` | gauge | (1 when the datapath could be read at this scrape) |
//! | `mitigator_start_time_seconds` | gauge | |
//! | `mitigator_build_info` | info | `version` |
//! | `mitigator_datapath_info` | info | `interface`, `attach_mode` |

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        info::Info,
        MetricType,
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use crate::datapath::{Events, MapFill};

/// `Content-Type` of the OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Attack classes with an escalation ladder (as `mitigator escalate` names them).
pub const ESCALATION_CLASSES: [&str; 4] = ["syn", "udp", "icmp", "frag"];

/// One (reason, class) cell of the datapath's verdict counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterSample {
    pub reason: &'static str,
    pub class: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Number of rules of one kind from one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCount {
    pub kind: &'static str,
    pub source: &'static str,
    pub count: u64,
}

/// Everything read from the daemon at one scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub interface: String,
    pub attach_mode: String,
    pub monitor: bool,
    pub counters: Vec<CounterSample>,
    pub events: Option<Events>,
    pub rules: Vec<RuleCount>,
    pub maps: Vec<MapFill>,
}

/// Where scrape-time numbers come from (the engine in the daemon, a fixed
/// snapshot in tests). Called on a blocking thread.
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> Result<Snapshot, String>;
}

/// The escalation hook: whoever runs the escalation ladder (issue 5) sets
/// the current level per attack class here; 0 is "observe" and higher
/// numbers are further up the ladder. Cheap to clone, safe to share.
#[derive(Clone, Debug, Default)]
pub struct Escalation {
    levels: Family<Vec<(String, String)>, Gauge>,
}

impl Escalation {
    pub fn set(&self, class: &str, level: i64) {
        self.levels
            .get_or_create(&vec![("class".to_string(), class.to_string())])
            .set(level);
    }

    pub fn get(&self, class: &str) -> i64 {
        self.levels
            .get(&vec![("class".to_string(), class.to_string())])
            .map_or(0, |g| g.get())
    }
}

/// The registry plus the handles the daemon updates.
pub struct Metrics {
    registry: Registry,
    escalation: Escalation,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// `started` is the daemon's start time in unix seconds.
    pub fn new(source: Arc<dyn Source>, started: f64) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "mitigator_build",
            "Build of the running daemon",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let escalation = Escalation::default();
        for class in ESCALATION_CLASSES {
            escalation.set(class, 0);
        }
        registry.register(
            "mitigator_escalation_level",
            "Current escalation level per attack class (0 = observe)",
            escalation.levels.clone(),
        );
        registry.register_collector(Box::new(ScrapeCollector { source, started }));
        Self {
            registry,
            escalation,
        }
    }

    pub fn escalation(&self) -> &Escalation {
        &self.escalation
    }

    /// The OpenMetrics text of every metric, read now.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

struct ScrapeCollector {
    source: Arc<dyn Source>,
    started: f64,
}

impl fmt::Debug for ScrapeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeCollector").finish_non_exhaustive()
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue + Copy,
) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        gauge(
            &mut encoder,
            "mitigator_start_time_seconds",
            "Start time of the daemon since the unix epoch in seconds.",
            self.started,
        )?;
        let snap = match self.source.snapshot() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics: cannot read the datapath");
                return gauge(
                    &mut encoder,
                    "mitigator_up",
                    "1 when the datapath could be read at this scrape.",
                    0i64,
                );
            }
        };
        gauge(
            &mut encoder,
            "mitigator_up",
            "1 when the datapath could be read at this scrape.",
            1i64,
        )?;
        gauge(
            &mut encoder,
            "mitigator_monitor_mode",
            "1 in monitor (dry-run) mode: nothing is dropped.",
            i64::from(snap.monitor),
        )?;
        {
            let info = Info::new(vec![
                ("interface", snap.interface.as_str()),
                ("attach_mode", snap.attach_mode.as_str()),
            ]);
            info.encode(encoder.encode_descriptor(
                "mitigator_datapath",
                "Interface and XDP attach mode.",
                None,
                MetricType::Info,
            )?)?;
        }
        for (name, help, value) in [
            (
                "mitigator_packets",
                "Packets seen by the XDP program, by verdict reason and traffic class.",
                (|c: &CounterSample| c.packets) as fn(&CounterSample) -> u64,
            ),
            (
                "mitigator_bytes",
                "Bytes seen by the XDP program, by verdict reason and traffic class.",
                |c: &CounterSample| c.bytes,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in &snap.counters {
                let labels = [("reason", c.reason), ("class", c.class)];
                ConstCounter::new(value(c)).encode(m.encode_family(&labels)?)?;
            }
        }
        if let Some(ev) = snap.events {
            let mut m = encoder.encode_descriptor(
                "mitigator_datapath_events",
                "Rare datapath events: new sources tracked, samples taken/capped/lost, SYN cookies for ports without a listener.",
                None,
                MetricType::Counter,
            )?;
            for (event, v) in [
                ("source_inserted", ev.sources_inserted),
                ("sample", ev.samples),
                ("sample_capped", ev.samples_capped),
                ("sample_lost", ev.samples_lost),
                ("syn_no_listener", ev.syn_no_listener),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("event", event)])?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "mitigator_rules",
                "Rules in force, by kind (block/allow) and source (operator/auto).",
                None,
                MetricType::Gauge,
            )?;
            for r in &snap.rules {
                let labels = [("kind", r.kind), ("source", r.source)];
                ConstGauge::new(r.count).encode(m.encode_family(&labels)?)?;
            }
        }
        for (name, help, capacity) in [
            ("mitigator_map_entries", "Entries in a datapath map.", false),
            (
                "mitigator_map_capacity",
                "Capacity of a datapath map (entries).",
                true,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for f in &snap.maps {
                let v = if capacity { f.capacity } else { f.entries };
                ConstGauge::new(v).encode(m.encode_family(&[("map", f.name)])?)?;
            }
        }
        Ok(())
    }
}

/// A value that is expensive to compute (walking maps with a million
/// entries): recomputed on every call while it is cheap, otherwise reused
/// for `MAX_AGE_FACTOR` times as long as computing it took (at most
/// `MAX_AGE`), so a scrape never holds the engine for long, often.
pub struct Adaptive<T> {
    cached: Mutex<Option<(Instant, Duration, T)>>,
}

impl<T: Clone> Default for Adaptive<T> {
    fn default() -> Self {
        Self {
            cached: Mutex::new(None),
        }
    }
}

impl<T: Clone> Adaptive<T> {
    /// Below this, a value is always recomputed.
    pub const CHEAP: Duration = Duration::from_millis(20);
    pub const MAX_AGE_FACTOR: u32 = 20;
    pub const MAX_AGE: Duration = Duration::from_secs(60);

    pub fn get(&self, compute: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, took, value)) = cached.as_ref() {
            let max_age = (*took * Self::MAX_AGE_FACTOR).min(Self::MAX_AGE);
            if *took >= Self::CHEAP && at.elapsed() < max_age {
                return Ok(value.clone());
            }
        }
        let start = Instant::now();
        let value = compute()?;
        *cached = Some((Instant::now(), start.elapsed(), value.clone()));
        Ok(value)
    }
}

// ---------------------------------------------------------------------------
// HTTP: a deliberately small HTTP/1.1 responder. One request per connection,
// bounded header size and time, a cap on concurrent connections.
// ---------------------------------------------------------------------------

/// Largest request head read (request line + headers).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for metrics on {addr} (set --metrics-addr, or \"off\")")
    })
}

/// Serves `GET /metrics` until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, metrics)).await {
                        Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
                        Err(_) => debug!(%peer, "metrics connection timed out"),
                        Ok(Ok(())) => {}
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a complete request head (`GET /metrics HTTP/1.1\r\n...`).
pub fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::NotFound
    }
}

/// Reads the request head: up to the blank line, at most `MAX_REQUEST_HEAD`.
/// `None` when the head is too large.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Some(buf));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(buf));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(mut stream: TcpStream, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let route = match read_head(&mut stream).await? {
        None => {
            let body = "request head too large\n";
            write_response(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain; charset=utf-8",
                body,
                false,
            )
            .await?;
            // Read what the client still sends (bounded), so closing with
            // unread data does not reset the connection before it reads
            // the answer.
            let mut sink = [0u8; 4096];
            let mut left: usize = 1024 * 1024;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
            return Ok(());
        }
        Some(head) if head.is_empty() => return Ok(()),
        Some(head) => route(&head),
    };
    match route {
        Route::Metrics { head_only } => {
            let body = tokio::task::spawn_blocking(move || metrics.render()).await?;
            write_response(&mut stream, "200 OK", CONTENT_TYPE, &body, head_only).await
        }
        Route::NotFound => {
            write_response(
                &mut stream,
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found: metrics are at /metrics\n",
                false,
            )
            .await
        }
        Route::MethodNotAllowed => {
            write_response(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                "only GET and HEAD\n",
                false,
            )
            .await
        }
        Route::BadRequest => {
            write_response(
                &mut stream,
                "400 Bad Request",
                "text/plain; charset=utf-8",
                "bad request\n",
                false,
            )
            .await
        }
    }
}

async fn write_response(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> anyhow::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<Snapshot, String>);

    impl Source for Fixed {
        fn snapshot(&self) -> Result<Snapshot, String> {
            self.0.clone()
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            interface: "eth0".into(),
            attach_mode: "native".into(),
            monitor: false,
            counters: vec![
                CounterSample {
                    reason: "pass",
                    class: "udp",
                    packets: 10,
                    bytes: 1000,
                },
                CounterSample {
                    reason: "drop_blocklist",
                    class: "udp",
                    packets: 7,
                    bytes: 420,
                },
            ],
            events: Some(Events {
                samples: 3,
                ..Default::default()
            }),
            rules: vec![
                RuleCount {
                    kind: "block",
                    source: "operator",
                    count: 2,
                },
                RuleCount {
                    kind: "allow",
                    source: "auto",
                    count: 0,
                },
            ],
            maps: vec![MapFill {
                name: "block_v4",
                entries: 2,
                capacity: 2097152,
            }],
        }
    }

    #[test]
    fn renders_every_metric_in_openmetrics_text() {
        let m = Metrics::new(Arc::new(Fixed(Ok(snapshot()))), 1700000000.0);
        m.escalation().set("syn", 2);
        let text = m.render();
        for line in [
            "# TYPE mitigator_packets counter",
            "mitigator_packets_total{reason=\"drop_blocklist\",class=\"udp\"} 7",
            "mitigator_packets_total{reason=\"pass\",class=\"udp\"} 10",
            "mitigator_bytes_total{reason=\"drop_blocklist\",class=\"udp\"} 420",
            "mitigator_datapath_events_total{event=\"sample\"} 3",
            "mitigator_rules{kind=\"block\",source=\"operator\"} 2",
            "mitigator_rules{kind=\"allow\",source=\"auto\"} 0",
            "mitigator_map_entries{map=\"block_v4\"} 2",
            "mitigator_map_capacity{map=\"block_v4\"} 2097152",
            "mitigator_escalation_level{class=\"syn\"} 2",
            "mitigator_escalation_level{class=\"frag\"} 0",
            "mitigator_up 1",
            "mitigator_monitor_mode 0",
            "mitigator_start_time_seconds 1700000000.0",
            "mitigator_datapath_info{interface=\"eth0\",attach_mode=\"native\"} 1",
            &format!(
                "mitigator_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(m.escalation().get("syn"), 2);
    }

    #[test]
    fn unreadable_datapath_reports_down() {
        let m = Metrics::new(Arc::new(Fixed(Err("map gone".into()))), 1.0);
        let text = m.render();
        assert!(text.lines().any(|l| l == "mitigator_up 0"), "{text}");
        assert!(!text.contains("mitigator_packets_total"));
        assert!(text.contains("mitigator_build_info{version="), "{text}");
    }

    #[test]
    fn routes_requests() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }

    #[test]
    fn adaptive_recomputes_cheap_values_and_reuses_slow_ones() {
        let a: Adaptive<u32> = Adaptive::default();
        assert_eq!(a.get(|| Ok(1)), Ok(1));
        assert_eq!(a.get(|| Ok(2)), Ok(2), "cheap: always fresh");
        let slow: Adaptive<u32> = Adaptive::default();
        let v = slow.get(|| {
            std::thread::sleep(Duration::from_millis(25));
            Ok(1)
        });
        assert_eq!(v, Ok(1));
        assert_eq!(slow.get(|| Ok(2)), Ok(1), "slow: reused for a while");
        assert_eq!(slow.get(|| Err::<u32, _>("x".into())), Ok(1));
    }

    #[tokio::test]
    async fn serves_http() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Arc::new(Metrics::new(Arc::new(Fixed(Ok(snapshot()))), 1.0));
        let server = tokio::spawn(serve(listener, m));
        let get = |req: &'static [u8]| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.contains("mitigator_packets_total{reason=\"pass\",class=\"udp\"} 10"));
        let head_only = get(b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head_only.starts_with("HTTP/1.1 200 OK\r\n") && head_only.ends_with("\r\n\r\n"));
        assert!(get(b"GET /x HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(get(b"DELETE /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405 "));
        assert!(get(b"garbage\r\n\r\n").await.starts_with("HTTP/1.1 400 "));
        let huge: &'static [u8] = Box::leak(vec![b'a'; 20_000].into_boxed_slice());
        assert!(get(huge).await.starts_with("HTTP/1.1 431 "));
        // The server is still up after all that.
        assert!(get(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200 OK"));
        server.abort();
    }
}
