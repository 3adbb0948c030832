//! Memory bounds against hostile clients, measured from this process's resident memory.
//! One test, so nothing else runs in the process while it measures.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use weir_proto::{Code, SendEventResponse};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_clients_cannot_make_the_gateway_hold_memory() {
    let (_kafka, gateway) = start(|spec| {
        spec.limits.write_timeout = Duration::from_secs(1);
    })
    .await;
    let grown = measure(tiny_events_are_refused_before_they_are_decoded(&gateway)).await;
    eprintln!("tiny events: resident memory grew by {} MiB", grown / MIB);
    assert!(grown < 64 * MIB, "tiny events: grew {} MiB", grown / MIB);

    let grown = measure(http_client_that_never_reads(&gateway)).await;
    eprintln!(
        "HTTP client that never reads: resident memory grew by {} MiB",
        grown / MIB
    );
    assert!(grown < 100 * MIB, "HTTP: grew {} MiB", grown / MIB);

    let grown = measure(websocket_client_that_never_reads(&gateway)).await;
    eprintln!(
        "WebSocket client that never reads: resident memory grew by {} MiB",
        grown / MIB
    );
    assert!(grown < 200 * MIB, "WebSocket: grew {} MiB", grown / MIB);
}

async fn measure(scenario: impl std::future::Future<Output = ()>) -> u64 {
    let before = rss_bytes();
    scenario.await;
    rss_bytes().saturating_sub(before)
}

/// The probe's bodies: 4 MiB of empty protobuf events (`1a 00`, 2,097,144 of them) and
/// 1.3 million `{}` JSON events.
async fn tiny_events_are_refused_before_they_are_decoded(gateway: &weir::gateway::Gateway) {
    let body = [0x1a, 0x00].repeat(2_097_144);
    let json = format!(r#"{{"events":[{}]}}"#, vec!["{}"; 1_300_000].join(","));
    let (status, _, answer) = post(gateway, "application/proto", body, &[]).await;
    assert_eq!(status, 400);
    let answer = SendEventResponse::decode(&answer[..]).unwrap();
    assert!(
        answer
            .reason
            .contains("batch has 2097144 events; the limit is 10000"),
        "{}",
        answer.reason
    );
    let (status, _, answer) = post(gateway, "application/json", json.into_bytes(), &[]).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&answer).contains("more than 10000 events"));
}

/// Pipelined requests whose answers list 2,000 failed events each, never read.
async fn http_client_that_never_reads(gateway: &weir::gateway::Gateway) {
    let bad_type = "!".repeat(200);
    let body = request("r", (0..2_000).map(|_| event(&bad_type, b"x")).collect()).encode_to_vec();
    let mut head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nX-User-ID: u\r\nContent-Type: application/proto\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    head.extend_from_slice(&body);
    let mut client = TcpStream::connect(gateway.http_addr).await.unwrap();
    let started = Instant::now();
    let sending = async {
        for _ in 0..200 {
            if client.write_all(&head).await.is_err() {
                return;
            }
        }
    };
    // Sends stop being taken once the answers back up; the server then gives up on the
    // client after the write timeout.
    let _ = tokio::time::timeout(Duration::from_secs(20), sending).await;
    assert!(
        closed_within(&mut client, Duration::from_secs(20))
            .await
            .is_some(),
        "the server closes the connection of a client that does not read ({:?})",
        started.elapsed()
    );
}

/// The probe's case: 10,000 events whose types are 380 invalid characters, so every
/// answer lists 10,000 failures, sent without reading.
async fn websocket_client_that_never_reads(gateway: &weir::gateway::Gateway) {
    let bad_type = "!".repeat(380);
    let batch = request(
        "slow",
        (0..10_000).map(|_| event(&bad_type, b"x")).collect(),
    );
    let frame = tungstenite::Message::Binary(batch.encode_to_vec().into());
    let mut socket = connect(gateway, &[("X-User-ID", "never-reads")]).await;
    let sending = async {
        for _ in 0..150 {
            if socket.send(frame.clone()).await.is_err() {
                return;
            }
        }
    };
    // The gateway stops reading once its in-flight batches wait for answer room, so
    // sends block until it gives up on the client.
    tokio::time::timeout(Duration::from_secs(120), sending)
        .await
        .expect("the gateway closes the connection of a client that does not read");
    let metrics = metrics_text(gateway).await;
    assert!(
        metrics.contains(
            r#"weir_gateway_connections_dropped_total{port="http",reason="not_reading"} 1"#
        ),
        "{metrics}"
    );
    // Others are served as before.
    let mut other = connect(gateway, &[("X-User-ID", "reads")]).await;
    ws_send_proto(&mut other, &request("ok", vec![event("click", b"x")])).await;
    assert_eq!(decode_binary(next_frame(&mut other).await).code(), Code::Ok);
}
