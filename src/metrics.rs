//! Prometheus metrics: one process-wide recorder, rendered by the sidecar's `/metrics`, and a
//! tower layer counting gRPC requests by method and status code with their latency.

use std::{
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::Instant,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder's handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // Histograms with buckets (rendered as Prometheus histograms, so dashboards can
        // aggregate them across replicas); every other histogram is a summary.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("webhook_processing_seconds".into()),
                crate::product_metrics::WEBHOOK_SECONDS_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "integration_webhook_apply_seconds".into(),
                    ),
                    crate::product_metrics::WEBHOOK_SECONDS_BUCKETS,
                )
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours just stays empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Counts every request passing through: `grpc_requests_total{method,code}` and
/// `grpc_request_duration_seconds{method}`.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_string();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            // Errors returned by handlers travel in the headers (trailers-only responses); a
            // response that started streaming reports its status in trailers, counted as OK here.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(if response.status().is_success() {
                        "0"
                    } else {
                        "http_error"
                    })
                    .to_string(),
                Err(_) => "transport_error".to_string(),
            };
            // The path is client-controlled: paths no service serves (UNIMPLEMENTED) share one
            // label so they cannot grow the series without bound.
            let method = if code == "12" {
                "unmatched".to_string()
            } else {
                path
            };
            metrics::counter!("grpc_requests_total", "method" => method.clone(), "code" => code)
                .increment(1);
            metrics::histogram!("grpc_request_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}
