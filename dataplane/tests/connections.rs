//! Hostile and broken clients at the socket level: headers that never finish, idle
//! connections and connection floods, on the HTTP and gRPC ports (clients that never
//! read their answers: `memory.rs`).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_never_finish_and_idle_keep_alive_connections_are_closed() {
    let (_kafka, gateway) = start(|spec| {
        spec.limits.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut slow = TcpStream::connect(gateway.http_addr).await.unwrap();
    slow.write_all(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(10)).await;
    assert!(
        took.is_some(),
        "a request whose headers never finish is closed"
    );

    let mut idle = TcpStream::connect(gateway.http_addr).await.unwrap();
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut idle, Duration::from_secs(10)).await;
    assert!(took.is_some(), "an idle keep-alive connection is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once_on_both_ports() {
    let (_kafka, gateway) = start(|spec| {
        spec.limits.max_connections = 3;
    })
    .await;
    for addr in [gateway.http_addr, gateway.grpc_addr] {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server accept them before the one too many.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_secs(5))
                .await
                .is_some(),
            "the connection past the limit on {addr} is closed"
        );
        drop(held);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Slots are given back: a client is served again.
    let (status, _) = post_proto(
        &gateway,
        &request("after", vec![event("click", b"x")]),
        &[("X-User-ID", "u")],
    )
    .await;
    assert_eq!(status, 200);
    let metrics = metrics_text(&gateway).await;
    for port in ["http", "grpc"] {
        assert!(
            metrics.contains(&format!(
                r#"weir_gateway_connections_dropped_total{{port="{port}",reason="connection_limit"}} 1"#
            )),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_grpc_connection_is_closed() {
    let (_kafka, gateway) = start(|spec| {
        spec.limits.read_timeout = Duration::from_secs(1);
        spec.limits.admission_timeout = Duration::from_secs(1);
        spec.kafka.delivery_timeout = Duration::from_secs(1);
        spec.limits.idle_connection_timeout = Duration::from_secs(9);
    })
    .await;
    let mut idle = TcpStream::connect(gateway.grpc_addr).await.unwrap();
    let took = closed_within(&mut idle, Duration::from_secs(20)).await;
    assert!(took.is_some(), "an idle gRPC connection is closed");
}
