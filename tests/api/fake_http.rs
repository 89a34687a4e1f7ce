//! The HTTP server under every fake of an outside API (Stripe, PayPal, Daraja, the providers,
//! the OAuth servers, the hosted checkout page): HTTP/1.1 on a random loopback port, each
//! request read whole and handed to the fake's [`Respond`], which decides the answer from its
//! state. On top of that a test can decide *when* answers come, with no clock involved:
//!
//! - [`FakeServer::hold`] with [`HoldPoint::Arrival`] keeps matching requests waiting before
//!   the fake acts on them (the provider has not seen the request yet);
//! - [`HoldPoint::Answer`] lets the fake act, then keeps the answer back (the provider acted;
//!   the caller is still waiting);
//! - [`Hold::arrived`] waits until so many requests are held, [`Hold::release`] lets them (and
//!   every later one) through. A dropped `Hold` releases, so a failed test never leaves a
//!   request hanging.
//! - [`ResponseTemplate::lost`]: the fake acts and closes the connection without an answer.
//! - `POST /__fake/release` releases every hold of the server: for a browser scenario (a
//!   separate process) to say it has seen what it waited for.
//!
//! Shared with the benchmarks (`#[path]`), so it only uses what both have.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long [`Hold::arrived`] waits before failing the test: generous, for a busy machine.
const HOLD_DEADLINE: Duration = Duration::from_secs(120);

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// The full URL as the client addressed it (`http://{Host}{path}?{query}`).
    pub url: url::Url,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Request {
    pub fn body_json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// A header's value as text (`None` if absent or not text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A fake's decision: given a request, the answer.
pub trait Respond: Send + Sync + 'static {
    fn respond(&self, request: &Request) -> ResponseTemplate;
}

/// An answer: status, headers, body, and how it is delivered.
#[derive(Debug, Clone)]
pub struct ResponseTemplate {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
    delay: Duration,
    lost: bool,
}

impl ResponseTemplate {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            lost: false,
        }
    }

    pub fn set_body_json(mut self, body: impl Serialize) -> Self {
        self.body = serde_json::to_vec(&body).unwrap_or_else(|e| panic!("json body: {e}"));
        self.insert_header("content-type", "application/json")
    }

    pub fn set_body_string(mut self, body: impl Into<String>) -> Self {
        self.body = body.into().into_bytes();
        self.insert_header("content-type", "text/plain")
    }

    pub fn set_body_raw(mut self, body: impl Into<Vec<u8>>, content_type: &str) -> Self {
        self.body = body.into();
        self.insert_header("content-type", content_type)
    }

    /// Sets a header, replacing one of the same name.
    pub fn insert_header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
        K::Error: std::fmt::Debug,
        V::Error: std::fmt::Debug,
    {
        let name = name
            .try_into()
            .unwrap_or_else(|e| panic!("header name: {e:?}"));
        let value = value
            .try_into()
            .unwrap_or_else(|e| panic!("header value: {e:?}"));
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name, value));
        self
    }

    /// Answers `delay` after the fake acted: latency, as real providers have. For ordering
    /// in tests, use a [`Hold`], never a delay.
    pub fn set_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The fake acts on the request, then closes the connection without answering: the
    /// caller never learns what happened.
    pub fn lost(mut self) -> Self {
        self.lost = true;
        self
    }
}

/// Where a [`Hold`] keeps a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldPoint {
    /// Before the fake acts: the request has reached the provider's door, no further.
    Arrival,
    /// After the fake acted, before the answer is written.
    Answer,
}

type Matcher = Box<dyn Fn(&Request) -> bool + Send + Sync>;

struct HoldState {
    point: HoldPoint,
    matches: Matcher,
    /// Holds only this many requests; later ones pass (`None`: every matching request).
    limit: Option<usize>,
    released: watch::Sender<bool>,
    arrived: watch::Sender<usize>,
}

/// Requests kept waiting until the test releases them (see the module docs).
pub struct Hold {
    state: Arc<HoldState>,
}

impl Hold {
    /// Waits until `n` matching requests have reached the hold in all (failing the test after
    /// a generous deadline).
    pub async fn arrived(&self, n: usize) {
        let mut arrived = self.state.arrived.subscribe();
        let reached = tokio::time::timeout(HOLD_DEADLINE, arrived.wait_for(|&k| k >= n)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "only {} of {n} requests reached the hold within {HOLD_DEADLINE:?}",
            *self.state.arrived.borrow()
        );
    }

    /// How many matching requests have reached the hold so far.
    pub fn count(&self) -> usize {
        *self.state.arrived.borrow()
    }

    /// Lets every held request, and every later one, through.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

struct Shared {
    responder: Box<dyn Respond>,
    holds: Mutex<Vec<Arc<HoldState>>>,
}

impl Shared {
    /// Waits at every unreleased hold of `point` that matches `request`.
    async fn pass(&self, point: HoldPoint, request: &Request) {
        let matching: Vec<Arc<HoldState>> = {
            let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
            holds.retain(|h| !*h.released.borrow());
            holds
                .iter()
                .filter(|h| h.point == point && (h.matches)(request))
                .cloned()
                .collect()
        };
        for hold in matching {
            let mut released = hold.released.subscribe();
            let mut taken = true;
            hold.arrived.send_modify(|n| {
                taken = hold.limit.is_none_or(|limit| *n < limit);
                if taken {
                    *n += 1;
                }
            });
            if !taken {
                continue;
            }
            // Only the test releases a hold (or drops it); no deadline here.
            let _ = released.wait_for(|&r| r).await;
        }
    }
}

/// A fake's HTTP server; stops accepting when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FakeServer {
    pub async fn start(responder: impl Respond) -> Self {
        Self::start_with(|_| responder).await
    }

    /// Starts a fake whose responder needs the server's own URI (`http://127.0.0.1:{port}`).
    pub async fn start_with<R: Respond>(make: impl FnOnce(String) -> R) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("fake server bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake server address: {e}"));
        let shared = Arc::new(Shared {
            responder: Box::new(make(format!("http://{addr}"))),
            holds: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, Arc::clone(&shared), stop.clone()));
        Self { addr, shared, stop }
    }

    /// `http://127.0.0.1:{port}`
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// Keeps the requests `matches` selects at `point` until the returned [`Hold`] is
    /// released or dropped.
    pub fn hold(
        &self,
        point: HoldPoint,
        matches: impl Fn(&Request) -> bool + Send + Sync + 'static,
    ) -> Hold {
        self.hold_with(point, None, matches)
    }

    /// Like [`FakeServer::hold`], for the first `n` matching requests only; later ones pass.
    pub fn hold_first(
        &self,
        n: usize,
        point: HoldPoint,
        matches: impl Fn(&Request) -> bool + Send + Sync + 'static,
    ) -> Hold {
        self.hold_with(point, Some(n), matches)
    }

    fn hold_with(
        &self,
        point: HoldPoint,
        limit: Option<usize>,
        matches: impl Fn(&Request) -> bool + Send + Sync + 'static,
    ) -> Hold {
        let state = Arc::new(HoldState {
            point,
            matches: Box::new(matches),
            limit,
            released: watch::Sender::new(false),
            arrived: watch::Sender::new(0),
        });
        self.shared
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&state));
        Hold { state }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { answer(&shared, request).await }
            });
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// The error that makes hyper close a connection without an answer ([`ResponseTemplate::lost`]).
#[derive(Debug)]
struct Lost;

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer lost on purpose")
    }
}

impl std::error::Error for Lost {}

async fn answer(
    shared: &Shared,
    request: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Lost> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => return Err(Lost),
    };
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = url::Url::parse(&format!("http://{host}{path}"))
        .or_else(|_| url::Url::parse(&format!("http://localhost{path}")))
        .unwrap_or_else(|e| panic!("request URL {path:?}: {e}"));
    let request = Request {
        method: parts.method,
        url,
        headers: parts.headers,
        body,
    };
    if request.method == Method::POST && request.url.path() == "/__fake/release" {
        for hold in shared
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            hold.released.send_replace(true);
        }
        let mut released = http::Response::new(Full::new(Bytes::new()));
        *released.status_mut() = StatusCode::NO_CONTENT;
        return Ok(released);
    }
    shared.pass(HoldPoint::Arrival, &request).await;
    let template = shared.responder.respond(&request);
    shared.pass(HoldPoint::Answer, &request).await;
    if !template.delay.is_zero() {
        tokio::time::sleep(template.delay).await;
    }
    if template.lost {
        return Err(Lost);
    }
    let mut response = http::Response::new(Full::new(Bytes::from(template.body)));
    *response.status_mut() =
        StatusCode::from_u16(template.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in template.headers {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// Selects requests by method and path prefix, for [`FakeServer::hold`]:
/// `route("POST", "/v1/subscriptions/")`; `"*"` matches any method.
pub fn route(
    method: &'static str,
    prefix: &str,
) -> impl Fn(&Request) -> bool + Send + Sync + 'static {
    let prefix = prefix.to_string();
    move |request| {
        (method == "*" || request.method.as_str() == method)
            && request.url.path().starts_with(&prefix)
    }
}
