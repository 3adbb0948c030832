//! The HTTP transport against the embedded Kafka: encodings, dialects, limits and
//! every status code.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use prost::Message;
use weir::record;
use weir_crds::settings::GatewaySettings;
use weir_proto::{Code, SendEventResponse, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_batch_lands_in_kafka_with_key_and_headers() {
    let (kafka, gateway) = start(|_| {}).await;
    let mut keyed = event("page_view", b"third");
    keyed.partition_key = "device-9".into();
    let batch = request(
        "guid-1",
        vec![
            event("page_view", b"first"),
            event("page_view", b"second"),
            keyed,
        ],
    );
    let (status, response) = post_proto(
        &gateway,
        &batch,
        &[("X-User-ID", "user-1"), ("X-User-Group", "ios")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(response.status(), Status::Success);
    assert_eq!(response.code(), Code::Ok);
    assert_eq!(response.data["req_guid"], "guid-1");

    let bootstrap = kafka.bootstrap_servers();
    let records =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, "clickstream-page_view-log", 3))
            .await
            .unwrap();
    let mut payloads: Vec<Vec<u8>> = records.iter().map(payload).collect();
    payloads.sort();
    assert_eq!(
        payloads,
        vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
    );
    for record in &records {
        let expected_key: &[u8] = if payload(record) == b"third" {
            b"device-9"
        } else {
            b"user-1"
        };
        assert_eq!(key(record).as_deref(), Some(expected_key));
        assert_eq!(
            header(record, record::EVENT_TYPE).as_deref(),
            Some("page_view")
        );
        assert_eq!(header(record, record::REQ_GUID).as_deref(), Some("guid-1"));
        assert_eq!(header(record, record::CONN_GROUP).as_deref(), Some("ios"));
        assert_eq!(
            header(record, record::SENT_TIME).as_deref(),
            Some("1700000000000000")
        );
        let received: i64 = header(record, record::RECEIVE_TIME)
            .unwrap()
            .parse()
            .unwrap();
        assert!(received > 1_700_000_000_000_000);
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_dialects_are_answered_in_kind() {
    let (_kafka, gateway) = start(|_| {}).await;
    let raccoon = br#"{"req_guid":"r1","sent_time":{"seconds":1700000000,"nanos":0},"events":[{"event_bytes":"aGk=","type":"click"}]}"#;
    let (status, headers, body) = post(
        &gateway,
        "application/json; charset=utf-8",
        raccoon.to_vec(),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], 1);
    assert_eq!(v["code"], 1);
    assert_eq!(v["data"]["req_guid"], "r1");
    assert!(v.get("reason").is_none());

    let canonical = br#"{"reqGuid":"c1","sentTime":"2023-11-14T22:13:20Z","events":[{"eventBytes":"aGk=","type":"click"}]}"#;
    let (status, _, body) = post(&gateway, "application/json", canonical.to_vec(), &[]).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "STATUS_SUCCESS");
    assert_eq!(v["code"], "CODE_OK");
    assert!(v["sentTime"].is_string());
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_gzip_and_ping() {
    let (_kafka, gateway) = start(|_| {}).await;
    let batch = request("g", vec![event("a", b"x")]);
    for content_type in [
        "application/x-protobuf",
        "application/proto; charset=binary",
    ] {
        let (status, headers, body) =
            post(&gateway, content_type, batch.encode_to_vec(), &[]).await;
        assert_eq!(status, 200, "{content_type}");
        assert_eq!(headers["content-type"], "application/proto");
        assert_eq!(
            SendEventResponse::decode(&body[..]).unwrap().code(),
            Code::Ok
        );
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&batch.encode_to_vec()).unwrap();
    let gzipped = gz.finish().unwrap();
    // Content codings are case-insensitive; x-gzip is gzip; identity is none.
    for coding in ["gzip", "GZIP", " Gzip ", "x-gzip"] {
        let (status, _, _) = post(
            &gateway,
            "application/proto",
            gzipped.clone(),
            &[("Content-Encoding", coding)],
        )
        .await;
        assert_eq!(status, 200, "gzip body as {coding:?}");
    }
    let (status, _, _) = post(
        &gateway,
        "application/proto",
        batch.encode_to_vec(),
        &[("Content-Encoding", "identity")],
    )
    .await;
    assert_eq!(status, 200, "identity");
    // Any other coding: 415 with an answer naming it, in the request's encoding.
    let (status, _, body) = post(
        &gateway,
        "application/proto",
        batch.encode_to_vec(),
        &[("Content-Encoding", "br")],
    )
    .await;
    assert_eq!(status, 415);
    let answer = SendEventResponse::decode(&body[..]).unwrap();
    assert_eq!(answer.code(), Code::BadRequest);
    assert!(answer.reason.contains("\"br\""), "{}", answer.reason);

    let pong = reqwest::get(format!("http://{}/ping", gateway.http_addr))
        .await
        .unwrap();
    assert_eq!(pong.status().as_u16(), 200);
    assert_eq!(pong.text().await.unwrap(), "pong");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_codes_that_mean_something() {
    let (_kafka, gateway) = start(|spec| {
        spec.limits.max_batch_bytes = 1024;
        spec.limits.max_events_per_batch = 5;
        spec.auth.tokens = vec!["t0ken".into()];
    })
    .await;
    let auth = [("Authorization", "Bearer t0ken")];
    let json_code = |body: &[u8]| -> i64 {
        serde_json::from_slice::<serde_json::Value>(body).unwrap()["code"]
            .as_i64()
            .unwrap()
    };

    // 401: no token, wrong token.
    let batch = request("g", vec![event("a", b"x")]);
    let (status, response) = post_proto(&gateway, &batch, &[]).await;
    assert_eq!((status, response.code()), (401, Code::Unauthorized));
    let (status, _) = post_proto(&gateway, &batch, &[("Authorization", "Bearer nope")]).await;
    assert_eq!(status, 401);
    let (status, _) = post_proto(&gateway, &batch, &auth).await;
    assert_eq!(status, 200);

    // 415: a content type the gateway does not read; answered in Raccoon JSON.
    let (status, _, body) = post(&gateway, "text/html", b"hi".to_vec(), &auth).await;
    assert_eq!(status, 415);
    assert_eq!(json_code(&body), Code::BadRequest as i64);

    // 400: garbage JSON, truncated protobuf, wrong types, too many events.
    let (status, _, body) = post(
        &gateway,
        "application/json",
        b"{\"events\": [".to_vec(),
        &auth,
    )
    .await;
    assert_eq!(status, 400);
    let reason: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        reason["reason"].as_str().unwrap().contains("invalid JSON"),
        "{reason}"
    );
    let full = request("g", vec![event("a", b"payload")]).encode_to_vec();
    let (status, _, _) = post(
        &gateway,
        "application/proto",
        full[..full.len() - 2].to_vec(),
        &auth,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = post(
        &gateway,
        "application/json",
        br#"{"events":[{"type":7}]}"#.to_vec(),
        &auth,
    )
    .await;
    assert_eq!(status, 400);
    let many = request("g", (0..6).map(|_| event("a", b"x")).collect());
    let (status, response) = post_proto(&gateway, &many, &auth).await;
    assert_eq!(status, 400);
    assert!(response.reason.contains("6 events"), "{}", response.reason);

    // 413: over the limit, plain and as a small gzip bomb.
    let big = request("g", vec![event("a", &vec![b'x'; 2000])]);
    let (status, response) = post_proto(&gateway, &big, &auth).await;
    assert_eq!((status, response.code()), (413, Code::PayloadTooLarge));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&big.encode_to_vec()).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1024);
    let (status, _, _) = post(
        &gateway,
        "application/proto",
        bomb,
        &[auth[0], ("Content-Encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 413);

    // Corrupt gzip.
    let (status, _, _) = post(
        &gateway,
        "application/proto",
        b"not gzip at all".to_vec(),
        &[auth[0], ("Content-Encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 400);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_identity_when_required_is_a_bad_request() {
    let (_kafka, gateway) = start(|spec| spec.identity.require_id = true).await;
    let (status, response) = post_proto(&gateway, &request("g", vec![event("a", b"x")]), &[]).await;
    assert_eq!(status, 400);
    assert!(response.reason.contains("X-User-ID"), "{}", response.reason);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_gateway_answers_429_with_retry_after() {
    let (kafka, gateway) = start(|spec| {
        spec.limits.max_batch_bytes = 600;
        spec.limits.max_inflight_bytes = 600;
        spec.limits.admission_timeout = Duration::from_millis(50);
    })
    .await;
    // Warm up metadata and the producer id, then slow the broker so the first batch is
    // still in flight when the second arrives.
    let (status, _) = post_proto(&gateway, &request("warm", vec![event("a", b"w")]), &[]).await;
    assert_eq!(status, 200);
    kafka
        .cluster()
        .broker_round_trip_time(1, Duration::from_millis(700))
        .unwrap();
    let first = request("first", vec![event("a", &[b'x'; 500])]);
    let second = request("second", vec![event("a", &[b'y'; 500])]);
    let g = &gateway;
    let (a, b) = tokio::join!(post_proto(g, &first, &[]), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        post(g, "application/proto", second.encode_to_vec(), &[]).await
    });
    assert_eq!(a.0, 200, "{:?}", a.1);
    let (status, headers, body) = b;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        SendEventResponse::decode(&body[..]).unwrap().code(),
        Code::RateLimited
    );
    kafka
        .cluster()
        .broker_round_trip_time(1, Duration::ZERO)
        .unwrap();
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_configured_origin() {
    let (_kafka, gateway) =
        start(|spec| spec.cors.allowed_origins = vec!["https://shop.example".into()]).await;
    let reply = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/api/v1/events", gateway.http_addr),
        )
        .header("Origin", "https://shop.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type,x-user-id")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    assert_eq!(
        reply.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let allowed = reply.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-user-id"), "{allowed}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health() {
    let (_kafka, gateway) = start(|_| {}).await;
    let (status, _) = post_proto(&gateway, &request("g", vec![event("click", b"x")]), &[]).await;
    assert_eq!(status, 200);
    let text = metrics_text(&gateway).await;
    for needle in [
        "weir_gateway_events_received_total{event_type=\"click\"} 1",
        "weir_gateway_events_published_total{event_type=\"click\",topic=\"clickstream-click-log\"} 1",
        "weir_gateway_batches_total{code=\"CODE_OK\",transport=\"http\"} 1",
        "weir_gateway_batch_ack_seconds_bucket",
        "weir_gateway_kafka_delivery_seconds_bucket",
        "weir_gateway_producer_queue_depth",
        "process_resident_memory_bytes",
        "weir_build_info{component=\"gateway\",version=\"",
        "weir_kafka_client_queue_messages",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}");
    }
    let healthz = reqwest::get(format!("http://{}/healthz", gateway.metrics_addr))
        .await
        .unwrap();
    assert_eq!(healthz.status().as_u16(), 200);
    // Readiness follows the Kafka check, which runs at start.
    let mut ready = false;
    for _ in 0..50 {
        let r = reqwest::get(format!("http://{}/readyz", gateway.metrics_addr))
            .await
            .unwrap();
        if r.status().as_u16() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready once Kafka metadata is reachable");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_kafka, gateway) =
        start(|spec| spec.limits.read_timeout = Duration::from_millis(300)).await;
    let mut socket = tokio::net::TcpStream::connect(gateway.http_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"events\":",
        gateway.http_addr
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("answered, not left hanging")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within"), "{text}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_kafka_is_unreachable() {
    // Port 1 on loopback: nothing listens there.
    let gateway =
        weir::gateway::Gateway::start(GatewaySettings::try_from(spec("127.0.0.1:1")).unwrap())
            .await
            .unwrap();
    let mut reason = String::new();
    for _ in 0..150 {
        let r = reqwest::get(format!("http://{}/readyz", gateway.metrics_addr))
            .await
            .unwrap();
        assert_ne!(r.status().as_u16(), 200, "never ready without Kafka");
        reason = r.text().await.unwrap();
        if reason.contains("Kafka metadata unreachable") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reason.contains("Kafka metadata unreachable"), "{reason}");
    let healthz = reqwest::get(format!("http://{}/healthz", gateway.metrics_addr))
        .await
        .unwrap();
    assert_eq!(healthz.status().as_u16(), 200, "alive all the same");
    gateway.shutdown().await;
}
