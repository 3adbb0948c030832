//! The gRPC port: unary `SendEvent` under both `raystack.raccoon.v1beta1.EventService`
//! and `weir.v1.EventService`, one handler behind both.
//!
//! A successful batch answers OK with the `SendEventResponse`. Any other outcome answers
//! the gRPC status mapped from its code (see `ack::grpc_code`) with the reason as the
//! message, and the full `SendEventResponse` (with its per-event results) in the
//! `weir-response-bin` trailer, so retry policies that look only at status codes work
//! and nothing about which events failed is lost.

use std::sync::Arc;
use std::time::Instant;

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
use super::decode;
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
    let limit = shared.spec.limits.max_batch_bytes;
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

fn metadata_text<'a>(metadata: &'a MetadataMap, name: &str) -> Option<&'a str> {
    metadata
        .get(name.to_ascii_lowercase())
        .and_then(|v| v.to_str().ok())
}

impl EventGrpc {
    fn identify(&self, metadata: &MetadataMap) -> Result<Identity, Rejection> {
        self.shared
            .auth
            .check(|name| metadata_text(metadata, name))?;
        super::identity::identify(&self.shared.spec.identity, |name| {
            metadata_text(metadata, name)
        })
    }

    async fn handle(
        &self,
        request: Request<SendEventRequest>,
    ) -> Result<Response<SendEventResponse>, Status> {
        let received = Instant::now();
        let identity = self.identify(request.metadata());
        let batch = request.into_inner();
        let prepared = identity.and_then(|identity| {
            decode::check_batch(&batch, self.shared.spec.limits.max_events_per_batch)?;
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
        let mut trailers = MetadataMap::new();
        trailers.insert_bin(
            RESPONSE_TRAILER,
            MetadataValue::from_bytes(&response.encode_to_vec()),
        );
        if let Some(seconds) = ack::retry_after_seconds(response.code()) {
            trailers.insert("retry-after", MetadataValue::from(seconds));
        }
        Err(Status::with_metadata(
            ack::grpc_code(response.code()),
            response.reason.clone(),
            trailers,
        ))
    }
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
