//! The gRPC port: unary `SendEvent` under both `raystack.raccoon.v1beta1.EventService`
//! and `weir.v1.EventService`, one handler behind both.
//!
//! A successful batch answers OK with the `SendEventResponse`. Any other outcome answers
//! the gRPC status mapped from its code (see `ack::grpc_code`) with the reason as the
//! message, and the full `SendEventResponse` (with its per-event results) in the
//! `weir-response-bin` trailer, so retry policies that look only at status codes work
//! and nothing about which events failed is lost.
//!
//! Batches are decoded by [`DecodeBatches`], a layer in front of tonic, not by tonic's
//! codec: so an undecodable batch is INVALID_ARGUMENT and an oversized one
//! RESOURCE_EXHAUSTED, both with the trailer, like every other refusal; a batch with too
//! many events is refused before its events are decoded; and large batches are decoded
//! on the blocking pool. The layer hands the batch to the handler in the request's
//! extensions and tonic an empty message in its place.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use weir_proto::raccoon::event_service_server::{
    EventService as RaccoonService, EventServiceServer as RaccoonServer,
};
use weir_proto::weir::v1::event_service_server::{
    EventService as WeirService, EventServiceServer as WeirServer,
};
use weir_proto::{Code, SendEventRequest, SendEventResponse};

use super::Shared;
use super::ack::{self, Rejection};
use super::auth::{AuthError, Principal};
use super::decode::{self, ContentKind};
use super::identity::Identity;
use super::ingest::Transport;

/// The trailer that carries the full answer of a failed call.
pub const RESPONSE_TRAILER: &str = "weir-response-bin";

/// Both gRPC services.
#[derive(Clone)]
pub struct EventGrpc {
    shared: Arc<Shared>,
}

/// The routes for a tonic server: both service names, with the batch size limit and
/// gzip accepted.
pub fn services(shared: Arc<Shared>) -> (RaccoonServer<EventGrpc>, WeirServer<EventGrpc>) {
    let limit = shared.settings.limits.max_batch_bytes;
    let service = EventGrpc { shared };
    let raccoon = RaccoonServer::new(service.clone())
        .max_decoding_message_size(limit)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let weir = WeirServer::new(service)
        .max_decoding_message_size(limit)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    (raccoon, weir)
}

/// A metadata entry as text (gRPC metadata are HTTP/2 headers).
fn metadata_text<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name.to_ascii_lowercase())
        .and_then(|v| v.to_str().ok())
}

impl EventGrpc {
    /// The identity, with the principal [`DecodeBatches`] authenticated.
    fn identify(
        &self,
        metadata: &MetadataMap,
        principal: Option<Principal>,
    ) -> Result<Identity, Rejection> {
        let principal = principal.ok_or_else(|| Rejection::from(AuthError::Missing))?;
        super::identity::identify(&self.shared.settings.identity, principal, |name| {
            metadata_text(metadata.as_ref(), name)
        })
    }

    async fn handle(
        &self,
        mut request: Request<SendEventRequest>,
    ) -> Result<Response<SendEventResponse>, Status> {
        let received = Instant::now();
        let principal = request.extensions_mut().remove::<Principal>();
        let identity = self.identify(request.metadata(), principal);
        let decoded = request
            .extensions_mut()
            .remove::<DecodedBatch>()
            .and_then(|d| d.0.lock().ok()?.take());
        let batch = decoded.unwrap_or_else(|| request.into_inner());
        let prepared = identity.and_then(|identity| {
            decode::check_batch(&batch, self.shared.settings.limits.max_events_per_batch)?;
            Ok(identity)
        });
        let response = match prepared {
            Ok(identity) => {
                let wire_bytes = batch.encoded_len();
                self.shared
                    .ingestor
                    .ingest(&identity, batch, wire_bytes, Transport::Grpc, received)
                    .await
            }
            Err(rejection) => {
                self.shared
                    .ingestor
                    .answered(Transport::Grpc, rejection.code(), received);
                rejection.response(&batch.req_guid)
            }
        };
        if response.code() == Code::Ok {
            return Ok(Response::new(response));
        }
        Err(refusal(&response))
    }
}

/// The status of an answer that is not OK, with the whole answer in the trailer.
fn refusal(response: &SendEventResponse) -> Status {
    {
        let mut trailers = MetadataMap::new();
        trailers.insert_bin(
            RESPONSE_TRAILER,
            MetadataValue::from_bytes(&response.encode_to_vec()),
        );
        if let Some(seconds) = ack::retry_after_seconds(response) {
            trailers.insert("retry-after", MetadataValue::from(seconds));
        }
        Status::with_metadata(
            ack::grpc_code(response.code()),
            response.reason.clone(),
            trailers,
        )
    }
}

/// A batch decoded by [`DecodeBatches`], for the handler to take.
#[derive(Clone)]
struct DecodedBatch(Arc<Mutex<Option<SendEventRequest>>>);

/// The layer that decodes batches before tonic does (see the module docs).
pub fn decode_batches(
    shared: Arc<Shared>,
) -> impl tower::Layer<Routes, Service = DecodeBatches> + Clone {
    tower::layer::layer_fn(move |inner| DecodeBatches {
        inner,
        shared: shared.clone(),
    })
}

type Routes = tonic::service::Routes;

/// See [`decode_batches`].
#[derive(Clone)]
pub struct DecodeBatches {
    inner: Routes,
    shared: Arc<Shared>,
}

/// A gRPC message frame: a compression flag and a 4-byte length.
const FRAME_HEADER: usize = 5;

impl tower::Service<http::Request<tonic::body::Body>> for DecodeBatches {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The ready clone serves this call; the fresh one waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let received = Instant::now();
            let (mut parts, body) = request.into_parts();
            let authenticated = shared
                .auth
                .authenticate(
                    |name| metadata_text(&parts.headers, name),
                    |_| None,
                    &shared.metrics,
                )
                .await;
            let checked = match authenticated {
                Ok(principal) => read_batch(&shared, &parts.headers, body)
                    .await
                    .map(|batch| (principal, batch)),
                Err(rejection) => Err(rejection),
            };
            match checked {
                Ok((principal, batch)) => {
                    parts.extensions.insert(principal);
                    parts
                        .extensions
                        .insert(DecodedBatch(Arc::new(Mutex::new(Some(batch)))));
                    // An empty message: the handler reads the decoded batch instead.
                    let empty = http_body_util::Full::new(Bytes::from_static(&[0; FRAME_HEADER]));
                    let request = http::Request::from_parts(parts, tonic::body::Body::new(empty));
                    inner.call(request).await
                }
                Err(rejection) => {
                    shared
                        .ingestor
                        .answered(Transport::Grpc, rejection.code(), received);
                    Ok(refusal(&rejection.response("")).into_http())
                }
            }
        })
    }
}

/// Reads the one message of a unary call, within `limits.readTimeout` and
/// `limits.maxBatchBytes` (after decompression), and decodes it.
async fn read_batch(
    shared: &Shared,
    headers: &http::HeaderMap,
    body: tonic::body::Body,
) -> Result<SendEventRequest, Rejection> {
    let limit = shared.settings.limits.max_batch_bytes;
    let read_timeout = shared.settings.limits.read_timeout;
    let limited = http_body_util::Limited::new(body, limit + FRAME_HEADER);
    let collected = tokio::time::timeout(read_timeout, limited.collect())
        .await
        .map_err(|_| Rejection::ReadTimeout(read_timeout))?
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Rejection::TooLarge { limit }
            } else {
                Rejection::BadRequest(format!("cannot read the request: {e}"))
            }
        })?
        .to_bytes();
    if collected.len() < FRAME_HEADER {
        return Err(Rejection::BadRequest("the call carries no message".into()));
    }
    let compressed = collected[0] == 1;
    let length =
        u32::from_be_bytes(collected[1..FRAME_HEADER].try_into().expect("4 bytes")) as usize;
    if length > limit {
        return Err(Rejection::TooLarge { limit });
    }
    let Some(message) = collected.get(FRAME_HEADER..FRAME_HEADER + length) else {
        return Err(Rejection::BadRequest(format!(
            "the message is cut short: {} of {length} bytes",
            collected.len() - FRAME_HEADER
        )));
    };
    let message = collected.slice_ref(message);
    let message = if compressed {
        let coding = metadata_text(headers, "grpc-encoding").unwrap_or_default();
        if !coding.eq_ignore_ascii_case("gzip") {
            return Err(Rejection::BadRequest(format!(
                "unsupported grpc-encoding {coding:?}: send gzip or uncompressed messages"
            )));
        }
        decode::gunzip(&message, limit)?
    } else {
        message
    };
    let max_events = shared.settings.limits.max_events_per_batch;
    let (batch, _) =
        decode::decode_request_async(ContentKind::Protobuf, message, max_events).await?;
    Ok(batch)
}

#[tonic::async_trait]
impl RaccoonService for EventGrpc {
    async fn send_event(
        &self,
        request: Request<SendEventRequest>,
    ) -> Result<Response<SendEventResponse>, Status> {
        self.handle(request).await
    }
}

#[tonic::async_trait]
impl WeirService for EventGrpc {
    async fn send_event(
        &self,
        request: Request<SendEventRequest>,
    ) -> Result<Response<SendEventResponse>, Status> {
        self.handle(request).await
    }
}

/// Reads the full answer from a failed call's status, for clients and tests.
pub fn response_from_status(status: &Status) -> Option<SendEventResponse> {
    let value = status.metadata().get_bin(RESPONSE_TRAILER)?;
    SendEventResponse::decode(value.to_bytes().ok()?).ok()
}
