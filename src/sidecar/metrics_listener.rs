//! The metrics listener (`METRICS_ADDR`): `/metrics` in Prometheus text, apart from the public
//! sidecar. The sidecar faces the internet (webhooks, OAuth, the dashboard); the metrics name
//! providers, plans and volumes an outsider has no business reading, so they are served only
//! here, on an address the operator keeps inside (loopback by default).

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{method_not_allowed, text};

/// Serves `/metrics` until `shutdown` is cancelled.
pub async fn serve_metrics(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors, say: wait, never spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service_fn(answer));
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = connection => {}
                        () = shutdown.cancelled() => {}
                    }
                });
            }
            () = shutdown.cancelled() => break,
        }
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut response =
                Response::new(Full::new(Bytes::from(crate::metrics::handle().render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (_, "/metrics") => method_not_allowed("GET"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}
