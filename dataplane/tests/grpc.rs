//! The gRPC transport: both service names, identity from metadata, status mapping.

mod common;

use common::*;
use weir::gateway::grpc::response_from_status;
use weir_crds::pipeline::UnmatchedPolicy;
use weir_proto::Code;
use weir_proto::raccoon::event_service_client::EventServiceClient as RaccoonClient;
use weir_proto::weir::v1::event_service_client::EventServiceClient as WeirClient;

fn with_identity<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-user-id", id.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-user-group", "android".parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_service_names_accept_batches() {
    let (kafka, gateway) = start(|_| {}).await;
    let url = format!("http://{}", gateway.grpc_addr);
    let mut raccoon = RaccoonClient::connect(url.clone()).await.unwrap();
    let answer = raccoon
        .send_event(with_identity(
            request("r1", vec![event("tap", b"raccoon")]),
            "grpc-user",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.code(), Code::Ok);
    assert_eq!(answer.data["req_guid"], "r1");

    // Gzip-compressed messages are read too.
    let mut weir = WeirClient::connect(url)
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let answer = weir
        .send_event(with_identity(
            request("w1", vec![event("tap", b"weir")]),
            "grpc-user",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.code(), Code::Ok);

    let bootstrap = kafka.bootstrap_servers();
    let records =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, "clickstream-tap-log", 2))
            .await
            .unwrap();
    for record in &records {
        assert_eq!(key(record).as_deref(), Some(&b"grpc-user"[..]));
        assert_eq!(
            header(record, weir::record::CONN_GROUP).as_deref(),
            Some("android")
        );
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_map_to_grpc_status_with_the_full_answer() {
    let (_kafka, gateway) = start(|spec| {
        spec.routing.unmatched = UnmatchedPolicy::Reject;
        spec.routing.rules = vec![weir_crds::pipeline::RouteRule {
            exact: Some("known".into()),
            topic: "known".into(),
            ..Default::default()
        }];
        spec.auth.tokens = vec!["sesame".into()];
        spec.limits.max_batch_bytes = 2048;
    })
    .await;
    let url = format!("http://{}", gateway.grpc_addr);
    let mut client = RaccoonClient::connect(url).await.unwrap();

    let status = client
        .send_event(request("no-auth", vec![event("known", b"x")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let mut call = tonic::Request::new(request(
        "mixed",
        vec![event("known", b"x"), event("stranger", b"y")],
    ));
    call.metadata_mut()
        .insert("authorization", "Bearer sesame".parse().unwrap());
    let status = client.send_event(call).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let answer = response_from_status(&status).expect("full answer in the trailer");
    assert_eq!(answer.code(), Code::BadRequest);
    assert_eq!(answer.data["req_guid"], "mixed");
    assert_eq!(answer.event_results.len(), 1);
    assert_eq!(answer.event_results[0].index, 1);

    let mut big = tonic::Request::new(request("big", vec![event("known", &[0u8; 4096])]));
    big.metadata_mut()
        .insert("authorization", "Bearer sesame".parse().unwrap());
    let status = client.send_event(big).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let answer = response_from_status(&status).expect("full answer in the trailer");
    assert_eq!(answer.code(), Code::PayloadTooLarge);
    gateway.shutdown().await;
}

/// A `SendEventRequest` on the wire whose events are arbitrary bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawBatch {
    #[prost(bytes = "vec", repeated, tag = "3")]
    events: Vec<Vec<u8>>,
}

async fn send_raw(addr: std::net::SocketAddr, batch: RawBatch) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/raystack.raccoon.v1beta1.EventService/SendEvent",
    );
    let codec = tonic_prost::ProstCodec::<RawBatch, weir_proto::SendEventResponse>::default();
    grpc.unary(tonic::Request::new(batch), path, codec)
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_overfull_batches_are_invalid_argument_with_the_full_answer() {
    let (_kafka, gateway) = start(|spec| spec.limits.max_events_per_batch = 100).await;
    // An event that is not an Event (a truncated field): the client's fault, so not
    // retried as INTERNAL would be.
    let status = send_raw(
        gateway.grpc_addr,
        RawBatch {
            events: vec![vec![0x0a, 0x05, 0x01]],
        },
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let answer = response_from_status(&status).expect("full answer in the trailer");
    assert_eq!(answer.code(), Code::BadRequest);
    assert!(
        answer.reason.contains("invalid protobuf request"),
        "{}",
        answer.reason
    );
    // 200,000 empty events: refused by count before any is decoded.
    let status = send_raw(
        gateway.grpc_addr,
        RawBatch {
            events: vec![Vec::new(); 200_000],
        },
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let answer = response_from_status(&status).expect("full answer in the trailer");
    assert!(
        answer
            .reason
            .contains("batch has 200000 events; the limit is 100"),
        "{}",
        answer.reason
    );
    gateway.shutdown().await;
}
