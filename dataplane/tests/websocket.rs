//! The WebSocket transport: frame types, pipelining, connection limits, keepalive,
//! oversized frames.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;
use weir_crds::pipeline::DuplicatePolicy;
use weir_proto::{Code, SendEventResponse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_text_frames_are_answered_in_kind() {
    let (_kafka, gateway) = start(|_| {}).await;
    let mut socket = connect(&gateway, &[("X-User-ID", "u1")]).await;
    ws_send_proto(&mut socket, &request("bin-1", vec![event("click", b"x")])).await;
    let answer = decode_binary(next_frame(&mut socket).await);
    assert_eq!(answer.code(), Code::Ok);
    assert_eq!(answer.data["req_guid"], "bin-1");

    let json = r#"{"req_guid":"txt-1","events":[{"event_bytes":"aGk=","type":"click"}]}"#;
    socket
        .send(tungstenite::Message::Text(json.into()))
        .await
        .unwrap();
    match next_frame(&mut socket).await {
        tungstenite::Message::Text(text) => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["code"], 1);
            assert_eq!(v["data"]["req_guid"], "txt-1");
        }
        other => panic!("expected a text frame, got {other:?}"),
    }

    // Garbage in either frame type gets an answer in kind, and the connection lives on.
    socket
        .send(tungstenite::Message::Text("{nope".into()))
        .await
        .unwrap();
    let tungstenite::Message::Text(text) = next_frame(&mut socket).await else {
        panic!("text")
    };
    assert!(text.contains("invalid JSON"), "{text}");
    socket
        .send(tungstenite::Message::Binary(vec![0x0a, 0xff, 0xff].into()))
        .await
        .unwrap();
    assert_eq!(
        decode_binary(next_frame(&mut socket).await).code(),
        Code::BadRequest
    );
    ws_send_proto(&mut socket, &request("after", vec![event("click", b"x")])).await;
    assert_eq!(
        decode_binary(next_frame(&mut socket).await).code(),
        Code::Ok
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_all_get_answers() {
    let (_kafka, gateway) = start(|spec| spec.limits.max_inflight_batches_per_connection = 4).await;
    let mut socket = connect(&gateway, &[("X-User-ID", "pipeliner")]).await;
    let n = 50;
    for i in 0..n {
        ws_send_proto(
            &mut socket,
            &request(&format!("p-{i}"), vec![event("click", b"x"); 10]),
        )
        .await;
    }
    let mut seen = HashSet::new();
    for _ in 0..n {
        let answer = decode_binary(next_frame(&mut socket).await);
        assert_eq!(answer.code(), Code::Ok);
        assert!(seen.insert(answer.data["req_guid"].clone()));
    }
    assert_eq!(seen.len(), n);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_duplicate_identity_close_with_1008() {
    let (_kafka, gateway) = start(|spec| spec.websocket.max_connections = 2).await;
    let _a = connect(&gateway, &[("X-User-ID", "a")]).await;

    // Same id and group: MAX_USER_LIMIT_REACHED, close 1008.
    let mut dup = connect(&gateway, &[("X-User-ID", "a")]).await;
    assert_eq!(
        decode_binary(next_frame(&mut dup).await).code(),
        Code::MaxUserLimitReached
    );
    assert_eq!(close_code(&next_frame(&mut dup).await), Some(1008));

    // Same id, other group: accepted.
    let _b = connect(&gateway, &[("X-User-ID", "a"), ("X-User-Group", "web")]).await;

    // Over the limit: MAX_CONNECTION_LIMIT_REACHED, close 1008.
    let mut over = connect(&gateway, &[("X-User-ID", "c")]).await;
    assert_eq!(
        decode_binary(next_frame(&mut over).await).code(),
        Code::MaxConnectionLimitReached
    );
    assert_eq!(close_code(&next_frame(&mut over).await), Some(1008));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_policy_closes_the_older_connection() {
    let (_kafka, gateway) = start(|spec| spec.identity.duplicates = DuplicatePolicy::Replace).await;
    let mut old = connect(&gateway, &[("X-User-ID", "a")]).await;
    let mut new = connect(&gateway, &[("X-User-ID", "a")]).await;
    assert_eq!(close_code(&next_frame(&mut old).await), Some(1008));
    ws_send_proto(&mut new, &request("n", vec![event("click", b"x")])).await;
    assert_eq!(decode_binary(next_frame(&mut new).await).code(), Code::Ok);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_and_closes_silent_clients() {
    let (_kafka, gateway) = start(|spec| {
        spec.websocket.ping_interval = Duration::from_millis(100);
        spec.websocket.idle_timeout = Duration::from_millis(400);
    })
    .await;
    // A client that never answers pings: a raw socket that sends the handshake and
    // then only listens (a WebSocket library would answer pings on its own).
    let mut silent = tokio::net::TcpStream::connect(gateway.http_addr)
        .await
        .unwrap();
    let handshake = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-User-ID: silent\r\n\r\n",
        gateway.http_addr
    );
    silent.write_all(handshake.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("server closes the silent client");
    let frames_at = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut frames = &received[frames_at..];
    let mut close = None;
    while frames.len() >= 2 {
        // Server frames are unmasked; control frames are short.
        let (opcode, len) = (frames[0] & 0x0f, (frames[1] & 0x7f) as usize);
        if opcode == 0x8 {
            close = Some(u16::from_be_bytes([frames[2], frames[3]]));
        }
        frames = &frames[2 + len..];
    }
    assert_eq!(close, Some(1001), "idle close code");
    // A client that reads (and so answers pings with pongs) stays connected.
    let mut live = connect(&gateway, &[("X-User-ID", "live")]).await;
    let mut pings = 0;
    while pings < 6 {
        let frame = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(frame, tungstenite::Message::Ping(_)), "{frame:?}");
        pings += 1;
    }
    // The reading client is still served.
    ws_send_proto(&mut live, &request("still", vec![event("click", b"x")])).await;
    assert_eq!(decode_binary(next_frame(&mut live).await).code(), Code::Ok);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009() {
    let (_kafka, gateway) = start(|spec| spec.limits.max_batch_bytes = 4096).await;
    let mut socket = connect(&gateway, &[("X-User-ID", "big")]).await;
    let huge = request("huge", vec![event("click", &vec![b'x'; 100_000])]);
    let _ = socket
        .send(tungstenite::Message::Binary(huge.encode_to_vec().into()))
        .await;
    let frame = next_frame(&mut socket).await;
    assert_eq!(close_code(&frame), Some(1009), "{frame:?}");
    if let tungstenite::Message::Close(Some(f)) = frame {
        assert!(f.reason.contains("4096"), "{}", f.reason);
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_batches_then_closes_1001() {
    let (kafka, gateway) = start(|_| {}).await;
    let mut socket = connect(&gateway, &[("X-User-ID", "drain")]).await;
    // Warm up metadata, then slow the broker so the next batch is in flight at shutdown.
    ws_send_proto(&mut socket, &request("warm", vec![event("click", b"x")])).await;
    assert_eq!(
        decode_binary(next_frame(&mut socket).await).code(),
        Code::Ok
    );
    kafka
        .cluster()
        .broker_round_trip_time(1, Duration::from_millis(1500))
        .unwrap();
    ws_send_proto(
        &mut socket,
        &request("in-flight", vec![event("click", b"y"); 5]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http_addr = gateway.http_addr;
    let shutdown = tokio::spawn(gateway.shutdown());

    let answer = decode_binary(next_frame(&mut socket).await);
    assert_eq!(answer.data["req_guid"], "in-flight");
    assert_eq!(answer.code(), Code::Ok, "{}", answer.reason);
    assert_eq!(close_code(&next_frame(&mut socket).await), Some(1001));
    shutdown.await.unwrap();
    // The listener is gone: new connections are refused.
    let refused = tokio_tungstenite::connect_async(format!("ws://{http_addr}/api/v1/events")).await;
    assert!(refused.is_err());
    let _ = SendEventResponse::default();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let (_kafka, gateway) = start(|_| {}).await;
    let mut socket = connect(&gateway, &[("X-User-ID", "bad-text")]).await;
    let frame = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
    socket
        .send(tungstenite::Message::Frame(frame))
        .await
        .unwrap();
    let close = next_frame(&mut socket).await;
    assert_eq!(close_code(&close), Some(1007), "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pings_get_pongs_and_a_closing_client_gets_its_answers_first() {
    let (_kafka, gateway) = start(|_| {}).await;
    let mut socket = connect(&gateway, &[("X-User-ID", "pinger")]).await;
    socket
        .send(tungstenite::Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a pong within 10 s")
            .unwrap()
            .unwrap();
        if let tungstenite::Message::Pong(payload) = frame {
            break payload;
        }
    };
    assert_eq!(&pong[..], b"are you there");

    // A batch, then the client's close at once: the answer comes first, then the
    // close that replies.
    ws_send_proto(&mut socket, &request("last", vec![event("click", b"x")])).await;
    socket.close(None).await.unwrap();
    let answer = decode_binary(next_frame(&mut socket).await);
    assert_eq!(answer.data["req_guid"], "last");
    assert_eq!(answer.code(), Code::Ok);
    assert_eq!(close_code(&next_frame(&mut socket).await), Some(1000));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_1002_and_bad_handshakes_are_refused() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let (_kafka, gateway) = start(|_| {}).await;
    // A reserved bit set without an extension.
    let mut socket = connect(&gateway, &[("X-User-ID", "rsv")]).await;
    let mut frame = Frame::message(vec![1, 2, 3], OpCode::Data(Data::Binary), true);
    frame.header_mut().rsv1 = true;
    socket
        .send(tungstenite::Message::Frame(frame))
        .await
        .unwrap();
    let close = next_frame(&mut socket).await;
    assert_eq!(close_code(&close), Some(1002), "{close:?}");

    // A continuation with no message before it.
    let mut socket = connect(&gateway, &[("X-User-ID", "lone")]).await;
    let frame = Frame::message(vec![1], OpCode::Data(Data::Continue), true);
    socket
        .send(tungstenite::Message::Frame(frame))
        .await
        .unwrap();
    assert_eq!(close_code(&next_frame(&mut socket).await), Some(1002));

    // A message in three fragments is one batch.
    let mut socket = connect(&gateway, &[("X-User-ID", "fragments")]).await;
    let bytes = request("fragmented", vec![event("click", b"x")]).encode_to_vec();
    let thirds: Vec<&[u8]> = bytes.chunks(bytes.len().div_ceil(3)).collect();
    for (i, part) in thirds.iter().enumerate() {
        let opcode = if i == 0 { Data::Binary } else { Data::Continue };
        let frame = Frame::message(part.to_vec(), OpCode::Data(opcode), i + 1 == thirds.len());
        socket
            .send(tungstenite::Message::Frame(frame))
            .await
            .unwrap();
    }
    let answer = decode_binary(next_frame(&mut socket).await);
    assert_eq!(answer.data["req_guid"], "fragmented");
    assert_eq!(answer.code(), Code::Ok);

    // Handshakes that are not WebSocket's: named in a 400.
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (headers, expected) in [
        (
            format!("{key}Sec-WebSocket-Version: 8\r\n"),
            "Sec-WebSocket-Version must be 13",
        ),
        (
            "Sec-WebSocket-Version: 13\r\n".to_string(),
            "Sec-WebSocket-Key is missing",
        ),
    ] {
        let mut raw = tokio::net::TcpStream::connect(gateway.http_addr)
            .await
            .unwrap();
        let handshake = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\n{headers}\r\n"
        );
        raw.write_all(handshake.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut answer))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains(expected), "{answer}");
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_holds_up_no_one_else() {
    let (_kafka, gateway) = start(|spec| {
        // The stalled client is given long to read, and the gateway-wide admission
        // budget holds two of its batches: if they held it while their answers wait,
        // no one else would be admitted.
        spec.limits.write_timeout = Duration::from_secs(60);
        spec.limits.max_inflight_bytes = 8 * 1024 * 1024;
    })
    .await;
    // Answers that list 10,000 failures each, to a client that never reads them.
    let bad_type = "!".repeat(380);
    let batch = request(
        "slow",
        (0..10_000).map(|_| event(&bad_type, b"x")).collect(),
    );
    let frame = tungstenite::Message::Binary(batch.encode_to_vec().into());
    let mut stalled = connect(&gateway, &[("X-User-ID", "never-reads")]).await;
    let sending = async {
        for _ in 0..20 {
            if stalled.send(frame.clone()).await.is_err() {
                return;
            }
        }
    };
    // Until the gateway stops reading it (its sends block) or all are sent.
    let _ = tokio::time::timeout(Duration::from_secs(10), sending).await;

    let mut other = connect(&gateway, &[("X-User-ID", "reads")]).await;
    for i in 0..3 {
        let guid = format!("meanwhile-{i}");
        ws_send_proto(&mut other, &request(&guid, vec![event("click", b"x")])).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), next_frame(&mut other))
            .await
            .expect("answered while another client does not read");
        let answer = decode_binary(answer);
        assert_eq!(answer.code(), Code::Ok, "{}", answer.reason);
        assert_eq!(answer.data["req_guid"], guid);
    }
}
