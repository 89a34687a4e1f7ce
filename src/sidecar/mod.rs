//! The HTTP sidecar (hyper): raw-body webhook routes, the OAuth callback, health, readiness,
//! metrics and the dashboard.
//!
//! Webhooks need the exact bytes the provider signed, so the body is read raw, with a size cap,
//! and never parsed or logged here.

use std::{convert::Infallible, sync::Arc, time::Duration, time::Instant};

use crate::connection_limits::GuardedListener;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    billing::Billing,
    integrations::Integrations,
    store::Store,
    telemetry::{REQUEST_ID_HEADER, request_span},
};

mod dashboard;
mod oauth;
mod webhooks;

pub use dashboard::{DASHBOARD_PATH, DashboardSettings};
pub use oauth::{CallbackQuery, OAUTH_CALLBACK, OAUTH_START, query_param};

/// What the sidecar's routes need.
pub struct SidecarState {
    pub store: Arc<dyn Store>,
    pub billing: Arc<Billing>,
    pub integrations: Arc<Integrations>,
    pub webhook_max_body_bytes: usize,
    /// Set the OAuth flow cookie with `Secure` (OAUTH_REDIRECT_URL is https).
    pub secure_cookies: bool,
    pub dashboard: DashboardSettings,
}

/// How long shutdown waits for in-flight sidecar requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a whole request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until `shutdown` is cancelled, then stops accepting and drains open connections.
pub async fn serve(
    listener: GuardedListener,
    state: Arc<SidecarState>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            stream = listener.accept() => {
                let state = Arc::clone(&state);
                let service = service_fn(move |request| handle(Arc::clone(&state), request));
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "sidecar connection ended with an error");
                    }
                });
            }
            () = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("sidecar connections still open after the drain timeout; closing them");
    }
}

async fn handle(
    state: Arc<SidecarState>,
    mut request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let request_id = match request.headers().get(REQUEST_ID_HEADER) {
        Some(id) => id.clone(),
        None => {
            let id = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("-"));
            request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
            id
        }
    };
    let span = request_span(&request);
    let route = route_name(request.uri().path());
    let started = Instant::now();
    let mut response = route_request(&state, request)
        .instrument(span.clone())
        .await;
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!("http_requests_total", "route" => route, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    span.in_scope(|| tracing::info!(status, latency_ms = elapsed.as_millis(), "request done"));
    Ok(response)
}

/// A bounded label for metrics (never the raw path, which a client controls).
fn route_name(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if webhooks::provider_of(p).is_some() => webhooks::route_name(p),
        OAUTH_CALLBACK => OAUTH_CALLBACK,
        OAUTH_START => OAUTH_START,
        p if dashboard::owns(p) => "/dashboard",
        _ => "other",
    }
}

async fn route_request(state: &SidecarState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    match (method, request.uri().path()) {
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (Method::GET, "/readyz") => match state.store.ping().await {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
            }
        },
        (Method::GET, "/metrics") => {
            let mut response =
                Response::new(Full::new(Bytes::from(crate::metrics::handle().render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (Method::POST, p) if webhooks::provider_of(p).is_some() => {
            webhooks::deliver(state, request).await
        }
        (_, p) if webhooks::provider_of(p).is_some() => method_not_allowed("POST"),
        (Method::GET, OAUTH_CALLBACK) => oauth::callback(state, &request).await,
        (_, OAUTH_CALLBACK) => method_not_allowed("GET"),
        (Method::GET, OAUTH_START) => oauth::start(state, &request).await,
        (_, OAUTH_START) => method_not_allowed("GET"),
        (_, "/healthz" | "/readyz" | "/metrics") => method_not_allowed("GET"),
        (Method::GET | Method::HEAD, p) if dashboard::owns(p) => {
            dashboard::serve(&state.dashboard, &request)
        }
        (_, p) if dashboard::owns(p) => method_not_allowed("GET"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Reads a whole body of at most `cap` bytes within [`BODY_READ_TIMEOUT`], or answers 413 (too
/// large), 408 (too slow) or 400 (broken body).
pub(super) async fn read_body(
    request: Request<Incoming>,
    cap: usize,
) -> Result<Bytes, Response<Full<Bytes>>> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap as u64) {
        return Err(too_large(cap));
    }
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(request.into_body(), cap).collect(),
    );
    let Ok(collected) = collected.await else {
        return Err(text(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        ));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large(cap)),
        Err(e) => {
            tracing::info!(error = %e, "could not read request body");
            Err(text(StatusCode::BAD_REQUEST, "could not read request body"))
        }
    }
}

fn too_large(cap: usize) -> Response<Full<Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body larger than {cap} bytes"),
    )
}

pub(super) fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

pub(super) fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
