//! Faults with real processes (issue 13): the broker, the network, the gateway, the
//! sink and the storage each fail under load, and nothing acknowledged is lost.
//!
//! - `a_broker_restart_under_load_loses_no_acknowledged_event`: a tansu broker with
//!   SQLite storage is killed under load from several HTTP senders and started again on
//!   the same port. While it is down the `weir gateway` process answers only
//!   UNAVAILABLE or RATE_LIMITED, every answer within the delivery timeout (plus slack
//!   for a loaded machine), and every request is answered; once the broker is back the
//!   gateway acknowledges again by itself; every event answered OK is in Kafka, once.
//! - `a_cut_network_to_the_broker_is_answered_in_time_and_heals`: the same through a
//!   network cut: the broker sits behind a proxy whose connections turn into black holes
//!   (open, bytes dropped, no reset), then heal.
//! - `gateway_sigterm_and_sigkill_under_load_lose_no_acknowledged_event`: a gateway
//!   stopped with SIGTERM under load exits cleanly; a second one is killed with SIGKILL
//!   under load; every event answered OK by either is in Kafka, once.
//! - `a_sink_killed_during_uploads_loses_and_duplicates_nothing`: `weir sink` processes
//!   writing to s3s-fs are killed with SIGKILL at several points of their uploads; a
//!   final `--batch` run catches up; the audit finds every record produced in storage
//!   exactly once.
//! - `storage_restarted_mid_flush_is_caught_up_by_the_running_sink`: s3s-fs is killed
//!   while one sink process uploads and started again (same port, same data); the sink,
//!   never restarted, fails its flushes meanwhile, then catches up by itself and is
//!   ready again; every record is in storage exactly once.
//!
//! Each test prints one `FIGURES <name>: …` line to stdout (run with `--nocapture`).
//! The tests take turns: they share a small machine, and the first three assert answer
//! times.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use weir::sink::audit::{AuditReport, audit};
use weir::sink::upload::Storage;
use weir_crds::pipeline::{RouteRule, TopicSpec};
use weir_crds::sink::StorageSpec;
use weir_crds::{PipelineSpec, SinkSpec};
use weir_proto::{Code, Event, SendEventRequest, SendEventResponse};
use weir_runtime::kafka::EmbeddedKafka;
use weir_tests::{Broker, BrokerOptions, Process, S3Server, TcpProxy, build_binaries, free_port};

/// The topic every test writes, and the event type routed to it.
const TOPIC: &str = "clickstream-fault-log";
const EVENT_TYPE: &str = "fault";
/// `kafka.deliveryTimeout` of the gateways: short, so an outage is answered quickly.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3);
/// What a loaded two-core machine may add to an answer that is due within the
/// delivery timeout.
const ANSWER_SLACK: Duration = Duration::from_secs(2);
/// How long a sender waits for an answer before counting the request unanswered: far
/// past any answer a gateway owes here, so a hang is counted rather than waited out.
const NO_ANSWER_AFTER: Duration = Duration::from_secs(15);
/// Concurrent HTTP senders, and events per batch: modest, because the gateway, the
/// broker and the test share the machine's cores.
const SENDERS: usize = 6;
const EVENTS_PER_BATCH: usize = 20;
/// Reading a topic back ends once no record arrived for this long.
const READ_QUIET: Duration = Duration::from_secs(3);

/// One test at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// Waiting

/// Polls `condition` every 100 ms until it holds; panics naming `what` after `within`.
/// A condition may panic itself, e.g. when a process it waits on exits.
async fn wait_until(within: Duration, what: &str, condition: impl AsyncFnMut() -> bool) {
    poll_until(Duration::from_millis(100), within, what, condition).await;
}

/// [`wait_until`], polling every `interval`.
async fn poll_until(
    interval: Duration,
    within: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(interval).await;
    }
}

/// Waits up to `within` for `process` to exit, without blocking the runtime's threads
/// (the senders share them); `None` if it still runs.
async fn wait_exit(process: &mut Process, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = process.exited() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Panics with the process's log when it has exited: for conditions that need it alive.
fn assert_running(process: &mut Process, role: &str) {
    if let Some(status) = process.exited() {
        panic!("{role} exited with {status}\n{}", process.log_tail());
    }
}

/// The `weir` binary of this build.
fn weir() -> PathBuf {
    build_binaries(&["weir"]).join("weir")
}

/// The status and body of a GET, or `None` when nothing answers.
async fn get(url: &str) -> Option<(u16, String)> {
    let reply = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = reply.status().as_u16();
    Some((status, reply.text().await.unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------
// The gateway and its load

/// A `weir gateway -f` process on fixed loopback ports, so that a gateway started again
/// from the same configuration serves the same addresses.
struct GatewayProcess {
    process: Process,
    events_url: String,
    drain_timeout: Duration,
}

/// A pipeline publishing `fault` events to [`TOPIC`] (created by `--ensure-topics`) on
/// `bootstrap`, with a short delivery timeout.
///
/// `idempotent: false` turns the producer's idempotence off, for tansu's sake: after a
/// delivery timeout librdkafka's idempotent producer bumps its epoch itself (KIP-360;
/// "the idempotent producer can bump its own epoch" in rdkafka_idempotence.c), which
/// Kafka accepts, but tansu 0.6.0 does not. With memory storage it fences the producer
/// (PRODUCER_FENCED on every later produce), which the gateway survives by replacing
/// its producer: the network test keeps idempotence on and proves that. With SQLite
/// storage its produce path panics ("more or less than one row") and the broker
/// answers nothing any more, so the restart test turns idempotence off.
fn pipeline(bootstrap: &str, idempotent: bool) -> PipelineSpec {
    let mut spec = PipelineSpec::default();
    spec.listen.http = format!("127.0.0.1:{}", free_port());
    spec.listen.grpc = format!("127.0.0.1:{}", free_port());
    spec.listen.metrics = format!("127.0.0.1:{}", free_port());
    spec.kafka.bootstrap_servers = bootstrap.into();
    spec.kafka.delivery_timeout = DELIVERY_TIMEOUT;
    if !idempotent {
        spec.kafka
            .properties
            .insert("enable.idempotence".into(), "false".into());
    }
    spec.routing.rules = vec![RouteRule {
        exact: Some(EVENT_TYPE.into()),
        topic: TOPIC.into(),
        ..Default::default()
    }];
    spec.topics = vec![TopicSpec {
        name: TOPIC.into(),
        partitions: 2,
        replication_factor: None,
        configs: Default::default(),
    }];
    spec.shutdown.drain_timeout = Duration::from_secs(10);
    spec
}

impl GatewayProcess {
    /// Writes `spec` to `dir` and starts a gateway from it; returns once `/readyz`
    /// answers 200 (Kafka reachable).
    async fn start(dir: &Path, spec: &PipelineSpec) -> Self {
        let config = dir.join("pipeline.yaml");
        std::fs::write(&config, serde_yaml::to_string(spec).unwrap()).unwrap();
        let mut command = Command::new(weir());
        command
            .args(["gateway", "--ensure-topics", "-f"])
            .arg(&config);
        let mut process =
            Process::spawn(command, "weir gateway", Some(&dir.join("gateway.log"))).unwrap();
        let readyz = format!("http://{}/readyz", spec.listen.metrics);
        wait_until(
            Duration::from_secs(30),
            "the gateway to be ready",
            async || {
                assert_running(&mut process, "the gateway");
                matches!(get(&readyz).await, Some((200, _)))
            },
        )
        .await;
        Self {
            process,
            events_url: format!("http://{}/api/v1/events", spec.listen.http),
            drain_timeout: spec.shutdown.drain_timeout,
        }
    }

    /// SIGTERM, then the exit status; panics if it takes longer than the drain.
    async fn terminate(mut self) -> std::process::ExitStatus {
        self.process.terminate();
        let within = self.drain_timeout + ANSWER_SLACK;
        wait_exit(&mut self.process, within)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "the gateway did not exit within {within:?} of SIGTERM\n{}",
                    self.process.log_tail()
                )
            })
    }
}

/// What the senders saw, counted in events.
#[derive(Default)]
struct Tally {
    /// Events in requests that reached the gateway.
    sent: usize,
    /// The ids of events answered OK.
    acked: Vec<String>,
    /// Events answered with a failure, by code.
    failures: BTreeMap<String, usize>,
    /// Events whose request got no answer (the connection broke or the wait ran out).
    unanswered: usize,
    /// The slowest answer.
    slowest: Duration,
}

impl Tally {
    fn non_ok(&self) -> usize {
        self.failures.values().sum()
    }
}

type SharedTally = Arc<Mutex<Tally>>;

fn acked(tally: &SharedTally) -> usize {
    tally.lock().unwrap().acked.len()
}

fn non_ok(tally: &SharedTally) -> usize {
    tally.lock().unwrap().non_ok()
}

/// The failure code of each event of an answered batch, `None` for the events answered
/// OK. An answer lists every failed event; a failed answer listing none refused the
/// whole batch before publishing anything (see `dataplane/src/gateway/ack.rs`).
fn event_failures(response: &SendEventResponse, events: usize) -> Vec<Option<Code>> {
    if response.code() == Code::Ok {
        return vec![None; events];
    }
    if response.event_results.is_empty() {
        return vec![Some(response.code()); events];
    }
    let mut codes = vec![None; events];
    for result in &response.event_results {
        codes[result.index as usize] = Some(result.code());
    }
    codes
}

/// Concurrent senders posting batches of uniquely numbered events until stopped. They
/// never resend: an event answered with a failure, or not answered, is not sent again.
struct Load {
    stop: Arc<AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts [`SENDERS`] senders; event ids start with `label`, which must be unique
    /// within a test.
    fn start(gateway: &GatewayProcess, label: &str, tally: &SharedTally) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let senders = (0..SENDERS)
            .map(|n| {
                let sender = Sender {
                    url: gateway.events_url.clone(),
                    label: format!("{label}-s{n}"),
                    tally: tally.clone(),
                    stop: stop.clone(),
                };
                tokio::spawn(sender.run())
            })
            .collect();
        Self { stop, senders }
    }

    /// Stops the senders once their requests in flight are answered (or given up).
    async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for sender in self.senders {
            sender.await.expect("a sender panicked");
        }
    }
}

struct Sender {
    url: String,
    label: String,
    tally: SharedTally,
    stop: Arc<AtomicBool>,
}

impl Sender {
    async fn run(self) {
        // A client of its own: a connection of its own, as separate devices have.
        let client = reqwest::Client::new();
        let mut batch = 0;
        while !self.stop.load(Ordering::Acquire) {
            let ids: Vec<String> = (0..EVENTS_PER_BATCH)
                .map(|i| format!("{}-b{batch}-e{i}", self.label))
                .collect();
            let request = SendEventRequest {
                req_guid: format!("{}-b{batch}", self.label),
                sent_time: None,
                events: ids
                    .iter()
                    .map(|id| Event {
                        event_bytes: id.clone().into_bytes().into(),
                        r#type: EVENT_TYPE.into(),
                        partition_key: self.label.clone(),
                    })
                    .collect(),
            };
            batch += 1;
            let started = Instant::now();
            let reply = client
                .post(&self.url)
                .header("Content-Type", "application/proto")
                .timeout(NO_ANSWER_AFTER)
                .body(request.encode_to_vec())
                .send()
                .await;
            let answer =
                match reply {
                    Ok(reply) => {
                        let status = reply.status().as_u16();
                        match reply.bytes().await {
                            Ok(body) => Some(SendEventResponse::decode(body).map_err(|e| {
                                format!("HTTP {status} with an undecodable answer: {e}")
                            })),
                            Err(_) => None,
                        }
                    }
                    // Never reached the gateway (it is not listening): nothing was sent.
                    Err(error) if error.is_connect() => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(_) => None,
                };
            let took = started.elapsed();
            let mut tally = self.tally.lock().unwrap();
            tally.sent += ids.len();
            match answer {
                None => tally.unanswered += ids.len(),
                Some(Err(why)) => *tally.failures.entry(why).or_default() += ids.len(),
                Some(Ok(response)) => {
                    tally.slowest = tally.slowest.max(took);
                    for (id, failure) in ids
                        .into_iter()
                        .zip(event_failures(&response, EVENTS_PER_BATCH))
                    {
                        match failure {
                            None => tally.acked.push(id),
                            Some(code) => {
                                *tally.failures.entry(code.as_str_name().into()).or_default() += 1
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Kafka

/// How many times each event id (a record's value) is in [`TOPIC`], read from the start
/// of every partition until nothing more arrives for a while. Not up to the end offsets
/// the broker reports: tansu's can lag the records it has acknowledged, and reading
/// up to them stopped short of the last acknowledged batches.
fn records_by_id(bootstrap: &str) -> HashMap<String, usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "weir-faults-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(TOPIC), timeout).unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(TOPIC, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut counts = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_record = Instant::now();
    while last_record.elapsed() < READ_QUIET {
        assert!(
            Instant::now() < deadline,
            "reading {TOPIC} back took over 60 s"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        last_record = Instant::now();
        let id = String::from_utf8(message.payload().unwrap_or_default().to_vec()).unwrap();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// What the senders were told against what Kafka holds, in events.
struct KafkaFigures {
    sent: usize,
    acked: usize,
    found_in_kafka: usize,
    lost: usize,
    duplicated: usize,
    non_ok: usize,
    unanswered: usize,
    /// Answered with a failure or not at all, yet in Kafka: allowed (a timed-out event
    /// may still arrive), and counted because a client retry would duplicate it.
    unacked_in_kafka: usize,
}

impl KafkaFigures {
    fn of(tally: &Tally, in_kafka: &HashMap<String, usize>) -> Self {
        let found_in_kafka = tally
            .acked
            .iter()
            .filter(|id| in_kafka.contains_key(*id))
            .count();
        let acked: std::collections::HashSet<&String> = tally.acked.iter().collect();
        Self {
            sent: tally.sent,
            acked: tally.acked.len(),
            found_in_kafka,
            lost: tally.acked.len() - found_in_kafka,
            duplicated: in_kafka.values().map(|n| n - 1).sum(),
            non_ok: tally.non_ok(),
            unanswered: tally.unanswered,
            unacked_in_kafka: in_kafka.keys().filter(|id| !acked.contains(id)).count(),
        }
    }

    /// Prints the figures line and checks the promises that hold whatever the fault:
    /// nothing acknowledged is lost, and nothing is in Kafka twice. With no client
    /// resending, a duplicate can only come from the producer's own retries; the
    /// idempotent producer rules them out, and where tansu makes the tests turn
    /// idempotence off (see [`pipeline`]) a retry can only land within the delivery
    /// timeout, which every outage here outlasts, so a duplicate is a bug either way.
    fn print_and_check(&self, name: &str, tally: &Tally) {
        println!(
            "FIGURES {name}: sent={} acked={} found_in_kafka={} lost={} duplicated={} non_ok={} unanswered={} unacked_in_kafka={}",
            self.sent,
            self.acked,
            self.found_in_kafka,
            self.lost,
            self.duplicated,
            self.non_ok,
            self.unanswered,
            self.unacked_in_kafka
        );
        assert!(self.acked > 0, "{name}: nothing was acknowledged");
        assert_eq!(
            self.lost, 0,
            "{name}: events answered OK are missing from Kafka"
        );
        assert_eq!(
            self.duplicated, 0,
            "{name}: events are in Kafka more than once (failures: {:?})",
            tally.failures
        );
    }
}

/// Runs load through an outage of the gateway's path to Kafka: `fault` breaks it for at
/// least one delivery timeout, `repair` restores it. While it lasts the gateway must
/// answer every batch, with UNAVAILABLE or RATE_LIMITED, within the delivery timeout;
/// afterwards it must acknowledge again by itself, and every event it acknowledged must
/// be in Kafka once.
async fn outage_under_load(
    name: &str,
    bootstrap: &str,
    idempotent: bool,
    fault: impl FnOnce(),
    repair: impl FnOnce(),
) {
    let dir = tempfile::tempdir().unwrap();
    let spec = pipeline(bootstrap, idempotent);
    let gateway = GatewayProcess::start(dir.path(), &spec).await;
    let tally = SharedTally::default();
    let load = Load::start(&gateway, name, &tally);
    let warm = SENDERS * EVENTS_PER_BATCH;
    wait_until(
        Duration::from_secs(30),
        "acknowledged events before the fault",
        async || acked(&tally) >= warm,
    )
    .await;

    fault();
    let broken = Instant::now();
    let non_ok_before = non_ok(&tally);
    // Long enough for events queued at the fault to time out: every answer after that
    // depends on the fault alone.
    let outage = DELIVERY_TIMEOUT + Duration::from_secs(2);
    wait_until(
        outage + Duration::from_secs(20),
        "failure answers while Kafka is out of reach",
        async || broken.elapsed() >= outage && non_ok(&tally) > non_ok_before,
    )
    .await;
    let acked_during_fault = acked(&tally);

    repair();
    let repaired = Instant::now();
    let deadline = repaired + Duration::from_secs(30);
    while acked(&tally) < acked_during_fault + warm {
        assert!(
            Instant::now() < deadline,
            "the gateway did not acknowledge again within 30 s of the repair\n{}",
            gateway.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = repaired.elapsed();
    load.stop().await;
    let status = gateway.terminate().await;
    assert!(status.success(), "the gateway exited with {status}");

    let bootstrap = bootstrap.to_string();
    let in_kafka = tokio::task::spawn_blocking(move || records_by_id(&bootstrap))
        .await
        .unwrap();
    let tally = tally.lock().unwrap();
    let figures = KafkaFigures::of(&tally, &in_kafka);
    println!(
        "{name}: outage {:?}, acknowledging again {recovery:?} after the repair, slowest answer {:?}",
        repaired - broken,
        tally.slowest
    );
    figures.print_and_check(name, &tally);
    assert!(
        figures.non_ok > 0,
        "no failure was answered during the outage"
    );
    for code in tally.failures.keys() {
        assert!(
            code == Code::Unavailable.as_str_name() || code == Code::RateLimited.as_str_name(),
            "answered {code} during an outage: {:?}",
            tally.failures
        );
    }
    assert_eq!(
        tally.unanswered, 0,
        "requests went unanswered for {NO_ANSWER_AFTER:?}"
    );
    assert!(
        tally.slowest <= DELIVERY_TIMEOUT + ANSWER_SLACK,
        "an answer took {:?}; the delivery timeout is {DELIVERY_TIMEOUT:?}",
        tally.slowest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_load_loses_no_acknowledged_event() {
    let _turn = SERIAL.lock().await;
    let broker = Broker::start_with(BrokerOptions {
        persistent: true,
        ..Default::default()
    })
    .expect("tansu");
    let bootstrap = broker.bootstrap.clone();
    // Both closures stop or start the one broker; they run one after the other.
    let broker = Mutex::new(broker);
    outage_under_load(
        "broker-restart",
        &bootstrap,
        false,
        || broker.lock().unwrap().stop(),
        || broker.lock().unwrap().restart().expect("tansu restarts"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_network_to_the_broker_is_answered_in_time_and_heals() {
    let _turn = SERIAL.lock().await;
    let proxy_port = free_port();
    // The broker tells clients to connect through the proxy, so that every connection,
    // not only the bootstrap one, crosses the cut.
    let broker = Broker::start_with(BrokerOptions {
        advertised: Some(format!("127.0.0.1:{proxy_port}")),
        ..Default::default()
    })
    .expect("tansu");
    let proxy = TcpProxy::start(proxy_port, &format!("127.0.0.1:{}", broker.port)).unwrap();
    outage_under_load(
        "network-cut",
        &proxy.addr,
        true,
        || proxy.cut(),
        || proxy.heal(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigterm_and_sigkill_under_load_lose_no_acknowledged_event() {
    let _turn = SERIAL.lock().await;
    let broker = Broker::start().expect("tansu");
    let dir = tempfile::tempdir().unwrap();
    // No broker fault here: the idempotent producer, as in production, and a delivery
    // timeout no loaded machine reaches, since a single timed-out event would make
    // tansu fence the producer (see `pipeline`).
    let mut spec = pipeline(&broker.bootstrap, true);
    spec.kafka.delivery_timeout = Duration::from_secs(10);
    let tally = SharedTally::default();
    let warm = SENDERS * EVENTS_PER_BATCH * 3;

    let gateway = GatewayProcess::start(dir.path(), &spec).await;
    let load = Load::start(&gateway, "term", &tally);
    wait_until(Duration::from_secs(30), "acknowledged events", async || {
        acked(&tally) >= warm
    })
    .await;
    let status = gateway.terminate().await;
    load.stop().await;
    assert!(
        status.success(),
        "the gateway exited with {status} after SIGTERM"
    );

    // The same configuration, so the same ports.
    let mut gateway = GatewayProcess::start(dir.path(), &spec).await;
    let load = Load::start(&gateway, "kill", &tally);
    let before = acked(&tally);
    wait_until(Duration::from_secs(30), "acknowledged events", async || {
        acked(&tally) >= before + warm
    })
    .await;
    gateway.process.kill();
    load.stop().await;

    let bootstrap = broker.bootstrap.clone();
    let in_kafka = tokio::task::spawn_blocking(move || records_by_id(&bootstrap))
        .await
        .unwrap();
    let tally = tally.lock().unwrap();
    KafkaFigures::of(&tally, &in_kafka).print_and_check("gateway-kill", &tally);
}

// ---------------------------------------------------------------------------------------
// The sink and its storage

/// Creates [`TOPIC`] with three partitions.
fn topic() -> TopicSpec {
    TopicSpec {
        name: TOPIC.into(),
        partitions: 3,
        replication_factor: None,
        configs: Default::default(),
    }
}

/// Records produced per round of the sink kill test.
const ROUND_RECORDS: usize = 1000;

/// Produces `count` records numbered from `first`, 50 every 400 ms: a new sink takes a
/// few seconds to be assigned its partitions (the killed one must time out first), and
/// records should still be arriving then.
async fn trickle(bootstrap: String, first: usize, count: usize) {
    for chunk in (first..first + count).step_by(50) {
        produce(&bootstrap, chunk, 50.min(first + count - chunk)).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// The in-process mock broker with [`TOPIC`]: the sink tests are about storage, and
/// tansu 0.6 stopped answering fetches for a restarted consumer that resumed inside a
/// record batch.
fn mock_broker() -> (EmbeddedKafka, String) {
    let kafka = EmbeddedKafka::start(1).expect("embedded Kafka");
    kafka.create_topics(&[topic()]).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    (kafka, bootstrap)
}

/// Produces `count` records numbered from `first` with the gateway's headers, each
/// acknowledged by the broker before this returns.
async fn produce(bootstrap: &str, first: usize, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let sends = (first..first + count).map(|i| {
        let producer = producer.clone();
        async move {
            let receive_time =
                weir::gateway::publish::unix_micros(std::time::SystemTime::now()).to_string();
            let headers = weir::record::GatewayHeaders {
                event_type: EVENT_TYPE,
                req_guid: "",
                conn_group: "",
                tenant: None,
                receive_time: &receive_time,
                sent_time: None,
                dead_letter_reason: None,
            }
            .to_kafka();
            let key = format!("user-{}", i % 7);
            let payload = format!("{{\"n\":{i}}}");
            producer
                .send(
                    FutureRecord::to(TOPIC)
                        .key(&key)
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .expect("the broker acknowledges the record");
        }
    });
    futures_util::future::join_all(sends).await;
}

/// A sink of [`TOPIC`] that flushes often (many uploads to interrupt), serves its
/// metrics on `metrics_port`, and whose group notices a killed member within seconds.
fn sink_spec(bootstrap: &str, storage: StorageSpec, metrics_port: u16) -> SinkSpec {
    let mut spec = SinkSpec::default();
    spec.kafka.bootstrap_servers = bootstrap.into();
    for (key, value) in [
        ("session.timeout.ms", "3000"),
        ("heartbeat.interval.ms", "300"),
        ("topic.metadata.refresh.interval.ms", "1000"),
    ] {
        spec.kafka.properties.insert(key.into(), value.into());
    }
    spec.source.topics = vec![TOPIC.into()];
    spec.source.topic_pattern = None;
    spec.storage = storage;
    spec.listen.metrics = format!("127.0.0.1:{metrics_port}");
    spec.flush.max_records = 25;
    spec.flush.max_age = Duration::from_millis(500);
    spec.shutdown.drain_timeout = Duration::from_secs(20);
    spec
}

/// Starts `weir sink -f config` (with `--batch`: drain to the end offsets and exit).
fn spawn_sink(dir: &Path, spec: &SinkSpec, batch: bool) -> Process {
    let config = dir.join("sink.yaml");
    std::fs::write(&config, serde_yaml::to_string(spec).unwrap()).unwrap();
    let mut command = Command::new(weir());
    command.args(["sink", "-f"]).arg(&config);
    if batch {
        command.arg("--batch");
    }
    Process::spawn(command, "weir sink", Some(&dir.join("sink.log"))).unwrap()
}

/// Data files under the bucket's directory (the markers are JSON).
fn data_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                data_files(&path)
            } else {
                usize::from(path.extension().is_some_and(|e| e == "parquet"))
            }
        })
        .sum()
}

async fn audit_storage(storage: &StorageSpec) -> AuditReport {
    audit(&Storage::open(storage).unwrap()).await.unwrap()
}

/// Prints the figures line and checks that each of the `produced` records is in
/// storage exactly once.
fn check_exactly_once(name: &str, extra: &str, report: &AuditReport, produced: u64) {
    println!(
        "FIGURES {name}: {extra}produced={produced} found_in_storage={} lost={} duplicated={}",
        report.total(),
        produced.saturating_sub(report.total()),
        report.duplicates.len()
    );
    assert!(report.exactly_once(), "{name}: {report:#?}");
    assert!(report.gaps.is_empty(), "{name}: gaps {:?}", report.gaps);
    assert_eq!(report.total(), produced, "{name}: {:?}", report.records);
}

/// The sum of a counter's series in a Prometheus text page.
fn counter_total(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_during_uploads_loses_and_duplicates_nothing() {
    let _turn = SERIAL.lock().await;
    let (_kafka, bootstrap) = mock_broker();
    let s3 = S3Server::start("weir-faults").expect("s3s-fs");
    let dir = tempfile::tempdir().unwrap();
    let storage = s3.storage_spec(dir.path(), &s3.secret_key);
    let spec = sink_spec(&bootstrap, storage.clone(), free_port());

    // Killed after this many new files of its run: at the first upload, then deeper.
    let kill_points = [1, 3, 6, 10];
    let mut produced = 0;
    for (round, new_files) in kill_points.into_iter().enumerate() {
        // Records arrive while the sink runs, so that it keeps uploading: all at once,
        // they would make a few large ranges (a partition's buffer fills while its
        // flush is in flight).
        let before = data_files(&s3.bucket_dir());
        let mut sink = spawn_sink(dir.path(), &spec, false);
        let arriving = tokio::spawn(trickle(bootstrap.clone(), produced, ROUND_RECORDS));
        produced += ROUND_RECORDS;
        // Polled often: an upload takes milliseconds, and the kill should land near
        // its point.
        let deadline = Instant::now() + Duration::from_secs(60);
        while data_files(&s3.bucket_dir()) < before + new_files {
            assert_running(&mut sink, "the sink");
            assert!(
                Instant::now() < deadline,
                "round {round}: the sink wrote {} of {new_files} new files in 60 s\n{}",
                data_files(&s3.bucket_dir()) - before,
                sink.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sink.kill();
        arriving.await.unwrap();
        // Only the newest marker of a partition may lack files after a crash.
        let report = audit_storage(&storage).await;
        assert!(
            report.duplicates.is_empty()
                && report.orphans.is_empty()
                && report.unreadable.is_empty(),
            "after kill {round} (at {new_files} new files): {report:#?}"
        );
    }

    let mut batch = spawn_sink(dir.path(), &spec, true);
    let status = wait_exit(&mut batch, Duration::from_secs(90))
        .await
        .unwrap_or_else(|| panic!("the --batch run did not end in 90 s\n{}", batch.log_tail()));
    assert!(status.success(), "{status}\n{}", batch.log_tail());
    let report = audit_storage(&storage).await;
    let kills = format!("kills={} ", kill_points.len());
    check_exactly_once("sink-sigkill", &kills, &report, produced as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_restarted_mid_flush_is_caught_up_by_the_running_sink() {
    let _turn = SERIAL.lock().await;
    let (_kafka, bootstrap) = mock_broker();
    let mut s3 = S3Server::start("weir-faults").expect("s3s-fs");
    let dir = tempfile::tempdir().unwrap();
    let storage = s3.storage_spec(dir.path(), &s3.secret_key);
    let metrics_port = free_port();
    let spec = sink_spec(&bootstrap, storage.clone(), metrics_port);
    let mut produced = 1500;
    produce(&bootstrap, 0, produced).await;

    let mut sink = spawn_sink(dir.path(), &spec, false);
    wait_until(Duration::from_secs(40), "the sink's uploads", async || {
        assert_running(&mut sink, "the sink");
        data_files(&s3.bucket_dir()) >= 3
    })
    .await;
    s3.stop();
    let stopped = Instant::now();
    // More records while storage is down: flushes that cannot succeed.
    produce(&bootstrap, produced, 300).await;
    produced += 300;
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    wait_until(
        Duration::from_secs(30),
        "a failed flush while storage is down",
        async || {
            assert_running(&mut sink, "the sink");
            get(&metrics).await.is_some_and(|(_, page)| {
                counter_total(&page, "weir_sink_flush_failures_total") > 0.0
            })
        },
    )
    .await;
    s3.restart().expect("s3s-fs restarts");
    let outage = stopped.elapsed();
    let restarted = Instant::now();

    // An audit reads every file: polled less often.
    let within = Duration::from_secs(90);
    poll_until(
        Duration::from_millis(500),
        within,
        "every record in storage",
        async || {
            assert_running(&mut sink, "the sink");
            audit_storage(&storage).await.total() >= produced as u64
        },
    )
    .await;
    let caught_up = restarted.elapsed();
    let readyz = format!("http://127.0.0.1:{metrics_port}/readyz");
    wait_until(
        Duration::from_secs(30),
        "the sink to be ready again",
        async || {
            assert_running(&mut sink, "the sink");
            matches!(get(&readyz).await, Some((200, _)))
        },
    )
    .await;
    let failures = get(&metrics).await.map_or(0.0, |(_, page)| {
        counter_total(&page, "weir_sink_flush_failures_total")
    });

    sink.terminate();
    let status = wait_exit(&mut sink, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the sink did not stop on SIGTERM\n{}", sink.log_tail()));
    assert!(status.success(), "{status}\n{}", sink.log_tail());
    let report = audit_storage(&storage).await;
    println!(
        "s3-restart: storage down {outage:?}, every record stored {caught_up:?} after it was back"
    );
    let extra = format!("flush_failures={failures} ");
    check_exactly_once("s3-restart", &extra, &report, produced as u64);
}
