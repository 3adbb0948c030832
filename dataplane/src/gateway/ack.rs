//! Acknowledgements: the one place where outcomes and errors become wire codes,
//! HTTP statuses and gRPC statuses.
//!
//! A batch is either refused whole ([`Rejection`], before any event is published) or
//! processed, in which case its answer lists each failed event ([`EventResult`]) and the
//! batch code summarises them. Success is only ever reported for events that were
//! delivered (sync acks) or enqueued (async acks).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use weir_proto::{Code, EventResult, SendEventResponse, Status};

/// Why a whole batch or connection was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The request could not be understood.
    #[error("{0}")]
    BadRequest(String),
    /// The HTTP content type is not one the gateway reads.
    #[error(
        "unsupported content type {0:?}: use application/proto, application/x-protobuf, application/json or text/plain (JSON)"
    )]
    UnsupportedMediaType(String),
    /// The HTTP content coding is not one the gateway reads.
    #[error("unsupported content encoding {0:?}: send gzip, or no Content-Encoding")]
    UnsupportedEncoding(String),
    /// The request body did not arrive within `limits.readTimeout`.
    #[error("the request body did not arrive within {0:?}")]
    ReadTimeout(std::time::Duration),
    /// Authentication failed.
    #[error("{0}")]
    Unauthorized(String),
    /// A browser page from an origin the setting does not list sent a request.
    #[error("origin {origin:?} is not in {setting}")]
    OriginNotAllowed {
        /// The page's origin.
        origin: String,
        /// `websocket.allowedOrigins` or `cors.allowedOrigins`.
        setting: &'static str,
    },
    /// The batch is larger than `limits.maxBatchBytes`.
    #[error("batch exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The gateway has no room for the batch right now.
    #[error("{0}")]
    Overloaded(String),
    /// The sender's tenant or API key is over a quota.
    #[error("{message}")]
    QuotaExceeded {
        /// Which quota, and whose.
        message: String,
        /// When the batch would fit.
        retry_after: std::time::Duration,
    },
    /// Kafka cannot take the batch right now, or the gateway is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("{0}")]
    Internal(String),
    /// `websocket.maxConnections` are open.
    #[error("connection limit of {0} reached")]
    ConnectionLimit(usize),
    /// The identity is already connected and the duplicate policy is `reject`.
    #[error("a connection with id {id:?} in group {group:?} is already open")]
    DuplicateIdentity { id: String, group: String },
}

impl Rejection {
    /// The wire code for this rejection.
    pub fn code(&self) -> Code {
        match self {
            Rejection::BadRequest(_)
            | Rejection::UnsupportedMediaType(_)
            | Rejection::UnsupportedEncoding(_)
            | Rejection::ReadTimeout(_) => Code::BadRequest,
            Rejection::Unauthorized(_) | Rejection::OriginNotAllowed { .. } => Code::Unauthorized,
            Rejection::TooLarge { .. } => Code::PayloadTooLarge,
            Rejection::Overloaded(_) | Rejection::QuotaExceeded { .. } => Code::RateLimited,
            Rejection::Unavailable(_) => Code::Unavailable,
            Rejection::Internal(_) => Code::InternalError,
            Rejection::ConnectionLimit(_) => Code::MaxConnectionLimitReached,
            Rejection::DuplicateIdentity { .. } => Code::MaxUserLimitReached,
        }
    }

    /// The HTTP status for this rejection.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Rejection::UnsupportedMediaType(_) | Rejection::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Rejection::ReadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::OriginNotAllowed { .. } => StatusCode::FORBIDDEN,
            other => http_status(other.code()),
        }
    }

    /// The answer to a refused batch. A quota refusal carries its wait, in whole
    /// seconds, as `data["retry_after"]`.
    pub fn response(&self, req_guid: &str) -> SendEventResponse {
        self.response_for(req_guid, 0)
    }

    /// The answer to a refused batch of `events` events that were read: a quota
    /// refusal also lists each event as RATE_LIMITED, so a client that retries per
    /// event sees every one of them as retryable.
    pub fn response_for(&self, req_guid: &str, events: usize) -> SendEventResponse {
        let mut answer = match self {
            Rejection::QuotaExceeded { message, .. } if events > 0 => {
                let failures = (0..events)
                    .map(|i| event_failure(i, Code::RateLimited, message.as_str()))
                    .collect();
                let mut answer = batch_response(req_guid, events, failures);
                answer.reason = message.clone();
                answer
            }
            _ => response(req_guid, self.code(), self.to_string(), Vec::new()),
        };
        if let Rejection::QuotaExceeded { retry_after, .. } = self {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            answer
                .data
                .insert(RETRY_AFTER_KEY.into(), seconds.max(1).to_string());
        }
        answer
    }
}

/// The HTTP status that goes with a batch code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::BadRequest => StatusCode::BAD_REQUEST,
        Code::Unauthorized => StatusCode::UNAUTHORIZED,
        Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::RateLimited | Code::MaxConnectionLimitReached | Code::MaxUserLimitReached => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::InternalError | Code::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC status code that goes with a batch code.
pub fn grpc_code(code: Code) -> tonic::Code {
    match code {
        Code::Ok => tonic::Code::Ok,
        Code::BadRequest => tonic::Code::InvalidArgument,
        Code::Unauthorized => tonic::Code::Unauthenticated,
        Code::PayloadTooLarge
        | Code::RateLimited
        | Code::MaxConnectionLimitReached
        | Code::MaxUserLimitReached => tonic::Code::ResourceExhausted,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::InternalError | Code::Unspecified => tonic::Code::Internal,
    }
}

/// The key of an answer's `data` that says how many seconds to wait before retrying,
/// when the gateway knows (quotas).
pub const RETRY_AFTER_KEY: &str = "retry_after";

/// Seconds a client should wait before retrying, for answers where retrying helps: the
/// answer's own `retry_after`, else a default by code.
pub fn retry_after_seconds(response: &SendEventResponse) -> Option<u32> {
    if let Some(seconds) = response
        .data
        .get(RETRY_AFTER_KEY)
        .and_then(|s| s.parse().ok())
    {
        return Some(seconds);
    }
    match response.code() {
        Code::RateLimited => Some(1),
        Code::Unavailable => Some(5),
        _ => None,
    }
}

/// How bad a per-event code is, to pick the batch code when events failed differently:
/// the answer should steer the client to the action that helps the most events.
fn severity(code: Code) -> u8 {
    match code {
        Code::Unavailable => 6,
        Code::RateLimited => 5,
        Code::InternalError | Code::Unspecified => 4,
        Code::PayloadTooLarge => 3,
        Code::BadRequest => 2,
        _ => 1,
    }
}

/// Failures that carry their reason; later ones carry only their index and code, so an
/// answer stays small whatever the batch (a reason may echo client input).
pub const DETAILED_FAILURES: usize = 100;
/// Longest per-event reason, in bytes.
pub const MAX_REASON_BYTES: usize = 256;

/// The answer to a processed batch of `events` events of which `failures` failed.
/// Every failed event is listed with its code; the first [`DETAILED_FAILURES`] with
/// their reasons, each cut to [`MAX_REASON_BYTES`].
pub fn batch_response(
    req_guid: &str,
    events: usize,
    mut failures: Vec<EventResult>,
) -> SendEventResponse {
    if failures.is_empty() {
        return response(req_guid, Code::Ok, String::new(), failures);
    }
    failures.sort_by_key(|f| f.index);
    let worst = failures
        .iter()
        .max_by_key(|f| severity(f.code()))
        .expect("failures is not empty");
    let mut reason = format!(
        "{} of {} events failed; event {}: {}",
        failures.len(),
        events,
        worst.index,
        truncate(&worst.reason, MAX_REASON_BYTES)
    );
    if failures.len() > DETAILED_FAILURES {
        reason.push_str(&format!(
            " (reasons are given for the first {DETAILED_FAILURES} failed events)"
        ));
    }
    let code = worst.code();
    for (i, failure) in failures.iter_mut().enumerate() {
        if i < DETAILED_FAILURES {
            failure.reason = truncate(&failure.reason, MAX_REASON_BYTES);
        } else {
            failure.reason.clear();
        }
    }
    response(req_guid, code, reason, failures)
}

/// `text` cut to at most `max_bytes` on a character boundary, marked with `…` when cut.
pub fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut end = max_bytes.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn response(
    req_guid: &str,
    code: Code,
    reason: String,
    event_results: Vec<EventResult>,
) -> SendEventResponse {
    let status = if code == Code::Ok {
        Status::Success
    } else {
        Status::Error
    };
    SendEventResponse {
        status: status as i32,
        code: code as i32,
        sent_time: unix_seconds(),
        reason,
        data: [("req_guid".to_string(), req_guid.to_string())].into(),
        event_results,
    }
}

/// The failure of one event.
pub fn event_failure(index: usize, code: Code, reason: impl Into<String>) -> EventResult {
    EventResult {
        index: index as u32,
        code: code as i32,
        reason: reason.into(),
    }
}

/// The wire code and a user-facing reason for a Kafka produce error.
pub fn kafka_failure(error: &KafkaError, topic: &str) -> (Code, String) {
    let code = match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => Code::PayloadTooLarge,
        Some(RDKafkaErrorCode::QueueFull) => Code::RateLimited,
        Some(
            RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage,
        ) => Code::InternalError,
        _ => Code::Unavailable,
    };
    (
        code,
        format!("Kafka did not take the event for topic {topic}: {error}"),
    )
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_echoes_req_guid_and_has_no_reason() {
        let r = batch_response("g-1", 3, vec![]);
        assert_eq!(r.status(), Status::Success);
        assert_eq!(r.code(), Code::Ok);
        assert_eq!(r.data["req_guid"], "g-1");
        assert!(r.reason.is_empty());
        assert!(r.sent_time > 1_600_000_000);
    }

    #[test]
    fn batch_code_is_the_most_severe_event_code() {
        let r = batch_response(
            "g",
            5,
            vec![
                event_failure(3, Code::BadRequest, "bad type"),
                event_failure(1, Code::Unavailable, "broker down"),
            ],
        );
        assert_eq!(r.status(), Status::Error);
        assert_eq!(r.code(), Code::Unavailable);
        assert_eq!(r.event_results[0].index, 1, "sorted by index");
        assert!(r.reason.contains("2 of 5 events failed"), "{}", r.reason);
        assert!(r.reason.contains("broker down"), "{}", r.reason);
    }

    #[test]
    fn answers_stay_small_whatever_the_batch() {
        let long = "x".repeat(10_000);
        let failures = (0..10_000)
            .map(|i| event_failure(i, Code::BadRequest, format!("invalid type {long}")))
            .collect();
        let r = batch_response("g", 10_000, failures);
        assert_eq!(
            r.event_results.len(),
            10_000,
            "every failed event is listed"
        );
        assert!(r.event_results[..DETAILED_FAILURES]
            .iter()
            .all(|f| f.reason.len() <= MAX_REASON_BYTES && f.reason.starts_with("invalid type")));
        assert!(
            r.event_results[DETAILED_FAILURES..]
                .iter()
                .all(|f| f.reason.is_empty())
        );
        assert!(r.reason.contains("first 100"), "{}", r.reason);
        let bytes = prost::Message::encoded_len(&r);
        assert!(bytes < 150_000, "{bytes} bytes");
        assert_eq!(truncate("héllo", 3), "…");
        assert_eq!(truncate("héllo", 5), "h…");
        assert_eq!(truncate("héllo", 6), "héllo");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn every_code_maps_to_http_and_grpc() {
        let cases = [
            (Code::Ok, 200, tonic::Code::Ok),
            (Code::BadRequest, 400, tonic::Code::InvalidArgument),
            (Code::Unauthorized, 401, tonic::Code::Unauthenticated),
            (Code::PayloadTooLarge, 413, tonic::Code::ResourceExhausted),
            (Code::RateLimited, 429, tonic::Code::ResourceExhausted),
            (Code::Unavailable, 503, tonic::Code::Unavailable),
            (Code::InternalError, 500, tonic::Code::Internal),
            (
                Code::MaxConnectionLimitReached,
                429,
                tonic::Code::ResourceExhausted,
            ),
            (
                Code::MaxUserLimitReached,
                429,
                tonic::Code::ResourceExhausted,
            ),
        ];
        for (code, http, grpc) in cases {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
            assert_eq!(grpc_code(code), grpc, "{code:?}");
        }
        let answer = |code| response("g", code, String::new(), Vec::new());
        assert_eq!(retry_after_seconds(&answer(Code::RateLimited)), Some(1));
        let quota = Rejection::QuotaExceeded {
            message: "over".into(),
            retry_after: std::time::Duration::from_millis(2500),
        };
        assert_eq!(quota.code(), Code::RateLimited);
        assert_eq!(retry_after_seconds(&quota.response("g")), Some(3));
        let listed = quota.response_for("g", 3);
        assert_eq!(listed.code(), Code::RateLimited);
        assert_eq!(listed.reason, "over");
        assert_eq!(listed.event_results.len(), 3);
        assert!(
            listed
                .event_results
                .iter()
                .all(|r| r.code() == Code::RateLimited)
        );
        assert_eq!(retry_after_seconds(&listed), Some(3));
        assert_eq!(retry_after_seconds(&answer(Code::Unavailable)), Some(5));
        assert_eq!(retry_after_seconds(&answer(Code::BadRequest)), None);
    }

    #[test]
    fn rejections_name_the_problem() {
        let r = Rejection::UnsupportedMediaType("text/plain".into());
        assert_eq!(r.http_status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(r.code(), Code::BadRequest);
        assert!(r.to_string().contains("text/plain"));
        let r = Rejection::TooLarge { limit: 10 }.response("x");
        assert_eq!(r.code(), Code::PayloadTooLarge);
        assert!(r.reason.contains("10 bytes"));
    }

    #[test]
    fn kafka_errors_map_to_codes() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(kafka_failure(&e, "t").0, Code::Unavailable);
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(kafka_failure(&e, "t").0, Code::PayloadTooLarge);
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        assert_eq!(kafka_failure(&e, "t").0, Code::RateLimited);
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        let (code, reason) = kafka_failure(&e, "clicks");
        assert_eq!(code, Code::InternalError);
        assert!(reason.contains("clicks"));
    }
}
