//! The gateway against a real Kafka-compatible broker process: topics ensured through
//! the admin API, batches acknowledged only after the broker has them, and every event
//! read back with its key and headers.

use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Offset, TopicPartitionList};
use weir::gateway::Gateway;
use weir_crds::PipelineSpec;
use weir_crds::pipeline::{RouteRule, TopicSpec};
use weir_crds::settings::GatewaySettings;
use weir_proto::{Code, Event, SendEventRequest, SendEventResponse};
use weir_tests::Broker;

fn partitions(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0].partitions().len()
}

fn read_all(bootstrap: &str, topic: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "weir-e2e")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions(bootstrap, topic) as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.unwrap().detach());
        }
    }
    out
}

async fn post(gateway: &Gateway, batch: &SendEventRequest, user: &str) -> (u16, SendEventResponse) {
    let reply = reqwest::Client::new()
        .post(format!("http://{}/api/v1/events", gateway.http_addr))
        .header("Content-Type", "application/proto")
        .header("X-User-ID", user)
        .body(batch.encode_to_vec())
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    (
        status,
        SendEventResponse::decode(reply.bytes().await.unwrap()).unwrap(),
    )
}

/// A gateway spec on free loopback ports publishing `click*` events to the topic
/// `clicks` of `partitions` partitions on `broker`.
fn clicks_on(broker: &Broker, delivery_timeout: Duration, partitions: i32) -> PipelineSpec {
    let mut spec = PipelineSpec::default();
    spec.listen.http = "127.0.0.1:0".into();
    spec.listen.grpc = "127.0.0.1:0".into();
    spec.listen.metrics = "127.0.0.1:0".into();
    spec.kafka.bootstrap_servers = broker.bootstrap.clone();
    spec.kafka.delivery_timeout = delivery_timeout;
    spec.routing.rules = vec![RouteRule {
        prefix: Some("click".into()),
        topic: "clicks".into(),
        ..Default::default()
    }];
    spec.topics = vec![TopicSpec {
        name: "clicks".into(),
        partitions,
        replication_factor: None,
        configs: Default::default(),
    }];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_publishes_to_a_real_broker() {
    let broker = Broker::start().expect("broker");
    let mut spec = clicks_on(&broker, Duration::from_secs(5), 2);

    // Created; ensuring again is a no-op; asking for fewer never shrinks.
    weir_runtime::kafka::ensure_topics(&spec.kafka, &spec.topics)
        .await
        .unwrap();
    assert_eq!(partitions(&broker.bootstrap, "clicks"), 2);
    weir_runtime::kafka::ensure_topics(&spec.kafka, &spec.topics)
        .await
        .unwrap();
    spec.topics[0].partitions = 1;
    weir_runtime::kafka::ensure_topics(&spec.kafka, &spec.topics)
        .await
        .unwrap();
    assert_eq!(partitions(&broker.bootstrap, "clicks"), 2);
    // Growing uses CreatePartitions. This broker lacks it, so the answer must be an
    // error that names the topic (on a broker with it, the topic grows).
    spec.topics[0].partitions = 4;
    match weir_runtime::kafka::ensure_topics(&spec.kafka, &spec.topics).await {
        Ok(()) => assert_eq!(partitions(&broker.bootstrap, "clicks"), 4),
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.contains("clicks") && text.contains("partitions"),
                "{text}"
            );
        }
    }
    spec.topics[0].partitions = 2;

    let gateway = Gateway::start(GatewaySettings::try_from(spec).unwrap())
        .await
        .unwrap();
    let batches = 20;
    let per_batch = 50;
    for b in 0..batches {
        let events = (0..per_batch)
            .map(|i| Event {
                event_bytes: format!("{b}:{i}").into_bytes().into(),
                r#type: if i % 2 == 0 {
                    "click_button"
                } else {
                    "click_link"
                }
                .into(),
                partition_key: String::new(),
            })
            .collect();
        let batch = SendEventRequest {
            req_guid: format!("batch-{b}"),
            sent_time: Some(std::time::SystemTime::now().into()),
            events,
        };
        let (status, response) = post(&gateway, &batch, &format!("user-{}", b % 3)).await;
        assert_eq!(
            (status, response.code()),
            (200, Code::Ok),
            "{}",
            response.reason
        );
    }

    // A type routed to a topic the broker lacks (it does not auto-create) is reported
    // failed, never as success.
    let ghost = SendEventRequest {
        req_guid: "ghost".into(),
        sent_time: None,
        events: vec![Event {
            event_bytes: b"boo".to_vec().into(),
            r#type: "ghost".into(),
            partition_key: String::new(),
        }],
    };
    let (status, response) = post(&gateway, &ghost, "user-0").await;
    assert_ne!(response.code(), Code::Ok);
    assert_ne!(status, 200);
    assert_eq!(response.event_results.len(), 1);
    gateway.shutdown().await;

    let bootstrap = broker.bootstrap.clone();
    let records =
        tokio::task::spawn_blocking(move || read_all(&bootstrap, "clicks", batches * per_batch))
            .await
            .unwrap();
    assert_eq!(records.len(), batches * per_batch);
    let mut payloads: Vec<String> = records
        .iter()
        .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
        .collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(
        payloads.len(),
        batches * per_batch,
        "each event exactly once"
    );
    for record in &records {
        let key = String::from_utf8(record.key().unwrap().to_vec()).unwrap();
        assert!(key.starts_with("user-"), "{key}");
        let headers = record.headers().unwrap();
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        for name in [
            weir::record::EVENT_TYPE,
            weir::record::REQ_GUID,
            weir::record::CONN_GROUP,
            weir::record::SENT_TIME,
            weir::record::RECEIVE_TIME,
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_is_answered_within_the_delivery_timeout() {
    let broker = Broker::start().expect("broker");
    let timeout = Duration::from_secs(3);
    let spec = clicks_on(&broker, timeout, 1);
    weir_runtime::kafka::ensure_topics(&spec.kafka, &spec.topics)
        .await
        .unwrap();
    let gateway = Gateway::start(GatewaySettings::try_from(spec).unwrap())
        .await
        .unwrap();
    let batch = |guid: &str| SendEventRequest {
        req_guid: guid.into(),
        sent_time: None,
        events: vec![Event {
            event_bytes: b"x".to_vec().into(),
            r#type: "click".into(),
            partition_key: String::new(),
        }],
    };
    let (status, _) = post(&gateway, &batch("before"), "u").await;
    assert_eq!(status, 200);
    drop(broker);
    for i in 0..3 {
        let started = Instant::now();
        let (status, response) = post(&gateway, &batch(&format!("after-{i}")), "u").await;
        let took = started.elapsed();
        assert_eq!(
            (status, response.code()),
            (503, Code::Unavailable),
            "{}",
            response.reason
        );
        // The slack is for a loaded test machine; it used to take twice the timeout.
        assert!(
            took < timeout + Duration::from_millis(900),
            "answered after {took:?}"
        );
    }
    gateway.shutdown().await;
}
