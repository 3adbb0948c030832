//! Test helpers: a gateway on the embedded Kafka, clients for each transport, and a
//! reader for the topics.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use prost::Message;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use weir::gateway::Gateway;
use weir_crds::PipelineSpec;
use weir_crds::settings::GatewaySettings;
use weir_proto::{Event, SendEventRequest, SendEventResponse};
use weir_runtime::kafka::EmbeddedKafka;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A spec on loopback ports chosen by the OS, publishing to `bootstrap`.
pub fn spec(bootstrap: &str) -> PipelineSpec {
    let mut spec = PipelineSpec::default();
    spec.listen.http = "127.0.0.1:0".into();
    spec.listen.grpc = "127.0.0.1:0".into();
    spec.listen.metrics = "127.0.0.1:0".into();
    spec.kafka.bootstrap_servers = bootstrap.into();
    spec.kafka.delivery_timeout = Duration::from_secs(10);
    spec
}

/// An embedded Kafka and a gateway on it, configured by `configure`.
pub async fn start(configure: impl FnOnce(&mut PipelineSpec)) -> (EmbeddedKafka, Gateway) {
    let kafka = EmbeddedKafka::start(1).expect("embedded Kafka");
    let mut spec = spec(&kafka.bootstrap_servers());
    configure(&mut spec);
    let gateway = Gateway::start(GatewaySettings::try_from(spec).unwrap())
        .await
        .expect("gateway starts");
    (kafka, gateway)
}

pub fn event(event_type: &str, payload: &[u8]) -> Event {
    Event {
        event_bytes: payload.to_vec().into(),
        r#type: event_type.into(),
        partition_key: String::new(),
    }
}

pub fn request(guid: &str, events: Vec<Event>) -> SendEventRequest {
    SendEventRequest {
        req_guid: guid.into(),
        sent_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        events,
    }
}

/// POSTs raw bytes with headers; returns status, headers and body.
pub async fn post(
    gateway: &Gateway,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut call = reqwest::Client::new()
        .post(format!("http://{}/api/v1/events", gateway.http_addr))
        .header("Content-Type", content_type)
        .body(body);
    for (k, v) in headers {
        call = call.header(*k, *v);
    }
    let reply = call.send().await.expect("HTTP call");
    let status = reply.status().as_u16();
    let headers = reply.headers().clone();
    (status, headers, reply.bytes().await.unwrap().to_vec())
}

/// POSTs a protobuf batch and decodes the protobuf answer.
pub async fn post_proto(
    gateway: &Gateway,
    request: &SendEventRequest,
    headers: &[(&str, &str)],
) -> (u16, SendEventResponse) {
    let (status, _, body) = post(
        gateway,
        "application/proto",
        request.encode_to_vec(),
        headers,
    )
    .await;
    (
        status,
        SendEventResponse::decode(&body[..]).expect("protobuf answer"),
    )
}

pub async fn connect(gateway: &Gateway, headers: &[(&str, &str)]) -> Socket {
    try_connect(gateway, headers)
        .await
        .expect("WebSocket connects")
}

pub async fn try_connect(
    gateway: &Gateway,
    headers: &[(&str, &str)],
) -> Result<Socket, tungstenite::Error> {
    let mut req = format!("ws://{}/api/v1/events", gateway.http_addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(req).await.map(|(s, _)| s)
}

/// The next data or close frame (pings are skipped), within 20 s.
pub async fn next_frame(socket: &mut Socket) -> tungstenite::Message {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a frame within 20 s")
            .expect("socket open")
            .expect("frame");
        if !matches!(
            frame,
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)
        ) {
            return frame;
        }
    }
}

pub async fn ws_send_proto(socket: &mut Socket, request: &SendEventRequest) {
    socket
        .send(tungstenite::Message::Binary(request.encode_to_vec().into()))
        .await
        .unwrap();
}

pub fn decode_binary(frame: tungstenite::Message) -> SendEventResponse {
    match frame {
        tungstenite::Message::Binary(b) => SendEventResponse::decode(b).unwrap(),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

pub fn close_code(frame: &tungstenite::Message) -> Option<u16> {
    match frame {
        tungstenite::Message::Close(Some(f)) => Some(u16::from(f.code)),
        _ => None,
    }
}

/// Reads `count` records of `topic` from the beginning, within 30 s.
pub fn read_topic(bootstrap: &str, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "weir-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            out.push(message.expect("consume").detach());
        }
    }
    assert_eq!(out.len(), count, "records read from {topic}");
    out
}

/// The payloads of the first `count` records of `topic`, sorted.
pub async fn sorted_payloads(bootstrap: &str, topic: &str, count: usize) -> Vec<Vec<u8>> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    let records = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, count))
        .await
        .unwrap();
    let mut payloads: Vec<Vec<u8>> = records.iter().map(payload).collect();
    payloads.sort();
    payloads
}

pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

pub fn payload(message: &OwnedMessage) -> Vec<u8> {
    message.payload().unwrap_or_default().to_vec()
}

pub fn key(message: &OwnedMessage) -> Option<Vec<u8>> {
    message.key().map(<[u8]>::to_vec)
}

pub async fn metrics_text(gateway: &Gateway) -> String {
    reqwest::get(format!("http://{}/metrics", gateway.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// This process's resident memory, bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// Reads until the server closes the connection; how long that took, or `None` when it
/// was still open after `within`.
pub async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all)
        .await
        .ok()
        .map(|()| started.elapsed())
}
