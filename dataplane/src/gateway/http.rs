//! The HTTP port: `POST /api/v1/events`, the WebSocket upgrade on
//! `GET /api/v1/events`, and `GET /ping`.
//!
//! Request bodies may be gzip-compressed (`Content-Encoding: gzip`, any case, or
//! `x-gzip`); the size limit applies to the decompressed body, so a small compressed
//! bomb is refused too. Any other coding is refused with 415 and a body naming it. Answers
//! use the request's encoding and carry `Retry-After` when retrying helps.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, ORIGIN, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::decompression::RequestDecompressionLayer;
use weir_crds::settings::GatewaySettings;
use weir_proto::SendEventResponse;

use super::Shared;
use super::ack::{self, Rejection};
use super::decode::{self, ContentKind, Encoding};
use super::identity::Identity;
use super::ingest::Transport;
use super::json::Dialect;
use super::ws;
use super::ws_wire::Handshake;
use hyper_util::rt::TokioIo;

/// The HTTP and WebSocket routes.
pub fn routes(shared: Arc<Shared>) -> Router {
    let cors = cors_layer(&shared.settings);
    let router = Router::new()
        .route("/api/v1/events", post(post_events).get(upgrade))
        .route("/ping", get(|| async { "pong" }))
        // The handler enforces the batch limit itself, after decompression.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            content_coding,
        ))
        .with_state(shared);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Content codings are case-insensitive (RFC 9110 §8.4.1): this spells the one the
/// decompression layer reads in its canonical form, drops `identity`, and refuses any
/// other before the body is read.
async fn content_coding(
    State(shared): State<Arc<Shared>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(value) = request.headers().get(CONTENT_ENCODING) else {
        return next.run(request).await;
    };
    let coding = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match coding.as_str() {
        "gzip" | "x-gzip" => {
            let gzip = HeaderValue::from_static("gzip");
            request.headers_mut().insert(CONTENT_ENCODING, gzip);
        }
        "identity" | "" => {
            request.headers_mut().remove(CONTENT_ENCODING);
        }
        _ => {
            let kind = decode::content_kind(header(request.headers(), CONTENT_TYPE.as_str()));
            let fallback = refusal_encoding(&kind);
            let rejection = Rejection::UnsupportedEncoding(coding);
            return refuse(
                &shared,
                Transport::Http,
                &rejection,
                Instant::now(),
                fallback,
            );
        }
    }
    next.run(request).await
}

fn cors_layer(settings: &GatewaySettings) -> Option<CorsLayer> {
    let spec = &settings.cors;
    if spec.allowed_origins.is_empty() {
        return None;
    }
    let origin = if spec.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            spec.allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let headers: Vec<HeaderName> = [
        "content-type",
        "content-encoding",
        "x-weir-event-results",
        &settings.identity.id_header,
        &settings.identity.group_header,
        &settings.auth.header,
        super::auth::credential::KEY_HEADER,
    ]
    .into_iter()
    .chain(spec.allowed_headers.iter().map(String::as_str))
    .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
    .collect();
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(headers)
            .max_age(spec.max_age),
    )
}

/// Reads a header as text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The query parameters of a request, in order; an unreadable query reads as none.
type QueryParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The value of query parameter `name` (any case).
fn query_param<'a>(query: &'a QueryParams, name: &str) -> Option<&'a str> {
    let Ok(Query(pairs)) = query else { return None };
    pairs
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Checks credentials and reads identity, the same for every HTTP request: from the
/// headers, or from query parameters of the same names when `identity.queryParameters`
/// allows it and the header is absent. Credentials may also come as the `key` and
/// `token` query parameters ([`super::auth::credential`]).
async fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    query: &QueryParams,
) -> Result<Identity, Rejection> {
    let from_query = shared.settings.identity.query_parameters;
    let lookup = |name: &str| {
        header(headers, name).or_else(|| from_query.then(|| query_param(query, name)).flatten())
    };
    let principal = shared
        .auth
        .authenticate(lookup, |name| query_param(query, name), &shared.metrics)
        .await?;
    super::identity::identify(&shared.settings.identity, principal, lookup)
}

/// Whether the client asked for per-event results in Raccoon-dialect JSON answers
/// (`X-Weir-Event-Results: true` or `?event_results=true`). Raccoon's own clients fail
/// on fields they do not know, so they get none unless they ask.
fn wants_event_results(headers: &HeaderMap, query: &QueryParams) -> bool {
    let yes = |v: &str| v.eq_ignore_ascii_case("true") || v == "1";
    header(headers, "x-weir-event-results").is_some_and(yes)
        || query_param(query, "event_results").is_some_and(yes)
}

/// Which browser pages may send: requests without `Origin` are not from a browser and
/// always pass; others only from an origin `allowed` lists (`*`: any).
fn check_origin(
    headers: &HeaderMap,
    allowed: &[String],
    setting: &'static str,
) -> Result<(), Rejection> {
    let Some(origin) = header(headers, ORIGIN.as_str()) else {
        return Ok(());
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    Err(Rejection::OriginNotAllowed {
        origin: origin.to_string(),
        setting,
    })
}

/// WebSocket upgrades: `websocket.allowedOrigins`, where empty means any origin
/// (Raccoon's browser clients connect from wherever they are served).
fn check_websocket_origin(shared: &Shared, headers: &HeaderMap) -> Result<(), Rejection> {
    let allowed = &shared.settings.websocket.allowed_origins;
    if allowed.is_empty() {
        return Ok(());
    }
    check_origin(headers, allowed, "websocket.allowedOrigins")
}

/// POSTs from browser pages: only from `cors.allowedOrigins`. A `text/plain` POST needs
/// no CORS preflight, so without this any site could make its visitors' browsers send
/// events even where CORS is off; CORS only hides the answer from the page.
fn check_post_origin(shared: &Shared, headers: &HeaderMap) -> Result<(), Rejection> {
    check_origin(
        headers,
        &shared.settings.cors.allowed_origins,
        "cors.allowedOrigins",
    )
}

async fn post_events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: QueryParams,
    body: Body,
) -> Response {
    let received = Instant::now();
    let kind = decode::content_kind(header(&headers, CONTENT_TYPE.as_str()));
    let fallback = refusal_encoding(&kind);
    let prepared = async {
        check_post_origin(&shared, &headers)?;
        let identity = authenticate(&shared, &headers, &query).await?;
        let kind = kind?;
        let limit = shared.settings.limits.max_batch_bytes;
        let read_timeout = shared.settings.limits.read_timeout;
        let body = tokio::time::timeout(read_timeout, read_body(body, limit))
            .await
            .map_err(|_| Rejection::ReadTimeout(read_timeout))??;
        let wire_bytes = body.len();
        let (request, encoding) =
            decode::decode_request_async(kind, body, shared.settings.limits.max_events_per_batch)
                .await?;
        let encoding = encoding.with_event_results(wants_event_results(&headers, &query));
        Ok::<_, Rejection>((identity, request, wire_bytes, encoding))
    }
    .await;
    match prepared {
        Ok((identity, request, wire_bytes, encoding)) => {
            let response = shared
                .ingestor
                .ingest(&identity, request, wire_bytes, Transport::Http, received)
                .await;
            let status = ack::http_status(response.code());
            reply(status, &response, encoding)
        }
        Err(rejection) => refuse(&shared, Transport::Http, &rejection, received, fallback),
    }
}

/// How to answer a request refused before its body is understood: in the encoding it
/// asked for, or in Raccoon's JSON when the content type itself is the problem.
fn refusal_encoding(kind: &Result<ContentKind, Rejection>) -> Encoding {
    match kind {
        Ok(ContentKind::Protobuf) => Encoding::Protobuf,
        _ => Encoding::Json(Dialect::Raccoon),
    }
}

/// Answers a request refused before it became a batch, and counts it.
fn refuse(
    shared: &Shared,
    transport: Transport,
    rejection: &Rejection,
    received: Instant,
    encoding: Encoding,
) -> Response {
    shared
        .ingestor
        .answered(transport, rejection.code(), received);
    reply(rejection.http_status(), &rejection.response(""), encoding)
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Rejection> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let source = e.into_inner();
        if source
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            Rejection::TooLarge { limit }
        } else {
            Rejection::BadRequest(format!("cannot read the request body: {source}"))
        }
    })
}

fn reply(status: StatusCode, response: &SendEventResponse, encoding: Encoding) -> Response {
    let body = decode::encode_response(response, encoding);
    let mut out = (status, body).into_response();
    let headers = out.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    if let Some(seconds) = ack::retry_after_seconds(response) {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    out
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: QueryParams,
    handshake: Handshake,
) -> Response {
    let received = Instant::now();
    let admitted = async {
        if shared.shutdown.is_cancelled() {
            return Err(Rejection::Unavailable(
                "the gateway is shutting down".into(),
            ));
        }
        check_websocket_origin(&shared, &headers)?;
        let identity = authenticate(&shared, &headers, &query).await?;
        let quota = shared.quotas.connect(&identity.principal)?;
        Ok((identity, quota))
    }
    .await;
    let event_results = wants_event_results(&headers, &query);
    let (identity, quota) = match admitted {
        Ok(admitted) => admitted,
        Err(rejection) => {
            let encoding = Encoding::Json(Dialect::Raccoon);
            return refuse(
                &shared,
                Transport::WebSocket,
                &rejection,
                received,
                encoding,
            );
        }
    };
    // Raccoon upgrades first and then refuses over the socket (a response with the code,
    // then close 1008), so clients read the reason the same way here.
    let registration = shared.connections.register(&identity);
    let tracker = shared.sessions.clone();
    let (response, on_upgrade) = handshake.accept();
    tokio::spawn(tracker.track_future(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                return;
            }
        };
        match registration {
            Ok(guard) => ws::serve(upgraded, shared, identity, (guard, quota), event_results).await,
            Err(rejection) => ws::refuse(upgraded, &rejection).await,
        }
    }));
    response
}
