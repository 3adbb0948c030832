//! Clients that must work unchanged: what Raccoon's JS, Java and Python clients send
//! (their JSON bodies, byte for byte as their serializers write them) and how strictly
//! they read the answer; and browsers, which send `text/plain` beacons and cannot set
//! headers on a WebSocket.
//!
//! The clients' rules, from their sources (raystack/raccoon, `clients/`):
//! - JS: `JSON.stringify(SendEventRequest.toObject(msg))` with `event_bytes` as
//!   `Array.from(uint8Array)`; answers read by protobufjs `fromObject` (`data` must be an
//!   object).
//! - Java: `JsonFormat.printer().preservingProtoFieldNames()`, never sets `sent_time`;
//!   answers read by `JsonFormat.parser()` without `ignoringUnknownFields()`: an unknown
//!   field fails the call after the batch was taken, so the caller resends it.
//! - Python: `MessageToDict(preserving_proto_field_name=True)` then `json.dumps`;
//!   answers read by `json_format.Parse` without `ignore_unknown_fields`: an unknown
//!   field raises.

mod common;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const JS_BODY: &str = r#"{"req_guid":"g1","sent_time":{"seconds":1691366400,"nanos":123000000},"events":[{"event_bytes":[123,34,97,34,58,34,98,34,125],"type":"page"}]}"#;
const JAVA_BODY: &str =
    r#"{"req_guid":"3f2c9b","events":[{"event_bytes":"eyJhIjoiYiJ9","type":"page"}]}"#;
const PYTHON_BODY: &str = r#"{"req_guid": "g1", "sent_time": {"seconds": 1691366400, "nanos": 123456789}, "events": [{"event_bytes": "eyJhIjogImIifQ==", "type": "page"}]}"#;

/// Reads an answer as protobuf's strict JSON parsers do (Java's `JsonFormat.parser()`,
/// Python's `json_format.Parse`): only `SendEventResponse`'s fields, enums as numbers or
/// names, int64 as a number or a numeric string, `data` a map of strings.
fn parse_strictly(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not an object")?.clone();
    for (key, value) in &object {
        let fits = match key.as_str() {
            "status" | "code" => value.is_i64() || value.is_string(),
            "sent_time" | "sentTime" => {
                value.is_i64() || value.as_str().is_some_and(|s| s.parse::<i64>().is_ok())
            }
            "reason" => value.is_string(),
            "data" => value
                .as_object()
                .is_some_and(|m| m.values().all(serde_json::Value::is_string)),
            _ => return Err(format!("Cannot find field: {key}")),
        };
        if !fits {
            return Err(format!("field {key} has the wrong type: {value}"));
        }
    }
    Ok(object)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raccoon_json_clients_are_served_and_read_every_answer() {
    let (kafka, gateway) = start(|_| {}).await;
    for (client, body) in [
        ("js", JS_BODY),
        ("java", JAVA_BODY),
        ("python", PYTHON_BODY),
    ] {
        let (status, headers, answer) = post(
            &gateway,
            "application/json",
            body.as_bytes().to_vec(),
            &[("X-User-ID", client)],
        )
        .await;
        // Java's client retries anything but exactly 200.
        assert_eq!(
            status,
            200,
            "{client}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(headers["content-type"], "application/json");
        let answer = parse_strictly(&answer).unwrap_or_else(|e| panic!("{client}: {e}"));
        assert_eq!((&answer["status"], &answer["code"]), (&1.into(), &1.into()));
        assert!(answer["sent_time"].is_i64(), "Go's client needs a number");
    }
    let payloads = sorted_payloads(&kafka.bootstrap_servers(), "clickstream-page-log", 3).await;
    assert_eq!(
        payloads,
        [
            br#"{"a": "b"}"#.to_vec(),
            br#"{"a":"b"}"#.to_vec(),
            br#"{"a":"b"}"#.to_vec()
        ],
        "the JS client's byte list arrives as the same bytes as base64 does"
    );
    gateway.shutdown().await;
}

/// A batch with one refused event: Raccoon clients get an answer they can read (the
/// status and reason say what happened); per-event results only when asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_stay_readable_and_detail_comes_on_request() {
    let (_kafka, gateway) = start(|_| {}).await;
    let body = r#"{"req_guid": "p1", "events": [{"event_bytes": "e30=", "type": "page"}, {"event_bytes": "e30=", "type": "bad type!"}]}"#;
    let (_, _, plain) = post(&gateway, "application/json", body.into(), &[]).await;
    let plain = parse_strictly(&plain).unwrap();
    assert_eq!(plain["status"], 2, "the batch is not wholly taken");
    assert!(
        plain["reason"].as_str().unwrap().contains("1 of 2"),
        "{plain:?}"
    );

    for (headers, url_suffix) in [
        (vec![("X-Weir-Event-Results", "true")], ""),
        (vec![], "?event_results=true"),
    ] {
        let mut call = reqwest::Client::new()
            .post(format!(
                "http://{}/api/v1/events{url_suffix}",
                gateway.http_addr
            ))
            .header("Content-Type", "application/json")
            .body(body);
        for (k, v) in headers {
            call = call.header(k, v);
        }
        let detailed: serde_json::Value =
            serde_json::from_slice(&call.send().await.unwrap().bytes().await.unwrap()).unwrap();
        assert_eq!(detailed["event_results"][0]["index"], 1, "{detailed}");
        assert_eq!(detailed["event_results"][0]["code"], 2);
    }
    gateway.shutdown().await;
}

/// `navigator.sendBeacon(url, JSON.stringify(batch))` sends `text/plain;charset=UTF-8`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beacons_sent_as_text_plain_are_read_as_json() {
    let (_kafka, gateway) = start(|_| {}).await;
    let (status, _, answer) = post(
        &gateway,
        "text/plain;charset=UTF-8",
        JS_BODY.as_bytes().to_vec(),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    gateway.shutdown().await;
}

/// A `text/plain` POST needs no CORS preflight, so browsers send it from any page: the
/// gateway takes it only from `cors.allowedOrigins`, and never while CORS is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beacons_from_pages_of_other_origins_are_refused() {
    let beacon = |gateway: &weir::gateway::Gateway, origin: &'static str| {
        let url = format!("http://{}/api/v1/events", gateway.http_addr);
        async move {
            reqwest::Client::new()
                .post(url)
                .header("Content-Type", "text/plain;charset=UTF-8")
                .header("Origin", origin)
                .body(JS_BODY)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let (_kafka, gateway) =
        start(|spec| spec.cors.allowed_origins = vec!["https://app.example".into()]).await;
    assert_eq!(beacon(&gateway, "https://app.example").await, 200);
    assert_eq!(beacon(&gateway, "https://evil.example").await, 403);
    gateway.shutdown().await;
    let (_kafka, gateway) = start(|_| {}).await;
    assert_eq!(
        beacon(&gateway, "https://app.example").await,
        403,
        "CORS is off"
    );
    gateway.shutdown().await;
}

async fn connect_url(
    gateway: &weir::gateway::Gateway,
    query: &str,
    origin: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let mut request = format!("ws://{}/api/v1/events{query}", gateway.http_addr)
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(s, _)| s)
}

fn refused_with(result: Result<Socket, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("refused without an HTTP answer: {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// A browser's `new WebSocket(url)` cannot set headers: with `identity.queryParameters`
/// the token and the identity ride in the URL; pages from origins not listed in
/// `websocket.allowedOrigins` are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_connect_with_credentials_in_the_url_from_allowed_origins() {
    let (_kafka, gateway) = start(|spec| {
        spec.auth.tokens = vec!["s3cret".into()];
        spec.identity.query_parameters = true;
        spec.websocket.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let credentials = "?authorization=Bearer%20s3cret&x-user-id=browser-1";
    let mut socket = connect_url(&gateway, credentials, Some("https://app.example"))
        .await
        .expect("an allowed page with credentials in the URL connects");
    socket
        .send(tungstenite::Message::Text(JS_BODY.into()))
        .await
        .unwrap();
    let tungstenite::Message::Text(answer) = next_frame(&mut socket).await else {
        panic!("a JSON batch is answered in a text frame");
    };
    assert_eq!(parse_strictly(answer.as_bytes()).unwrap()["code"], 1);

    assert_eq!(refused_with(connect_url(&gateway, "", None).await), 401);
    assert_eq!(
        refused_with(connect_url(&gateway, credentials, Some("https://evil.example")).await),
        403
    );
    connect_url(&gateway, credentials, None)
        .await
        .expect("a client that is not a browser sends no Origin and is served");
    gateway.shutdown().await;
}

/// Without `identity.queryParameters` the URL's credentials are ignored: tokens in URLs
/// end up in access logs, so taking them is the operator's choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_are_ignored_unless_enabled() {
    let (_kafka, gateway) = start(|spec| spec.auth.tokens = vec!["s3cret".into()]).await;
    let result = connect_url(&gateway, "?authorization=Bearer%20s3cret", None).await;
    assert_eq!(refused_with(result), 401);
    gateway.shutdown().await;
}
