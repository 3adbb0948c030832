//! The gateway's pure per-batch work, without Kafka: decode, route, answer.
//! `cargo bench -p weir --bench core`.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use weir::gateway::{ack, decode, json, route};
use weir_crds::pipeline::RoutingSpec;
use weir_proto::{Event, SendEventRequest};

fn batch() -> SendEventRequest {
    SendEventRequest {
        req_guid: "bench".into(),
        sent_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        events: (0..100)
            .map(|i| Event {
                event_bytes: Bytes::from(vec![b'x'; 200]),
                r#type: format!("type_{}", i % 4),
                partition_key: String::new(),
            })
            .collect(),
    }
}

fn core(c: &mut Criterion) {
    let request = batch();
    let proto = Bytes::from(request.encode_to_vec());
    let json_body = Bytes::from(json::render_request(&request));
    let table = route::RoutingTable::compile(&RoutingSpec::default()).unwrap();
    let mut group = c.benchmark_group("batch_of_100_events_of_200_bytes");
    group.throughput(Throughput::Elements(100));
    let pass = |kind, body: &Bytes| {
        let (req, enc) = decode::decode_request(kind, body.clone(), 10_000).unwrap();
        let routed = req
            .events
            .iter()
            .filter(|e| matches!(table.route(None, &e.r#type), route::Route::Topic(_)))
            .count();
        let answer = ack::batch_response(&req.req_guid, routed, Vec::new());
        decode::encode_response(&answer, enc)
    };
    group.bench_function("protobuf_decode_route_answer", |b| {
        b.iter(|| pass(decode::ContentKind::Protobuf, &proto))
    });
    group.bench_function("json_decode_route_answer", |b| {
        b.iter(|| pass(decode::ContentKind::Json, &json_body))
    });
    group.finish();
}

/// What authentication adds to one request: finding the credential and checking it (an
/// API key: one SHA-256 and a map lookup; a JWT: a cache lookup after its first
/// verification, and the full RS256 verification it saves), and what a tenant pattern
/// adds to routing a batch.
fn credentials(c: &mut Criterion) {
    use weir::gateway::auth::Authenticator;
    use weir::gateway::metrics::Metrics;
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jwt");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let key = "wk_bench_0123456789abcdef";
    let hash: String = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    };
    std::fs::write(&keys, format!("- sha256: {hash}\n  tenant: acme\n")).unwrap();
    let spec = weir_crds::pipeline::AuthSpec {
        api_keys_file: Some(keys.display().to_string()),
        jwt: weir_crds::pipeline::JwtSpec {
            jwks_file: Some(data.join("jwks.json").display().to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let auth = runtime.block_on(Authenticator::load(&spec)).unwrap();
    let metrics = Metrics::new();
    let pem = std::fs::read(data.join("rsa1.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa1".into());
    let claims = serde_json::json!({"tenant_id": "acme", "exp": 4_102_444_800u64});
    let jwt = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    let bearer =
        |value: String| move |name: &str| (name == "Authorization").then_some(value.clone());
    let mut group = c.benchmark_group("per_request_credentials");
    for (name, credential) in [
        ("api_key", format!("Bearer {key}")),
        ("jwt_cached", format!("Bearer {jwt}")),
    ] {
        let header = bearer(credential);
        group.bench_function(name, |b| {
            b.iter(|| {
                let value = header("Authorization");
                runtime
                    .block_on(auth.authenticate(
                        |n| (n == "Authorization").then_some(value.as_deref().unwrap()),
                        |_| None,
                        &metrics,
                    ))
                    .unwrap()
            })
        });
    }
    group.bench_function("jwt_rs256_first_verification", |b| {
        let signing = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
        let mut serial = 0u64;
        // A new token each pass (signed outside the timing), so none is cached.
        b.iter_batched(
            || {
                serial += 1;
                let claims = serde_json::json!({"tenant_id": "acme", "exp": 4_102_444_800u64, "jti": serial});
                format!("Bearer {}", jsonwebtoken::encode(&header, &claims, &signing).unwrap())
            },
            |value| {
                runtime
                    .block_on(auth.authenticate(
                        |n| (n == "Authorization").then_some(value.as_str()),
                        |_| None,
                        &metrics,
                    ))
                    .unwrap()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();

    // Quotas of a tenant and its key, checked for one batch (buckets never run dry here).
    let quotas = weir::gateway::quota::Quotas::new(
        &weir_crds::pipeline::TenantsSpec {
            quota: weir_crds::pipeline::QuotaSpec {
                events_per_second: u32::MAX,
                bytes_per_second: u32::MAX,
                max_connections: 0,
            },
            key_quota: weir_crds::pipeline::QuotaSpec {
                events_per_second: u32::MAX,
                ..Default::default()
            },
            ..Default::default()
        },
        std::sync::Arc::default(),
    );
    let principal = runtime
        .block_on(auth.authenticate(
            |n| {
                (n == "Authorization")
                    .then_some(format!("Bearer {key}"))
                    .map(|_| key)
            },
            |_| None,
            &metrics,
        ))
        .unwrap();
    c.bench_function("quota_take_tenant_and_key_per_batch", |b| {
        b.iter(|| quotas.take(&principal, 100, 100).unwrap())
    });

    let request = batch();
    let plain = route::RoutingTable::compile(&RoutingSpec::default()).unwrap();
    let tenant = route::RoutingTable::compile(&RoutingSpec {
        default_pattern: "%t.clickstream-%s-log".into(),
        ..RoutingSpec::default()
    })
    .unwrap();
    let mut group = c.benchmark_group("route_batch_of_100");
    group.throughput(Throughput::Elements(100));
    for (name, table, sender) in [
        ("no_tenant", &plain, None),
        ("tenant_pattern", &tenant, Some("acme")),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                request
                    .events
                    .iter()
                    .filter(|e| matches!(table.route(sender, &e.r#type), route::Route::Topic(_)))
                    .count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, core, credentials);
criterion_main!(benches);
