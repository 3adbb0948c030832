//! The whole data plane against real processes: events into the gateway, through a
//! tansu broker, out of the sink into an s3s-fs S3 server, read back exactly once.
//! Also: large files go up as multipart uploads, and wrong credentials fail clearly
//! without committing any offset.

use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use weir::gateway::Gateway;
use weir::sink::Sink;
use weir::sink::audit::{AuditReport, audit};
use weir::sink::upload::Storage;
use weir_crds::pipeline::TopicSpec;
use weir_crds::settings::{GatewaySettings, SinkSettings};
use weir_crds::sink::StorageSpec;
use weir_crds::{PipelineSpec, SinkSpec};
use weir_proto::{Event, SendEventRequest};
use weir_tests::{Broker, S3Server};

const TOPIC: &str = "clickstream-page_view-log";

/// Storage on `s3`, multipart past 5 MiB.
fn storage_spec(s3: &S3Server, dir: &Path, secret: &str) -> StorageSpec {
    StorageSpec {
        part_size: 5 << 20,
        ..s3.storage_spec(dir, secret)
    }
}

fn sink_spec(broker: &Broker, storage: StorageSpec) -> SinkSpec {
    let mut spec = SinkSpec::default();
    spec.kafka.bootstrap_servers = broker.bootstrap.clone();
    spec.source.topics = vec![TOPIC.into()];
    spec.source.topic_pattern = None;
    spec.storage = storage;
    spec.listen.metrics = "127.0.0.1:0".into();
    spec.flush.max_age = Duration::from_secs(2);
    spec
}

async fn gateway(broker: &Broker) -> Gateway {
    let mut spec = PipelineSpec::default();
    spec.listen.http = "127.0.0.1:0".into();
    spec.listen.grpc = "127.0.0.1:0".into();
    spec.listen.metrics = "127.0.0.1:0".into();
    spec.kafka.bootstrap_servers = broker.bootstrap.clone();
    spec.topics = vec![TopicSpec {
        name: TOPIC.into(),
        partitions: 2,
        replication_factor: None,
        configs: Default::default(),
    }];
    weir_runtime::kafka::ensure_topics(&spec.kafka, &spec.topics)
        .await
        .unwrap();
    Gateway::start(GatewaySettings::try_from(spec).unwrap())
        .await
        .unwrap()
}

async fn send(
    gateway: &Gateway,
    batches: usize,
    per_batch: usize,
    payload: impl Fn(usize) -> Vec<u8>,
) {
    let client = reqwest::Client::new();
    for b in 0..batches {
        let events = (0..per_batch)
            .map(|i| Event {
                event_bytes: payload(b * per_batch + i).into(),
                r#type: "page_view".into(),
                partition_key: format!("user-{i}"),
            })
            .collect();
        let request = SendEventRequest {
            req_guid: format!("batch-{b}"),
            sent_time: None,
            events,
        };
        let reply = client
            .post(format!("http://{}/api/v1/events", gateway.http_addr))
            .header("Content-Type", "application/proto")
            .body(request.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{:?}", reply.text().await);
    }
}

async fn audit_s3(storage: &StorageSpec) -> AuditReport {
    audit(&Storage::open(storage).unwrap()).await.unwrap()
}

async fn wait_for_records(storage: &StorageSpec, total: u64) -> AuditReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = audit_s3(storage).await;
        if report.total() >= total || Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_reach_s3_as_parquet_exactly_once_and_large_files_use_multipart() {
    let broker = Broker::start().unwrap();
    let s3 = S3Server::start("weir-events").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_spec(&s3, dir.path(), &s3.secret_key);
    let gateway = gateway(&broker).await;
    send(&gateway, 20, 50, |i| format!("{{\"n\":{i}}}").into_bytes()).await;
    let sink = Sink::start(SinkSettings::try_from(sink_spec(&broker, storage.clone())).unwrap())
        .await
        .unwrap();
    let report = wait_for_records(&storage, 1000).await;
    assert!(report.exactly_once(), "{report:#?}");
    assert_eq!(report.total(), 1000);

    // 12 MiB of incompressible payloads over two partitions: files over one 5 MiB part.
    let noise = |i: usize| {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (i as u64 + 1);
        (0..100 * 1024)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    send(&gateway, 12, 10, noise).await;
    let report = wait_for_records(&storage, 1120).await;
    assert!(report.exactly_once(), "{report:#?}");
    assert_eq!(report.total(), 1120);
    let opened = Storage::open(&storage).unwrap();
    let biggest = largest_object(&opened).await;
    // Larger than storage.partSize (5 MiB): uploaded in parts, and read back whole above.
    assert!(biggest > 5 << 20, "largest file {biggest} bytes");
    sink.shutdown().await.unwrap();
    gateway.shutdown().await;
}

/// The size of the largest object under the prefix.
async fn largest_object(storage: &Storage) -> u64 {
    use futures_util::TryStreamExt;
    let objects: Vec<_> = storage
        .store
        .list(Some(&storage.path("")))
        .try_collect()
        .await
        .unwrap();
    objects.iter().map(|o| o.size).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_credentials_fail_clearly_and_commit_nothing() {
    let broker = Broker::start().unwrap();
    let s3 = S3Server::start("weir-events").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&broker).await;
    send(&gateway, 2, 10, |i| vec![i as u8]).await;
    let storage = storage_spec(&s3, dir.path(), "not-the-secret");
    let error = Sink::start(SinkSettings::try_from(sink_spec(&broker, storage)).unwrap())
        .await
        .err()
        .expect("wrong credentials are refused")
        .to_string();
    let detail = format!("{error:#}");
    assert!(
        error.starts_with("cannot use storage s3://weir-events/events (check the credentials"),
        "{detail}"
    );
    assert!(detail.contains("SignatureDoesNotMatch"), "{detail}");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "weir-sink")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, 0);
    tpl.add_partition(TOPIC, 1);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for element in committed.elements() {
        assert!(
            !matches!(element.offset(), Offset::Offset(_)),
            "nothing may be committed: {committed:?}"
        );
    }
    gateway.shutdown().await;
}
