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

criterion_group!(benches, core);
criterion_main!(benches);
