//! `weir loadgen`: a WebSocket load generator that measures what clients see.
//!
//! Each connection pipelines up to `--pipeline` protobuf batches and matches answers to
//! requests by `req_guid`. It reports acknowledged events per second, the answer latency
//! distribution, and the server's resident memory (read from its `/metrics`, sampled
//! every second; the peak is reported). With `--idle` it opens idle connections instead
//! and reports server memory per connection.
//!
//! Shapes: `--rate` paces every connection (open loop: slow answers show as latency, not
//! as a lower send rate); `--ramp` spreads the connections' start over an interval
//! (0: all at once, a connection storm); `--storm-at` drops a `--storm-fraction` of the
//! connections at that moment and reconnects them at once, while the others keep
//! sending. Latency is reported over the whole run and again for batches sent after
//! `--warmup`, so the tail of a storm is seen apart from the steady state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use prost::Message;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use weir_proto::{Code, Event, SendEventRequest, SendEventResponse};

/// Options of `weir loadgen`.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadgenOptions {
    /// WebSocket endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/api/v1/events")]
    pub url: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Bytes per event payload.
    #[arg(long, default_value_t = 200)]
    pub event_bytes: usize,
    /// Batches each connection keeps in flight.
    #[arg(long, default_value_t = 4)]
    pub pipeline: usize,
    /// How long to send.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Target events per second over all connections; 0 sends as fast as answers allow.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// The server's metrics URL, to read its resident memory.
    #[arg(long, default_value = "http://127.0.0.1:9090/metrics")]
    pub metrics_url: String,
    /// Open this many idle connections and report server memory per connection.
    #[arg(long)]
    pub idle: Option<usize>,
    /// Spread the connections' start evenly over this long; 0 opens them all at once.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// Report latency again for batches sent after this long.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// At this moment drop `--storm-fraction` of the connections and reconnect them at
    /// once (a reconnect storm), while the others keep sending.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub storm_at: Option<Duration>,
    /// The share of connections the storm drops and reconnects.
    #[arg(long, default_value_t = 0.5)]
    pub storm_fraction: f64,
}

/// What one connection saw. Latencies are kept as plain samples (a few per second
/// per connection) and put into histograms only at the end: a histogram per
/// connection would cost 10,000 connections gigabytes of client memory.
#[derive(Default)]
struct ConnectionReport {
    acked_events: u64,
    failed_events: u64,
    failed_batches: u64,
    /// Every batch's answer latency, microseconds.
    latency_us: Vec<u64>,
    /// Those of batches sent after `--warmup`.
    steady_us: Vec<u64>,
}

/// The whole run's figures.
struct RunReport {
    acked_events: u64,
    failed_events: u64,
    failed_batches: u64,
    latency_us: Histogram<u64>,
    steady_us: Histogram<u64>,
}

impl RunReport {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            acked_events: 0,
            failed_events: 0,
            failed_batches: 0,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            steady_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        })
    }

    fn add(&mut self, connection: &ConnectionReport) {
        self.acked_events += connection.acked_events;
        self.failed_events += connection.failed_events;
        self.failed_batches += connection.failed_batches;
        for (all, samples) in [
            (&mut self.latency_us, &connection.latency_us),
            (&mut self.steady_us, &connection.steady_us),
        ] {
            for &micros in samples {
                all.saturating_record(micros);
            }
        }
    }
}

/// Prints one latency distribution.
fn print_latency(label: &str, latency: &Histogram<u64>) {
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{label} p50={:.2} p99={:.2} p999={:.2} max={:.2} batches={}",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latency.max() as f64 / 1000.0,
        latency.len()
    );
}

/// Runs the load and prints the report (a client tool: setup, the connection tasks and
/// the report in one place, read top to bottom).
pub async fn run(options: LoadgenOptions) -> anyhow::Result<()> {
    if let Some(count) = options.idle {
        return idle(&options, count).await;
    }
    if options.connections == 0 || options.batch_size == 0 || options.pipeline == 0 {
        bail!("--connections, --batch-size and --pipeline must be at least 1");
    }
    let rss_before = server_rss(&options.metrics_url).await;
    let started = Instant::now();
    let deadline = started + options.duration;
    let peak_rss = tokio::spawn(peak_rss(options.metrics_url.clone(), deadline));
    let storm_size = (options.connections as f64 * options.storm_fraction.clamp(0.0, 1.0)) as usize;
    let mut tasks = Vec::with_capacity(options.connections);
    for n in 0..options.connections {
        let options = options.clone();
        let plan = Plan {
            start: started + options.ramp.mul_f64(n as f64 / options.connections as f64),
            steady_from: started + options.warmup,
            storm: options
                .storm_at
                .filter(|_| n < storm_size)
                .map(|at| started + at),
            deadline,
        };
        tasks.push(tokio::spawn(async move { drive(n, &options, plan).await }));
    }
    let mut total = RunReport::new()?;
    let mut errors = 0;
    for task in tasks {
        match task.await? {
            Ok(report) => total.add(&report),
            Err(error) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("connection failed: {error:#}");
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = server_rss(&options.metrics_url).await;
    let rss_peak = peak_rss.await.unwrap_or(None);
    println!(
        "connections={} batch_size={} event_bytes={} pipeline={} rate={} duration={:.1}s",
        options.connections,
        options.batch_size,
        options.event_bytes,
        options.pipeline,
        options.rate,
        elapsed
    );
    println!(
        "acked_events={} acked_events_per_s={:.0} failed_events={} failed_batches={} connection_errors={}",
        total.acked_events,
        total.acked_events as f64 / elapsed,
        total.failed_events,
        total.failed_batches,
        errors
    );
    print_latency("ack_latency_ms", &total.latency_us);
    if !options.warmup.is_zero() {
        let label = format!(
            "ack_latency_ms_after_{}",
            humantime::format_duration(options.warmup)
        );
        print_latency(&label, &total.steady_us);
    }
    match (rss_before, rss_after, rss_peak) {
        (Some(before), Some(after), peak) => println!(
            "server_rss_mb before={:.1} peak={:.1} after={:.1}",
            before as f64 / 1e6,
            peak.unwrap_or(after).max(after) as f64 / 1e6,
            after as f64 / 1e6
        ),
        _ => println!(
            "server_rss_mb unavailable (no process metrics at {})",
            options.metrics_url
        ),
    }
    Ok(())
}

fn batch_events(options: &LoadgenOptions, connection: usize) -> Vec<Event> {
    let payload = Bytes::from(
        (0..options.event_bytes)
            .map(|i| b'a' + ((i + connection) % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    (0..options.batch_size)
        .map(|i| Event {
            event_bytes: payload.clone(),
            r#type: format!("loadgen_{}", i % 4),
            partition_key: String::new(),
        })
        .collect()
}

async fn connect(
    url: &str,
    id: &str,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("X-User-ID", id.parse().context("connection id")?);
    // Small buffers (tungstenite's default read buffer is 128 KiB: 1.3 GB for 10,000
    // connections) and no Nagle delay, like a mobile client sending one batch at a time.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(socket)
}

/// When one connection starts, stops, and drops and reconnects.
struct Plan {
    start: Instant,
    steady_from: Instant,
    storm: Option<Instant>,
    deadline: Instant,
}

/// Runs one connection's plan: connect at its start, send until the deadline, and
/// reconnect once at the storm if it is in it (answers still awaited are lost with the
/// old connection and counted as failed batches).
async fn drive(n: usize, options: &LoadgenOptions, plan: Plan) -> anyhow::Result<ConnectionReport> {
    tokio::time::sleep_until(plan.start.into()).await;
    let mut report = ConnectionReport::default();
    let mut until = plan.storm.unwrap_or(plan.deadline).min(plan.deadline);
    for attempt in 0.. {
        // A new identity per connection: the server may not have seen the old one go
        // yet, and `identity.duplicates: reject` would refuse the same one.
        let id = format!("loadgen-{n}-{attempt}-{}", std::process::id());
        let socket = connect(&options.url, &id).await?;
        let lost = send_until(n, options, socket, &plan, until, &mut report).await?;
        report.failed_batches += lost;
        if until >= plan.deadline {
            break;
        }
        until = plan.deadline;
    }
    Ok(report)
}

/// Sends on one connection until `until`; then waits for the answers still due, unless
/// `until` is a storm, which drops the connection at once. Returns the batches whose
/// answers were dropped with it.
async fn send_until(
    n: usize,
    options: &LoadgenOptions,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    plan: &Plan,
    until: Instant,
    report: &mut ConnectionReport,
) -> anyhow::Result<u64> {
    let storm = until < plan.deadline;
    let deadline = until;
    let (mut sink, mut stream) = socket.split();
    let mut request = SendEventRequest {
        req_guid: String::new(),
        sent_time: None,
        events: batch_events(options, n),
    };
    let mut outstanding: HashMap<String, Instant> = HashMap::new();
    let mut sequence = 0u64;
    // With a target rate, each connection sends a batch per tick (open loop, so slow
    // answers show up as latency rather than as a lower send rate).
    let mut ticker = (options.rate > 0).then(|| {
        let per_connection = options.rate as f64 / options.connections as f64;
        let period = Duration::from_secs_f64(options.batch_size as f64 / per_connection);
        let start =
            tokio::time::Instant::now() + period.mul_f64(n as f64 / options.connections as f64);
        let mut t = tokio::time::interval_at(start, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let sending = Instant::now() < deadline;
        if !sending && (storm || outstanding.is_empty()) {
            break;
        }
        let may_send = sending && outstanding.len() < options.pipeline;
        tokio::select! {
            _ = async {
                if let Some(t) = &mut ticker {
                    t.tick().await;
                }
            }, if may_send => {
                sequence += 1;
                request.req_guid = format!("{n}-{sequence}");
                request.sent_time = Some(std::time::SystemTime::now().into());
                outstanding.insert(request.req_guid.clone(), Instant::now());
                sink.send(tungstenite::Message::Binary(request.encode_to_vec().into())).await?;
            }
            frame = stream.next() => {
                let frame = match frame {
                    Some(frame) => frame?,
                    None => bail!("server closed the connection"),
                };
                let tungstenite::Message::Binary(body) = frame else { continue };
                let response = SendEventResponse::decode(body)?;
                let guid = response.data.get("req_guid").cloned().unwrap_or_default();
                let Some(sent) = outstanding.remove(&guid) else {
                    bail!("answer for unknown req_guid {guid:?}: {}", response.reason);
                };
                let micros = sent.elapsed().as_micros() as u64;
                report.latency_us.push(micros);
                if sent >= plan.steady_from {
                    report.steady_us.push(micros);
                }
                let failed = response.event_results.len() as u64;
                if response.code() == Code::Ok {
                    report.acked_events += options.batch_size as u64;
                } else {
                    report.failed_batches += 1;
                    let failed = if failed == 0 { options.batch_size as u64 } else { failed };
                    report.failed_events += failed;
                    report.acked_events += options.batch_size as u64 - failed.min(options.batch_size as u64);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()), if sending => {}
        }
    }
    let _ = sink.close().await;
    Ok(outstanding.len() as u64)
}

/// The highest server RSS seen, sampled every second until `until`.
async fn peak_rss(metrics_url: String, until: Instant) -> Option<u64> {
    let mut peak = None;
    while Instant::now() < until {
        if let Some(rss) = server_rss(&metrics_url).await {
            peak = Some(peak.map_or(rss, |p: u64| p.max(rss)));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    peak
}

async fn idle(options: &LoadgenOptions, count: usize) -> anyhow::Result<()> {
    let settle = Duration::from_secs(3);
    tokio::time::sleep(settle).await;
    let before = server_rss(&options.metrics_url)
        .await
        .context("idle mode needs the server's process metrics (--metrics-url)")?;
    let mut sockets = Vec::with_capacity(count);
    let pid = std::process::id();
    for n in 0..count {
        sockets.push(connect(&options.url, &format!("idle-{n}-{pid}")).await?);
    }
    tokio::time::sleep(settle).await;
    let after = server_rss(&options.metrics_url)
        .await
        .context("server metrics")?;
    let per_connection = after.saturating_sub(before) as f64 / count as f64;
    println!(
        "idle_connections={count} server_rss_mb before={:.1} after={:.1} per_connection_kib={:.1}",
        before as f64 / 1e6,
        after as f64 / 1e6,
        per_connection / 1024.0
    );
    for mut socket in sockets {
        let _ = socket.close(None).await;
    }
    Ok(())
}

/// The server's resident memory from its Prometheus process metrics.
pub async fn server_rss(metrics_url: &str) -> Option<u64> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}
