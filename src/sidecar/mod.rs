//! The HTTP sidecar (hyper): raw-body webhook routes, the OAuth callback, health, readiness and
//! the dashboard. Metrics are served apart, on the metrics listener (metrics_listener.rs).
//!
//! Webhooks need the exact bytes the provider signed, so the body is read raw, with a size cap,
//! and never parsed or logged here.

use std::{convert::Infallible, sync::Arc, time::Duration, time::Instant};

use crate::connection_limits::GuardedListener;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
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
mod metrics_listener;
mod oauth;
mod provider_webhooks;
mod sandbox;
mod webhooks;

pub use dashboard::{DASHBOARD_PATH, DashboardSettings};
pub use metrics_listener::serve_metrics;
pub use oauth::{CallbackQuery, OAUTH_CALLBACK, OAUTH_START};
pub use sandbox::API_PREFIX as SANDBOX_API;

/// What the sidecar's routes need.
pub struct SidecarState {
    pub store: Arc<dyn Store>,
    pub billing: Arc<Billing>,
    pub integrations: Arc<Integrations>,
    pub webhook_max_body_bytes: usize,
    /// Set the OAuth flow cookie with `Secure` (OAUTH_REDIRECT_URL is https).
    pub secure_cookies: bool,
    pub dashboard: DashboardSettings,
    /// Checks the bearer token of a dashboard starting an OAuth flow.
    pub verifier: Arc<crate::auth::JwtVerifier>,
    /// The development payments sandbox, when on.
    pub sandbox: Option<Arc<crate::payments::sandbox::Sandbox>>,
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
        p if webhooks::provider_of(p).is_some() => webhooks::route_name(p),
        p => match provider_webhooks::route_of(p) {
            Some(route) => route.name(),
            None => other_route_name(p),
        },
    }
}

fn other_route_name(path: &str) -> &'static str {
    match path {
        OAUTH_CALLBACK => OAUTH_CALLBACK,
        OAUTH_START => OAUTH_START,
        p if dashboard::owns(p) => "/dashboard",
        p if sandbox::owns(p) => "/sandbox",
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
        (Method::POST, p) if webhooks::provider_of(p).is_some() => {
            webhooks::deliver(state, request).await
        }
        (_, p) if webhooks::provider_of(p).is_some() => method_not_allowed("POST"),
        (_, p) if let Some(route) = provider_webhooks::route_of(p) => {
            provider_webhooks::deliver(state, route, request).await
        }
        (Method::GET, OAUTH_CALLBACK) => oauth::callback(state, &request).await,
        (_, OAUTH_CALLBACK) => method_not_allowed("GET"),
        (Method::POST, OAUTH_START) => oauth::start(state, &request).await,
        (Method::GET, OAUTH_START) => oauth::start_opened_as_a_page(),
        (_, OAUTH_START) => method_not_allowed("POST"),
        (_, "/healthz" | "/readyz") => method_not_allowed("GET"),
        (Method::GET | Method::HEAD, p) if dashboard::owns(p) => {
            dashboard::serve(&state.dashboard, &request)
        }
        (_, p) if dashboard::owns(p) => method_not_allowed("GET"),
        (_, p) if sandbox::owns(p) => match &state.sandbox {
            Some(sandbox) => sandbox::route(state, sandbox, request).await,
            None => text(StatusCode::NOT_FOUND, "not found"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Reads a whole body of at most `cap` bytes within [`BODY_READ_TIMEOUT`], or answers 413 (too
/// large), 408 (too slow) or 400 (broken body).
pub(super) async fn read_body<B>(
    request: Request<B>,
    cap: usize,
) -> Result<Bytes, Response<Full<Bytes>>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap as u64) {
        return Err(too_large(cap));
    }
    // Each frame is copied out at once: hyper hands a slow sender's bytes over in small
    // slices of its 8 KiB read buffers, and keeping those slices would keep every buffer (a
    // sender dripping 10 bytes a second held ~1.2 MiB after 30 s; measured by
    // `benches/attacks.rs`).
    let mut body = request.into_body();
    let mut out = Vec::with_capacity(declared.map_or(0, |len| len.min(16 * 1024) as usize));
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > cap {
                    return Ok::<bool, B::Error>(false);
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(true)
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Err(_) => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        )),
        Ok(Ok(true)) => Ok(Bytes::from(out)),
        Ok(Ok(false)) => Err(too_large(cap)),
        Ok(Err(e)) => {
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use http_body_util::StreamBody;
    use hyper::body::Frame;

    use super::*;

    /// An 8 KiB read buffer that counts how many are alive.
    struct ReadBuffer(Vec<u8>, Arc<AtomicUsize>);

    impl AsRef<[u8]> for ReadBuffer {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for ReadBuffer {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A slow sender as hyper delivers it: each byte a 1-byte slice of its own 8 KiB buffer.
    /// Reading must not keep the buffers: at most a couple alive at any moment.
    #[tokio::test]
    async fn a_dripped_body_does_not_keep_the_read_buffers() {
        let alive = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let frames = futures_util::stream::unfold(0usize, {
            let (alive, most) = (Arc::clone(&alive), Arc::clone(&most));
            move |i| {
                let (alive, most) = (Arc::clone(&alive), Arc::clone(&most));
                async move {
                    if i == 300 {
                        return None;
                    }
                    let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let buffer = Bytes::from_owner(ReadBuffer(vec![b'x'; 8192], alive));
                    Some((
                        Ok::<_, std::io::Error>(Frame::data(buffer.slice(0..1))),
                        i + 1,
                    ))
                }
            }
        });
        let request = Request::new(StreamBody::new(Box::pin(frames)));
        let body = read_body(request, 1024)
            .await
            .unwrap_or_else(|_| panic!("refused"));
        assert_eq!(body.len(), 300);
        assert!(
            most.load(Ordering::SeqCst) <= 2,
            "{} read buffers alive at once",
            most.load(Ordering::SeqCst)
        );
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }
}
