//! The whole sink on local storage: Kafka (the in-process mock cluster) → Parquet files
//! in a temporary directory, in batch mode. Reports records/s and input MB/s, per wall
//! second and per CPU second (all threads of the process, the mock broker's included,
//! so the per-core figure is conservative).
//! `cargo bench -p weir --bench sink_throughput [-- RECORDS PAYLOAD_BYTES]`.

// The weir binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use weir::sink::Sink;
use weir_crds::SinkSpec;
use weir_crds::pipeline::TopicSpec;
use weir_crds::settings::SinkSettings;
use weir_crds::sink::SinkMode;
use weir_runtime::kafka::EmbeddedKafka;

const TOPIC: &str = "clickstream-bench-log";

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let records: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let payload_bytes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _telemetry = {
        let _entered = runtime.enter();
        weir_runtime::telemetry::init(weir_runtime::telemetry::LogFormat::Text, "weir-bench")
    };
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka
        .create_topics(&[TopicSpec {
            name: TOPIC.into(),
            // The mock broker keeps only a few MB per partition; spread the records so
            // none is truncated before the sink reads it.
            partitions: 100,
            replication_factor: None,
            configs: Default::default(),
        }])
        .unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let started = Instant::now();
    for i in 0..records {
        let mut payload = format!(
            "{{\"page\":\"/products/{}\",\"referrer\":\"https://example.com/?q={}\",\"n\":{i},\"pad\":\"",
            i % 500,
            i % 97
        )
        .into_bytes();
        payload.resize(payload_bytes.saturating_sub(2), b'x');
        payload.extend_from_slice(b"\"}");
        let receive = (1_795_320_000_000_000_i64 + i as i64).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: weir::record::EVENT_TYPE,
                value: Some(["page_view", "click", "search", "purchase"][i % 4]),
            })
            .insert(Header {
                key: weir::record::RECEIVE_TIME,
                value: Some(&receive),
            });
        let key = format!("user-{}", i % 10_000);
        let mut record = BaseRecord::to(TOPIC)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    eprintln!(
        "produced {records} records of {payload_bytes} B in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let mut spec = SinkSpec::default();
    spec.kafka.bootstrap_servers = kafka.bootstrap_servers();
    spec.kafka
        .properties
        .insert("fetch.max.bytes".into(), "104857600".into());
    spec.source.topics = vec![TOPIC.into()];
    spec.source.topic_pattern = None;
    spec.storage.url = dir.path().display().to_string();
    spec.listen.metrics = "127.0.0.1:0".into();
    spec.mode = SinkMode::Batch;
    let started = Instant::now();
    // Timed from the group's assignment: joining a group takes the mock broker a few
    // seconds that have nothing to do with the sink.
    let (report, cpu_before, started) = runtime.block_on(async {
        let mut sink = Sink::start(SinkSettings::try_from(spec).unwrap())
            .await
            .unwrap();
        let metrics = format!("http://{}/metrics", sink.metrics_addr);
        loop {
            let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
            if !text.contains("weir_sink_assigned_partitions 0") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (cpu_before, assigned) = (cpu_seconds(), Instant::now());
        eprintln!(
            "joined the group in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        (sink.wait().await.unwrap(), cpu_before, assigned)
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let mb = (records * payload_bytes) as f64 / 1e6;
    assert_eq!(report.records_written as usize, records);
    let audit = runtime.block_on(async {
        let storage = weir::sink::upload::Storage::open(&weir_crds::sink::StorageSpec {
            url: dir.path().display().to_string(),
            ..Default::default()
        })
        .unwrap();
        weir::sink::audit::audit(&storage).await.unwrap()
    });
    assert!(audit.exactly_once() && audit.total() == records as u64);
    let written = audit.bytes;
    println!(
        "sink: {records} records ({mb:.0} MB) in {wall:.2} s wall, {cpu:.2} s CPU: \
         {:.0} records/s, {:.1} MB/s wall, {:.1} MB/s per CPU second; {:.1} MB of Parquet ({:.1}x smaller)",
        records as f64 / wall,
        mb / wall,
        mb / cpu,
        written as f64 / 1e6,
        mb * 1e6 / written as f64
    );
}
