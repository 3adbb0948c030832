//! The sink against the embedded Kafka and a local directory: files, flush policy,
//! dead letters, batch mode, and the exactly-once guarantee across crashes (a `weir
//! sink` process aborted at every step of a flush, and killed at random) and across a
//! rebalance between two sinks.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt as _;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use weir::sink::Sink;
use weir::sink::audit::{AuditReport, audit};
use weir::sink::layout;
use weir::sink::progress::ProgressMarker;
use weir::sink::upload::Storage;
use weir_crds::SinkSpec;
use weir_crds::pipeline::TopicSpec;
use weir_crds::settings::SinkSettings;
use weir_crds::sink::{OffsetRegressionPolicy, PayloadEncoding, SinkMode, TypeSchema};
use weir_runtime::kafka::EmbeddedKafka;

const TOPIC: &str = "clickstream-events-log";

fn kafka_with_topic(partitions: i32) -> EmbeddedKafka {
    let kafka = EmbeddedKafka::start(1).expect("embedded Kafka");
    kafka
        .create_topics(&[TopicSpec {
            name: TOPIC.into(),
            partitions,
            replication_factor: None,
            configs: Default::default(),
        }])
        .unwrap();
    kafka
}

fn sink_spec(bootstrap: &str, dir: &Path) -> SinkSpec {
    let mut spec = SinkSpec::default();
    spec.kafka.bootstrap_servers = bootstrap.into();
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        ("topic.metadata.refresh.interval.ms", "1000"),
    ] {
        spec.kafka.properties.insert(k.into(), v.into());
    }
    spec.source.topics = vec![TOPIC.into()];
    spec.source.topic_pattern = None;
    spec.storage.url = dir.display().to_string();
    spec.listen.metrics = "127.0.0.1:0".into();
    spec.flush.max_records = 50;
    spec.flush.max_age = Duration::from_millis(500);
    spec.shutdown.drain_timeout = Duration::from_secs(20);
    spec
}

/// A batch run whose ranges end only at the end offsets seen at start.
fn batch_spec(bootstrap: &str, dir: &Path) -> SinkSpec {
    let mut spec = sink_spec(bootstrap, dir);
    spec.mode = SinkMode::Batch;
    spec.flush.max_age = Duration::from_secs(3600);
    spec.flush.max_records = 1000;
    spec
}

/// Produces `count` records numbered from `first`, alternating two event types, with
/// the gateway's headers.
async fn produce(bootstrap: &str, first: usize, count: usize, payload: impl Fn(usize) -> Vec<u8>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let sends = (first..first + count).map(|i| {
        let event_type = if i % 2 == 0 { "page_view" } else { "click" };
        let body = payload(i);
        let key = format!("user-{}", i % 7);
        let producer = producer.clone();
        async move {
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
                .to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: weir::record::EVENT_TYPE,
                    value: Some(event_type),
                })
                .insert(Header {
                    key: weir::record::RECEIVE_TIME,
                    value: Some(&now_us),
                });
            producer
                .send(
                    FutureRecord::to(TOPIC)
                        .key(&key)
                        .payload(&body)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .expect("produced");
        }
    });
    futures_util::future::join_all(sends).await;
}

fn json_payload(i: usize) -> Vec<u8> {
    format!("{{\"n\":{i}}}").into_bytes()
}

async fn audit_dir(dir: &Path) -> AuditReport {
    let storage = Storage::open(&weir_crds::sink::StorageSpec {
        url: dir.display().to_string(),
        ..Default::default()
    })
    .unwrap();
    audit(&storage).await.unwrap()
}

/// Waits until the files hold `total` records.
async fn wait_for_records(dir: &Path, total: u64, within: Duration) -> AuditReport {
    let deadline = Instant::now() + within;
    loop {
        let report = audit_dir(dir).await;
        if report.total() >= total || Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_exactly_once(report: &AuditReport, total: u64) {
    assert!(report.exactly_once(), "{report:#?}");
    assert!(report.gaps.is_empty(), "gaps: {:?}", report.gaps);
    assert_eq!(report.total(), total, "{:?}", report.records);
}

fn committed(bootstrap: &str, group: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(TOPIC, p);
    }
    let list = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    list.elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_land_once_in_hive_partitioned_parquet_and_offsets_are_committed() {
    let kafka = kafka_with_topic(3);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    produce(&bootstrap, 0, 301, json_payload).await;
    let sink = Sink::start(SinkSettings::try_from(sink_spec(&bootstrap, dir.path())).unwrap())
        .await
        .unwrap();
    let metrics_addr = sink.metrics_addr;
    // 301 records with maxRecords 50: the remainders are flushed by age.
    let report = wait_for_records(dir.path(), 301, Duration::from_secs(30)).await;
    assert_exactly_once(&report, 301);
    let ready = reqwest::get(format!("http://{metrics_addr}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = sink_metrics(metrics_addr).await;
    for line in [
        &format!("weir_sink_records_consumed_total{{topic=\"{TOPIC}\"}} 301"),
        &format!("weir_sink_records_written_total{{topic=\"{TOPIC}\"}} 301"),
        "weir_sink_flush_seconds_count{reason=\"age\"}",
        "weir_sink_files_written_total{kind=\"data\"}",
        "weir_sink_assigned_partitions 3",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let report = sink.shutdown().await.unwrap();
    assert_eq!(report.records_written, 301);
    assert_eq!(report.dead_letters, 0);
    let offsets = committed(&bootstrap, "weir-sink", 3);
    let committed_total: i64 = offsets.values().map(|o| o.unwrap_or(0)).sum();
    assert_eq!(committed_total, 301, "{offsets:?}");

    // Hive layout, both event types, files named by topic, partition and first offset.
    let mut names = Vec::new();
    for entry in walk(dir.path()) {
        let rel = entry
            .strip_prefix(dir.path())
            .unwrap()
            .display()
            .to_string();
        if rel.ends_with(".parquet") {
            names.push(rel);
        }
    }
    assert!(names.iter().any(|n| n.starts_with("event_type=click/dt=")));
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("event_type=page_view/dt="))
    );
    let pattern = regex_like(&names[0]);
    assert!(pattern, "{}", names[0]);
}

fn regex_like(name: &str) -> bool {
    // event_type=<t>/dt=YYYY-MM-DD/hour=HH/<topic>+<p>+<20 digits>.parquet
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 4
        && parts[1].len() == "dt=YYYY-MM-DD".len()
        && parts[2].len() == "hour=HH".len()
        && parts[3].starts_with(&format!("{TOPIC}+"))
        && parts[3].ends_with(".parquet")
        && parts[3].rsplit('+').next().unwrap().len() == 20 + ".parquet".len()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A sink writing to `<dir>/data` whose click events decode as `shop.v1.Item`, from a
/// descriptor set compiled from `tests/data/shop.proto` into `dir`.
fn sink_spec_with_click_schema(bootstrap: &str, dir: &Path, encoding: PayloadEncoding) -> SinkSpec {
    let set = protox::compile(
        ["shop.proto"],
        [concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")],
    )
    .unwrap();
    let descriptor_path = dir.join("shop.pb");
    std::fs::write(&descriptor_path, set.encode_to_vec()).unwrap();
    let mut spec = sink_spec(bootstrap, &dir.join("data"));
    spec.schema.descriptor_set = Some(descriptor_path.display().to_string());
    spec.schema.types.insert(
        "click".into(),
        TypeSchema {
            message: "shop.v1.Item".into(),
            encoding,
        },
    );
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_payloads_go_to_dead_letters_with_the_reason() {
    let kafka = kafka_with_topic(1);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let data = dir.path().join("data");
    let spec = sink_spec_with_click_schema(&bootstrap, dir.path(), PayloadEncoding::Protobuf);
    // Odd records are clicks, with bytes that are certainly not a protobuf Item.
    produce(&bootstrap, 0, 20, |i| {
        if i % 2 == 1 {
            vec![0xff, 0xff, 0xff, 0xff]
        } else {
            json_payload(i)
        }
    })
    .await;
    let sink = Sink::start(SinkSettings::try_from(spec).unwrap())
        .await
        .unwrap();
    let report = wait_for_records(&data, 20, Duration::from_secs(30)).await;
    assert_exactly_once(&report, 20);
    let summary = sink.shutdown().await.unwrap();
    assert_eq!(summary.dead_letters, 10);
    assert_eq!(summary.records_written, 10);
    let dead: Vec<_> = walk(&data)
        .into_iter()
        .filter(|p| p.display().to_string().contains("_dead_letter/topic="))
        .collect();
    assert!(!dead.is_empty());
    let text = std::fs::read_to_string(&dead[0]).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["_event_type"], "click");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .starts_with("payload is not a valid protobuf shop.v1.Item"),
        "{line}"
    );
    assert_eq!(line["payload_base64"], "/////w==");
}

async fn sink_metrics(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `/readyz` until it answers 503, returning its body.
/// The metrics once they hold `line` (librdkafka's statistics come every 5 s), within
/// 30 s.
async fn wait_for_metric(addr: std::net::SocketAddr, line: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = sink_metrics(addr).await;
        if metrics.contains(line) {
            return metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{line} not in\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_unready(addr: std::net::SocketAddr, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
        if answer.status() == 503 {
            let body = answer.text().await.unwrap();
            if !body.contains("not yet assigned") {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never reported the partition"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn file_names(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .map(|p| p.display().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_log_is_reported_or_written_as_a_new_generation_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = kafka_with_topic(1);
    let bootstrap = kafka.bootstrap_servers();
    produce(&bootstrap, 0, 100, json_payload).await;
    let sink = Sink::start(SinkSettings::try_from(sink_spec(&bootstrap, dir.path())).unwrap())
        .await
        .unwrap();
    wait_for_records(dir.path(), 100, Duration::from_secs(30)).await;
    sink.shutdown().await.unwrap();
    drop(kafka);

    // A new Kafka (an in-memory one restarted, a topic re-created) starts at offset 0
    // again with fewer records than were written: its end is below the markers'.
    let kafka = kafka_with_topic(1);
    let bootstrap = kafka.bootstrap_servers();
    produce(&bootstrap, 1000, 30, json_payload).await;
    let mut spec = sink_spec(&bootstrap, dir.path());
    let sink = Sink::start(SinkSettings::try_from(spec.clone()).unwrap())
        .await
        .unwrap();
    let why = wait_unready(sink.metrics_addr, Duration::from_secs(30)).await;
    assert!(
        why.contains("ends at offset 30") && why.contains("newGeneration"),
        "{why}"
    );
    let metrics = sink_metrics(sink.metrics_addr).await;
    assert!(
        metrics.contains(&format!(
            "weir_sink_offset_regressions_total{{topic=\"{TOPIC}\"}} 1"
        )),
        "{metrics}"
    );
    sink.shutdown().await.unwrap();
    assert_eq!(audit_dir(dir.path()).await.total(), 100, "nothing written");

    spec.source.on_offset_regression = OffsetRegressionPolicy::NewGeneration;
    let sink = Sink::start(SinkSettings::try_from(spec.clone()).unwrap())
        .await
        .unwrap();
    let report = wait_for_records(dir.path(), 130, Duration::from_secs(30)).await;
    sink.shutdown().await.unwrap();
    assert!(report.exactly_once(), "{report:#?}");
    assert_eq!(report.total(), 130);
    assert!(file_names(dir.path()).iter().any(|n| n.contains("+g1+")));
    drop(kafka);

    // Replaced again by a log that is already longer than what was written: only the
    // record at the resume point tells it apart, and it is not the one written.
    let kafka = kafka_with_topic(1);
    let bootstrap = kafka.bootstrap_servers();
    produce(&bootstrap, 5000, 300, json_payload).await;
    spec.kafka.bootstrap_servers = bootstrap.clone();
    let sink = Sink::start(SinkSettings::try_from(spec).unwrap())
        .await
        .unwrap();
    let report = wait_for_records(dir.path(), 430, Duration::from_secs(30)).await;
    sink.shutdown().await.unwrap();
    assert!(report.exactly_once(), "{report:#?}");
    assert_eq!(report.total(), 430, "{:?}", report.records);
    assert!(file_names(dir.path()).iter().any(|n| n.contains("+g2+")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_mode_drains_to_the_end_offsets_and_exits() {
    let kafka = kafka_with_topic(2);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    produce(&bootstrap, 0, 120, json_payload).await;
    let spec = batch_spec(&bootstrap, dir.path());
    let mut sink = Sink::start(SinkSettings::try_from(spec.clone()).unwrap())
        .await
        .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), sink.wait())
        .await
        .expect("a batch run ends by itself")
        .unwrap();
    assert_eq!(summary.records_written, 120);
    assert_exactly_once(&audit_dir(dir.path()).await, 120);
    // A second run finds nothing new and ends too.
    produce(&bootstrap, 120, 10, json_payload).await;
    let mut sink = Sink::start(SinkSettings::try_from(spec).unwrap())
        .await
        .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), sink.wait())
        .await
        .expect("a batch run ends by itself")
        .unwrap();
    assert_eq!(summary.records_written, 10);
    assert_exactly_once(&audit_dir(dir.path()).await, 130);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_memory_budget_flushes_the_biggest_buffers_first() {
    let kafka = kafka_with_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    produce(&bootstrap, 0, 400, |i| vec![b'x'; 1000 + i]).await;
    let mut spec = sink_spec(&bootstrap, dir.path());
    spec.flush.max_records = 1_000_000;
    // Only the last records, under budget, wait for their age.
    spec.flush.max_age = Duration::from_secs(2);
    spec.flush.memory_budget = 64 * 1024;
    let sink = Sink::start(SinkSettings::try_from(spec).unwrap())
        .await
        .unwrap();
    let metrics_addr = sink.metrics_addr;
    let report = wait_for_records(dir.path(), 400, Duration::from_secs(30)).await;
    assert_exactly_once(&report, 400);
    let metrics = sink_metrics(metrics_addr).await;
    assert!(
        metrics.contains("weir_sink_flush_seconds_count{reason=\"memory\"}"),
        "{metrics}"
    );
    sink.shutdown().await.unwrap();
    assert_exactly_once(&audit_dir(dir.path()).await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sinks_in_one_group_share_partitions_through_rebalances() {
    let kafka = kafka_with_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let spec = sink_spec(&bootstrap, dir.path());
    let produce_rounds = |rounds: std::ops::Range<usize>| {
        let bootstrap = bootstrap.clone();
        tokio::spawn(async move {
            for round in rounds {
                produce(&bootstrap, round * 50, 50, json_payload).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // The first sink alone writes the first round (the mock broker's group join takes
    // seconds, so waiting for its files is what makes it a member with work).
    let first = Sink::start(SinkSettings::try_from(spec.clone()).unwrap())
        .await
        .unwrap();
    produce_rounds(0..1).await.unwrap();
    wait_for_records(dir.path(), 50, Duration::from_secs(60)).await;
    // Records keep coming while the second joins and the first leaves.
    let producing = produce_rounds(1..15);
    let second = Sink::start(SinkSettings::try_from(spec.clone()).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first_report = first.shutdown().await.unwrap();
    producing.await.unwrap();
    // Only the second can write what comes after the first left.
    produce_rounds(15..30).await.unwrap();
    let report = wait_for_records(dir.path(), 1500, Duration::from_secs(60)).await;
    let second_report = second.shutdown().await.unwrap();
    assert!(first_report.records_written > 0, "{first_report:?}");
    assert!(second_report.records_written > 0, "{second_report:?}");
    assert_exactly_once(&report, 1500);
    assert_exactly_once(&audit_dir(dir.path()).await, 1500);
}

/// A `weir sink` process with the given crash point armed.
fn spawn_sink(config: &Path, crash_at: Option<&str>, batch: bool) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .args(["sink", "-f"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if batch {
        command.arg("--batch");
    }
    if let Some(point) = crash_at {
        command.env(weir::sink::failpoint::CRASH_AT_ENV, point);
    }
    command.spawn().expect("weir sink starts")
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_at_every_step_of_a_flush_lose_and_duplicate_nothing() {
    let kafka = kafka_with_topic(3);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let data = dir.path().join("data");
    let config = dir.path().join("sink.yaml");
    let mut spec = sink_spec(&bootstrap, &data);
    spec.flush.max_records = 40;
    std::fs::write(&config, serde_yaml::to_string(&spec).unwrap()).unwrap();

    let mut produced = 0;
    let crash_points = [
        "after_encode:2",
        "after_claim:1",
        "after_claim:4",
        "after_file_upload:1",
        "after_file_upload:5",
        "after_uploads:3",
        "after_commit:1",
        "after_commit:6",
    ];
    let mut aborted = 0;
    for point in crash_points {
        produce(&bootstrap, produced, 300, json_payload).await;
        produced += 300;
        let mut child = spawn_sink(&config, Some(point), false);
        match wait_exit(&mut child, Duration::from_secs(40)) {
            Some(status) if !status.success() => aborted += 1,
            other => panic!("the sink did not crash at {point}: {other:?}"),
        }
        let report = audit_dir(&data).await;
        assert!(report.duplicates.is_empty(), "after {point}: {report:#?}");
        assert!(report.orphans.is_empty(), "after {point}: {report:#?}");
    }
    assert_eq!(aborted, crash_points.len());
    // And kill -9 at arbitrary moments.
    for delay_ms in [700, 1900, 3100] {
        produce(&bootstrap, produced, 300, json_payload).await;
        produced += 300;
        let mut child = spawn_sink(&config, None, false);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // A clean batch run finishes every range, redone ones included.
    let mut child = spawn_sink(&config, None, true);
    let status = wait_exit(&mut child, Duration::from_secs(90)).expect("the batch run ends");
    assert!(status.success(), "{status:?}");
    assert_exactly_once(&audit_dir(&data).await, produced as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_can_go_to_a_topic_with_the_reason_header() {
    let kafka = kafka_with_topic(1);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let data = dir.path().join("data");
    let mut spec = sink_spec_with_click_schema(&bootstrap, dir.path(), PayloadEncoding::Json);
    spec.dead_letter.topic = Some("sink-dead-letters".into());
    produce(&bootstrap, 0, 4, json_payload).await;
    let sink = Sink::start(SinkSettings::try_from(spec).unwrap())
        .await
        .unwrap();
    // The range (two page views in files, two clicks dead-lettered) is flushed by age.
    let report = wait_for_records(&data, 2, Duration::from_secs(30)).await;
    assert_eq!(report.total(), 2, "{report:?}");
    let dead =
        tokio::task::spawn_blocking(move || common::read_topic(&bootstrap, "sink-dead-letters", 2))
            .await
            .unwrap();
    let summary = sink.shutdown().await.unwrap();
    assert_eq!(summary.dead_letters, 2);
    assert_eq!(dead.len(), 2);
    let reason = common::header(&dead[0], weir::record::DEAD_LETTER_REASON).unwrap();
    assert!(
        reason.starts_with("payload is not valid JSON for shop.v1.Item"),
        "{reason}"
    );
    assert_eq!(common::payload(&dead[0]), b"{\"n\":1}");
    assert_eq!(
        common::header(&dead[0], "weir-source").unwrap(),
        format!("{TOPIC}/0/1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_the_sink_may_not_write_fails_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let kafka = kafka_with_topic(1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("read-only");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root writes through mode bits: use a directory of a read-only file system then.
    let target = if std::fs::write(out.join("probe"), b"").is_ok() {
        std::path::PathBuf::from("/proc/self")
    } else {
        out.clone()
    };
    let error = Sink::start(
        SinkSettings::try_from(sink_spec(&kafka.bootstrap_servers(), &target)).unwrap(),
    )
    .await
    .err()
    .expect("a directory the sink may not write is refused at start");
    let text = format!("{error:#}");
    assert!(
        text.starts_with(&format!("cannot use storage {}", target.display())),
        "{text}"
    );
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_after_a_skipped_last_record_finds_the_log_unchanged() {
    let kafka = kafka_with_topic(1);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    // Even numbers are page views, odd ones clicks: offset 99, the last, is skipped.
    produce(&bootstrap, 0, 100, json_payload).await;
    let mut spec = batch_spec(&bootstrap, dir.path());
    spec.source.event_types = vec!["page_view".into()];
    for (run, expected) in [(0, 50), (1, 5)] {
        if run == 1 {
            produce(&bootstrap, 100, 10, json_payload).await;
        }
        let mut sink = Sink::start(SinkSettings::try_from(spec.clone()).unwrap())
            .await
            .unwrap();
        let summary = tokio::time::timeout(Duration::from_secs(60), sink.wait())
            .await
            .expect("a batch run ends by itself")
            .expect("the resumed log is recognised as the one written");
        assert_eq!(summary.records_written, expected, "run {run}");
    }
    let report = audit_dir(dir.path()).await;
    assert!(report.exactly_once(), "{report:#?}");
    assert_eq!(report.total(), 55);
}

/// A sink whose buffers reach no flush limit while a test looks at it.
async fn start_unflushed_sink(bootstrap: &str, dir: &Path) -> Sink {
    let mut spec = sink_spec(bootstrap, dir);
    spec.flush.max_records = 100_000;
    spec.flush.max_age = Duration::from_secs(3600);
    Sink::start(SinkSettings::try_from(spec).unwrap())
        .await
        .unwrap()
}

/// Before its first commit the sink still reports what is not in storage: the whole
/// backlog, not the 0 librdkafka's own lag shows until a group commits. It also exports
/// its build, its process and its Kafka client's statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_counts_the_backlog_before_the_first_commit() {
    let kafka = kafka_with_topic(2);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    produce(&bootstrap, 0, 120, json_payload).await;
    let sink = start_unflushed_sink(&bootstrap, dir.path()).await;
    let lag_line = format!("weir_sink_consumer_lag_records{{topic=\"{TOPIC}\"}} 120");
    let metrics = wait_for_metric(sink.metrics_addr, &lag_line).await;
    for series in [
        "weir_build_info{component=\"sink\",version=\"",
        "process_resident_memory_bytes ",
        "weir_kafka_client_queue_messages ",
        "weir_kafka_broker_up{broker=\"",
    ] {
        assert!(metrics.contains(series), "{series} not in\n{metrics}");
    }
    sink.shutdown().await.unwrap();
}

/// A restarted sink resumes at its markers: its lag counts only what came after them,
/// not the whole retained log, and only the partitions it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_after_a_restart_counts_from_what_is_written() {
    let kafka = kafka_with_topic(2);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    produce(&bootstrap, 0, 100, json_payload).await;
    let sink = Sink::start(SinkSettings::try_from(sink_spec(&bootstrap, dir.path())).unwrap())
        .await
        .unwrap();
    wait_for_records(dir.path(), 100, Duration::from_secs(30)).await;
    sink.shutdown().await.unwrap();

    produce(&bootstrap, 100, 30, json_payload).await;
    let sink = start_unflushed_sink(&bootstrap, dir.path()).await;
    let lag_line = format!("weir_sink_consumer_lag_records{{topic=\"{TOPIC}\"}} 30\n");
    wait_for_metric(sink.metrics_addr, &lag_line).await;
    sink.shutdown().await.unwrap();
}

/// The liveness gap of fencing: a sink that lost a partition while flushing may fix
/// the range its new owner was about to write (its marker wins the create race). The
/// owner is fenced at that range; it must take the partition again from the markers
/// (here: redo the other writer's unfinished range) and go on, not sit idle until the
/// next rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_fenced_by_a_late_flush_is_taken_again_without_a_rebalance() {
    let kafka = kafka_with_topic(1);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let sink = Sink::start(SinkSettings::try_from(sink_spec(&bootstrap, dir.path())).unwrap())
        .await
        .unwrap();
    wait_for_metric(sink.metrics_addr, "weir_sink_assigned_partitions 1").await;

    // The late flush of the partition's previous owner: its marker fixes offsets 0..=29
    // and its file is still being uploaded.
    let storage = Storage::open(&weir_crds::sink::StorageSpec {
        url: dir.path().display().to_string(),
        ..Default::default()
    })
    .unwrap();
    let late = ProgressMarker {
        topic: TOPIC.into(),
        partition: 0,
        generation: 0,
        start: 0,
        end: 29,
        records: 30,
        files: vec!["late-flush-still-uploading.parquet".into()],
        last: None,
        after: None,
    };
    let path = storage.path(&layout::progress_marker(TOPIC, 0, late.range_start()));
    let body = serde_json::to_vec(&late).unwrap();
    storage.store.put(&path, body.into()).await.unwrap();

    produce(&bootstrap, 0, 100, json_payload).await;
    let report = wait_for_records(dir.path(), 100, Duration::from_secs(30)).await;
    assert_exactly_once(&report, 100);
    let fenced = "weir_sink_flush_failures_total{stage=\"fenced\"} 1";
    wait_for_metric(sink.metrics_addr, fenced).await;
    sink.shutdown().await.unwrap();
}
