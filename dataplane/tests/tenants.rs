//! Tenants end to end: API keys and JWTs on all three transports, tenant-scoped topics,
//! and quotas.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite;
use weir::gateway::Gateway;
use weir::gateway::grpc::response_from_status;
use weir_crds::PipelineSpec;
use weir_proto::Code;
use weir_proto::raccoon::event_service_client::EventServiceClient as RaccoonClient;

const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "weir-ingest";
const ACME_KEY: &str = "wk_acme_9f8e7d6c5b4a";
const GLOBEX_KEY: &str = "wk_globex_0a1b2c3d4e";
const LIMITED_KEY: &str = "wk_acme_pages_only";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jwt")
        .join(name)
}

fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn keys_file(revoked_acme: bool) -> String {
    format!(
        "- sha256: {}\n  tenant: acme\n  name: acme-web\n  disabled: {revoked_acme}\n- sha256: {}\n  tenant: globex\n- sha256: {}\n  tenant: acme\n  eventTypes: ['page_*']\n",
        sha256_hex(ACME_KEY),
        sha256_hex(GLOBEX_KEY),
        sha256_hex(LIMITED_KEY),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "tenant_id": tenant,
        "exp": now() + 3600,
        "iat": now(),
    })
}

/// A token signed with the test key `pem` (RS256, ES256 or EdDSA by its name).
fn sign(pem: &str, kid: &str, claims: &serde_json::Value) -> String {
    let bytes = std::fs::read(data(pem)).unwrap();
    let (alg, key) = match pem {
        p if p.starts_with("rsa") => (Algorithm::RS256, EncodingKey::from_rsa_pem(&bytes).unwrap()),
        "ec.pem" => (Algorithm::ES256, EncodingKey::from_ec_pem(&bytes).unwrap()),
        _ => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&bytes).unwrap()),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token with a hand-made header and an arbitrary signature part.
fn unsigned(header: serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// A token whose alg is HS256, "signed" with the RSA public key as the HMAC secret: the
/// classic algorithm-confusion attack.
fn hs_with_rsa_public_key(claims: &serde_json::Value) -> String {
    let public = std::fs::read(data("rsa1.pub.pem")).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa1".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&public)).unwrap()
}

/// Credential files in a temp dir, and the spec that reads them.
struct Tenancy {
    _dir: tempfile::TempDir,
    keys: PathBuf,
}

impl Tenancy {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.yaml");
        std::fs::write(&keys, keys_file(false)).unwrap();
        Self { _dir: dir, keys }
    }

    fn configure(&self, spec: &mut PipelineSpec) {
        spec.auth.api_keys_file = Some(self.keys.display().to_string());
        spec.auth.reload_interval = Duration::from_millis(100);
        spec.auth.jwt.jwks_file = Some(data("jwks.json").display().to_string());
        spec.auth.jwt.issuer = Some(ISSUER.into());
        spec.auth.jwt.audience = Some(AUDIENCE.into());
        spec.auth.jwt.leeway = Duration::ZERO;
        spec.routing.default_pattern = "%t.clickstream-%s-log".into();
        spec.websocket.ping_interval = Duration::from_millis(200);
        spec.websocket.idle_timeout = Duration::from_secs(10);
    }
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Http,
    Grpc,
    WebSocket,
}

const ALL: [Via; 3] = [Via::Http, Via::Grpc, Via::WebSocket];

/// How a credential travels.
#[derive(Clone, Copy, Debug)]
enum Cred<'a> {
    None,
    Bearer(&'a str),
    KeyHeader(&'a str),
    Query(&'a str, &'a str),
}

impl Cred<'_> {
    /// The header it travels in, if any, as (name, value).
    fn header(self) -> Option<(&'static str, String)> {
        match self {
            Cred::Bearer(t) => Some(("authorization", format!("Bearer {t}"))),
            Cred::KeyHeader(k) => Some(("x-weir-key", k.to_string())),
            Cred::None | Cred::Query(..) => None,
        }
    }

    /// `url` with the query parameter it travels in, if any.
    fn url(self, url: String) -> String {
        match self {
            Cred::Query(name, value) => format!("{url}?{name}={value}"),
            _ => url,
        }
    }
}

/// What the gateway answered: the batch code, and for HTTP the status and
/// `Retry-After`.
#[derive(Debug)]
struct Outcome {
    code: Code,
    reason: String,
    retry_after: Option<String>,
}

async fn send(gateway: &Gateway, via: Via, cred: Cred<'_>, types: &[&str]) -> Outcome {
    let events = types.iter().map(|t| event(t, b"{}")).collect();
    let batch = request("g1", events);
    match via {
        Via::Http => {
            let url = cred.url(format!("http://{}/api/v1/events", gateway.http_addr));
            let mut call = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/proto")
                .body(batch.encode_to_vec());
            if let Some((name, value)) = cred.header() {
                call = call.header(name, value);
            }
            let reply = call.send().await.unwrap();
            let status = reply.status().as_u16();
            let retry_after = reply
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let answer = weir_proto::SendEventResponse::decode(reply.bytes().await.unwrap())
                .expect("a protobuf answer");
            assert_eq!(
                status,
                weir::gateway::ack::http_status(answer.code()).as_u16(),
                "{answer:?}"
            );
            Outcome {
                code: answer.code(),
                reason: answer.reason,
                retry_after,
            }
        }
        Via::Grpc => {
            let mut client = RaccoonClient::connect(format!("http://{}", gateway.grpc_addr))
                .await
                .unwrap();
            let mut call = tonic::Request::new(batch);
            // gRPC has no query string: only header credentials travel.
            if let Some((name, value)) = cred.header() {
                call.metadata_mut().insert(name, value.parse().unwrap());
            }
            match client.send_event(call).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    Outcome {
                        code: answer.code(),
                        reason: answer.reason,
                        retry_after: None,
                    }
                }
                Err(status) => {
                    let answer = response_from_status(&status).expect("the answer in the trailer");
                    assert_eq!(
                        status.code(),
                        weir::gateway::ack::grpc_code(answer.code()),
                        "{status:?}"
                    );
                    Outcome {
                        code: answer.code(),
                        reason: answer.reason,
                        retry_after: status
                            .metadata()
                            .get("retry-after")
                            .map(|v| v.to_str().unwrap().to_string()),
                    }
                }
            }
        }
        Via::WebSocket => {
            let mut socket = match ws_connect(gateway, cred).await {
                Ok(socket) => socket,
                Err(outcome) => return outcome,
            };
            ws_send_proto(&mut socket, &batch).await;
            let answer = decode_binary(next_frame(&mut socket).await);
            Outcome {
                code: answer.code(),
                reason: answer.reason,
                retry_after: None,
            }
        }
    }
}

/// Opens a WebSocket; a refused upgrade comes back as its outcome.
async fn ws_connect(gateway: &Gateway, cred: Cred<'_>) -> Result<Socket, Outcome> {
    use tungstenite::client::IntoClientRequest;
    let url = cred.url(format!("ws://{}/api/v1/events", gateway.http_addr));
    let mut req = url.into_client_request().unwrap();
    if let Some((name, value)) = cred.header() {
        req.headers_mut().insert(name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let answer: serde_json::Value = serde_json::from_slice(&body).expect("a JSON answer");
            let code = Code::try_from(answer["code"].as_i64().unwrap() as i32).unwrap();
            assert_eq!(
                response.status().as_u16(),
                weir::gateway::ack::http_status(code).as_u16()
            );
            Err(Outcome {
                code,
                reason: answer["reason"].as_str().unwrap_or_default().to_string(),
                retry_after: response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string()),
            })
        }
        Err(other) => panic!("WebSocket connect failed: {other}"),
    }
}

fn assert_refused(outcome: &Outcome, why: &str, context: impl std::fmt::Debug) {
    assert_eq!(outcome.code, Code::Unauthorized, "{context:?}: {outcome:?}");
    assert!(
        outcome.reason.contains(why),
        "{context:?}: {:?} should say {why:?}",
        outcome.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_on_every_transport_and_revocation_by_reload() {
    let tenancy = Tenancy::new();
    let (kafka, gateway) = start(|spec| tenancy.configure(spec)).await;

    for via in ALL {
        for cred in [
            Cred::Bearer(ACME_KEY),
            Cred::KeyHeader(ACME_KEY),
            Cred::Query("key", ACME_KEY),
        ] {
            if matches!((via, cred), (Via::Grpc, Cred::Query(..))) {
                continue; // gRPC has no query string.
            }
            let outcome = send(&gateway, via, cred, &["page"]).await;
            assert_eq!(outcome.code, Code::Ok, "{via:?} {cred:?}: {outcome:?}");
        }
        let unknown = send(&gateway, via, Cred::Bearer("wk_nobody"), &["page"]).await;
        assert_refused(&unknown, "unknown API key", via);
        let missing = send(&gateway, via, Cred::None, &["page"]).await;
        assert_refused(&missing, "missing credentials", via);
        let empty = send(&gateway, via, Cred::Bearer(" "), &["page"]).await;
        assert_eq!(empty.code, Code::Unauthorized, "{via:?}");
    }
    // Each accepted batch landed in acme's topic with the tenant header.
    let bootstrap = kafka.bootstrap_servers();
    let records =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, "acme.clickstream-page-log", 8))
            .await
            .unwrap();
    assert_eq!(records.len(), 8);
    for record in &records {
        assert_eq!(header(record, "weir-tenant").as_deref(), Some("acme"));
    }

    // A WebSocket open with the key when it is revoked.
    let mut open = ws_connect(&gateway, Cred::Bearer(ACME_KEY)).await.unwrap();
    std::fs::write(&tenancy.keys, keys_file(true)).unwrap();
    for via in ALL {
        let mut refused = false;
        for _ in 0..50 {
            let outcome = send(&gateway, via, Cred::Bearer(ACME_KEY), &["page"]).await;
            if outcome.code == Code::Unauthorized {
                assert!(outcome.reason.contains("revoked"), "{outcome:?}");
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(refused, "{via:?}: the revoked key still works");
    }
    let close = next_frame(&mut open).await;
    assert_eq!(close_code(&close), Some(3000), "{close:?}");
    // The other tenant's key is untouched.
    let globex = send(&gateway, Via::Http, Cred::Bearer(GLOBEX_KEY), &["page"]).await;
    assert_eq!(globex.code, Code::Ok);
    let metrics = metrics_text(&gateway).await;
    assert!(metrics.contains("weir_gateway_auth_refused_total{reason=\"revoked\"}"));
    assert!(metrics.contains("weir_gateway_tenant_events_received_total{tenant=\"acme\"}"));
    gateway.shutdown().await;
}

/// Serves a JWKS document that the test can swap, as an identity provider rotating keys.
async fn jwks_server(document: Arc<Mutex<Vec<u8>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let document = document.clone();
            async move { document.lock().unwrap().clone() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/jwks.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_on_every_transport_with_every_refusal_named() {
    let tenancy = Tenancy::new();
    let document = Arc::new(Mutex::new(std::fs::read(data("jwks.json")).unwrap()));
    let url = jwks_server(document.clone()).await;
    let (kafka, gateway) = start(|spec| {
        // Both a file (jwks.json) and the identity provider's URL: rsa2 comes from the URL.
        tenancy.configure(spec);
        spec.auth.jwt.jwks_url = Some(url);
        spec.auth.jwt.jwks_min_refresh_interval = Duration::from_millis(10);
    })
    .await;

    let good = [
        sign("rsa1.pem", "rsa1", &claims("acme")),
        sign("ec.pem", "ec", &claims("acme")),
        sign("ed.pem", "ed", &claims("acme")),
    ];
    let mut expired = claims("acme");
    expired["exp"] = (now() - 3600).into();
    let mut early = claims("acme");
    early["nbf"] = (now() + 3600).into();
    let mut wrong_iss = claims("acme");
    wrong_iss["iss"] = "https://evil.example".into();
    let mut wrong_aud = claims("acme");
    wrong_aud["aud"] = "someone-else".into();
    let mut no_tenant = claims("acme");
    no_tenant.as_object_mut().unwrap().remove("tenant_id");
    let mut bad_tenant = claims("acme");
    bad_tenant["tenant_id"] = "acme.corp".into();
    let forged = {
        // Signed by rsa2 but naming rsa1's kid.
        sign("rsa2.pem", "rsa1", &claims("globex"))
    };
    let refused = [
        (forged, "signature does not verify"),
        (
            unsigned(
                serde_json::json!({"alg": "none", "typ": "JWT"}),
                &claims("acme"),
                b"",
            ),
            "alg \"none\" is not accepted",
        ),
        (
            hs_with_rsa_public_key(&claims("acme")),
            "HS256 tokens are not accepted",
        ),
        (sign("rsa1.pem", "rsa1", &expired), "expired"),
        (sign("rsa1.pem", "rsa1", &early), "not valid yet"),
        (sign("rsa1.pem", "rsa1", &wrong_iss), "issuer"),
        (sign("rsa1.pem", "rsa1", &wrong_aud), "audience"),
        (sign("rsa1.pem", "rsa1", &no_tenant), "no tenant_id claim"),
        (sign("rsa1.pem", "rsa1", &bad_tenant), "tenant id"),
        // An ES256 key asked to verify an RS256 token (kid swapped).
        (
            sign("rsa1.pem", "ec", &claims("acme")),
            "does not match its key",
        ),
    ];
    for via in ALL {
        for token in &good {
            let outcome = send(&gateway, via, Cred::Bearer(token), &["page"]).await;
            assert_eq!(outcome.code, Code::Ok, "{via:?}: {outcome:?}");
        }
        if !matches!(via, Via::Grpc) {
            let outcome = send(&gateway, via, Cred::Query("token", &good[0]), &["page"]).await;
            assert_eq!(outcome.code, Code::Ok, "{via:?} ?token=: {outcome:?}");
        }
        for (token, why) in &refused {
            let outcome = send(&gateway, via, Cred::Bearer(token), &["page"]).await;
            assert_refused(&outcome, why, (via, why));
        }
    }

    // A key the identity provider has just added: unknown kid, one fetch, accepted.
    let rotated = sign("rsa2.pem", "rsa2", &claims("globex"));
    let before = send(&gateway, Via::Http, Cred::Bearer(&rotated), &["page"]).await;
    assert_refused(&before, "unknown key id", "before the rotation");
    *document.lock().unwrap() = std::fs::read(data("jwks-rotated.json")).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for via in ALL {
        let outcome = send(&gateway, via, Cred::Bearer(&rotated), &["page"]).await;
        assert_eq!(
            outcome.code,
            Code::Ok,
            "{via:?} after rotation: {outcome:?}"
        );
    }

    let bootstrap = kafka.bootstrap_servers();
    let globex = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, "globex.clickstream-page-log", 3)
    })
    .await
    .unwrap();
    for record in &globex {
        assert_eq!(header(record, "weir-tenant").as_deref(), Some("globex"));
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_closed_when_its_jwt_expires_after_its_answers() {
    let tenancy = Tenancy::new();
    let (_kafka, gateway) = start(|spec| tenancy.configure(spec)).await;
    let mut short = claims("acme");
    // At least 2 s away (now() truncates): time to be answered before it expires.
    short["exp"] = (now() + 3).into();
    let token = sign("ed.pem", "ed", &short);
    let mut socket = ws_connect(&gateway, Cred::Bearer(&token)).await.unwrap();
    ws_send_proto(&mut socket, &request("before", vec![event("page", b"1")])).await;
    let answer = decode_binary(next_frame(&mut socket).await);
    assert_eq!(answer.code(), Code::Ok);
    let close = next_frame(&mut socket).await;
    assert_eq!(close_code(&close), Some(3000), "{close:?}");
    match close {
        tungstenite::Message::Close(Some(frame)) => {
            assert!(frame.reason.contains("expired"), "{frame:?}")
        }
        other => panic!("{other:?}"),
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_reach_only_their_own_topics() {
    let tenancy = Tenancy::new();
    let (kafka, gateway) = start(|spec| {
        tenancy.configure(spec);
        spec.routing.rules = vec![weir_crds::pipeline::RouteRule {
            exact: Some("ad_click".into()),
            topic: "acme-ads".into(),
            tenants: vec!["acme".into()],
            ..Default::default()
        }];
    })
    .await;
    // Event types chosen to collide if tenants were not kept apart.
    let acme = send(
        &gateway,
        Via::Http,
        Cred::Bearer(ACME_KEY),
        &["ad_click", "x"],
    )
    .await;
    assert_eq!(acme.code, Code::Ok);
    let globex = send(
        &gateway,
        Via::Http,
        Cred::Bearer(GLOBEX_KEY),
        &["ad_click", "x"],
    )
    .await;
    assert_eq!(globex.code, Code::Ok);
    // A key limited to page_* types: other types are refused per event.
    let limited = send(
        &gateway,
        Via::Http,
        Cred::Bearer(LIMITED_KEY),
        &["page_view", "purchase"],
    )
    .await;
    assert_eq!(limited.code, Code::BadRequest, "{limited:?}");
    assert!(
        limited.reason.starts_with("1 of 2 events failed; event 1:")
            && limited.reason.contains("not allowed for this API key"),
        "{limited:?}"
    );

    let bootstrap = kafka.bootstrap_servers();
    let topics = tokio::task::spawn_blocking(move || {
        (
            read_topic(&bootstrap, "acme-ads", 1),
            read_topic(&bootstrap, "acme.clickstream-x-log", 1),
            read_topic(&bootstrap, "globex.clickstream-ad_click-log", 1),
            read_topic(&bootstrap, "globex.clickstream-x-log", 1),
            read_topic(&bootstrap, "acme.clickstream-page_view-log", 1),
        )
    })
    .await
    .unwrap();
    for (records, tenant) in [
        (&topics.0, "acme"),
        (&topics.1, "acme"),
        (&topics.2, "globex"),
        (&topics.3, "globex"),
        (&topics.4, "acme"),
    ] {
        assert_eq!(records.len(), 1);
        assert_eq!(header(&records[0], "weir-tenant").as_deref(), Some(tenant));
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_answer_rate_limited_and_recover() {
    let tenancy = Tenancy::new();
    let (_kafka, gateway) = start(|spec| {
        tenancy.configure(spec);
        // A bucket of 20 events refilling at 10/s: the refused batch below needs 1.5 s
        // of refill, so a slow machine between two sends cannot make it pass.
        spec.tenants.quota.events_per_second = 10;
        spec.tenants.burst_seconds = 2;
        spec.tenants.quotas.insert(
            "globex".into(),
            weir_crds::pipeline::QuotaSpec {
                max_connections: 1,
                ..Default::default()
            },
        );
    })
    .await;
    for via in ALL {
        // A full bucket, then one more batch.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let first = send(&gateway, via, Cred::Bearer(ACME_KEY), &["a"; 20]).await;
        assert_eq!(first.code, Code::Ok, "{via:?}: {first:?}");
        let over = send(&gateway, via, Cred::Bearer(ACME_KEY), &["a"; 15]).await;
        assert_eq!(over.code, Code::RateLimited, "{via:?}: {over:?}");
        assert!(over.reason.contains("tenant acme"), "{over:?}");
        if !matches!(via, Via::WebSocket) {
            let seconds: u64 = over.retry_after.as_deref().unwrap().parse().unwrap();
            assert!((1..=2).contains(&seconds), "{via:?}: {over:?}");
        }
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let again = send(&gateway, via, Cred::Bearer(ACME_KEY), &["a"; 15]).await;
        assert_eq!(again.code, Code::Ok, "{via:?} recovers: {again:?}");
    }
    // globex: no rate limit, one WebSocket at a time.
    let first = ws_connect(&gateway, Cred::Bearer(GLOBEX_KEY))
        .await
        .unwrap();
    let second = ws_connect(&gateway, Cred::Bearer(GLOBEX_KEY))
        .await
        .err()
        .unwrap();
    assert_eq!(second.code, Code::RateLimited, "{second:?}");
    assert!(second.reason.contains("maxConnections"), "{second:?}");
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(socket) = ws_connect(&gateway, Cred::Bearer(GLOBEX_KEY)).await {
            reopened = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "the connection quota is given back");
    gateway.shutdown().await;
}

fn tls_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tls")
        .join(name)
}

/// A TLS client that trusts only the test certificate `trusted` (`a.crt` or `b.crt`).
fn tls_client(trusted: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(tls_data(trusted)).unwrap();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    client: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    client.connect(name, tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_ports_and_certificates_reload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(tls_data("a.crt"), &cert).unwrap();
    std::fs::copy(tls_data("a.key"), &key).unwrap();
    let tenancy = Tenancy::new();
    let (_kafka, gateway) = start(|spec| {
        tenancy.configure(spec);
        spec.listen.tls.cert_file = Some(cert.display().to_string());
        spec.listen.tls.key_file = Some(key.display().to_string());
        spec.listen.tls.reload_interval = Duration::from_millis(100);
    })
    .await;

    // HTTP over TLS.
    let mut https = tls_connect(gateway.http_addr, &tls_client("a.crt", b"http/1.1"))
        .await
        .unwrap();
    https
        .write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    https.read_to_string(&mut reply).await.unwrap_or_default();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("pong"),
        "{reply}"
    );

    // A WebSocket over TLS, authenticated.
    let stream = tls_connect(gateway.http_addr, &tls_client("a.crt", b"http/1.1"))
        .await
        .unwrap();
    let mut upgrade = tungstenite::client::IntoClientRequest::into_client_request(
        "wss://localhost/api/v1/events",
    )
    .unwrap();
    upgrade
        .headers_mut()
        .insert("x-weir-key", ACME_KEY.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::client_async(upgrade, stream)
        .await
        .unwrap();
    socket
        .send(tungstenite::Message::Binary(
            request("tls", vec![event("page", b"1")])
                .encode_to_vec()
                .into(),
        ))
        .await
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(decode_binary(frame).code(), Code::Ok);

    // The gRPC port speaks TLS with HTTP/2.
    let grpc = tls_connect(gateway.grpc_addr, &tls_client("a.crt", b"h2"))
        .await
        .unwrap();
    assert_eq!(grpc.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // A new pair replaces the old one for new connections, on both ports.
    std::fs::copy(tls_data("b.crt"), &cert).unwrap();
    std::fs::copy(tls_data("b.key"), &key).unwrap();
    let mut swapped = false;
    for _ in 0..50 {
        if tls_connect(gateway.grpc_addr, &tls_client("b.crt", b"h2"))
            .await
            .is_ok()
            && tls_connect(gateway.http_addr, &tls_client("b.crt", b"http/1.1"))
                .await
                .is_ok()
        {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(swapped, "the new certificate is served");
    assert!(
        tls_connect(gateway.http_addr, &tls_client("a.crt", b"http/1.1"))
            .await
            .is_err(),
        "the old certificate is gone"
    );
    // A broken file keeps the current pair.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        tls_connect(gateway.http_addr, &tls_client("b.crt", b"http/1.1"))
            .await
            .is_ok()
    );
    let metrics = metrics_text(&gateway).await;
    assert!(
        metrics.contains("weir_gateway_credential_reloads_total{file=\"tls\",result=\"error\"}"),
        "{metrics}"
    );
    gateway.shutdown().await;
}
