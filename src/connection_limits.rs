//! Bounds on the connections each port holds, so slow or idle clients cannot take the
//! service's file descriptors and memory:
//! - at most `max_connections` open at once per port. When the port is full, a new connection
//!   takes the place of the oldest one that has not sent its first bytes yet (an attacker's
//!   idle or dripping connection, never an established client); when there is none, the new
//!   one is closed at once. Both are counted in `connections_refused_total{port,reason}`;
//! - a new connection must send its first [`HELLO_BYTES`] bytes (an HTTP/2 preface is 24, any
//!   real HTTP/1 request line and Host header more) within `hello_timeout`, or it is closed;
//! - optionally (the sidecar's HTTP/1), a connection with no bytes read or written for
//!   `idle_timeout` is closed. The gRPC port relies on HTTP/2 keep-alive pings instead, since a
//!   `WatchSyncJob` stream may be quiet for minutes.
//!
//! The rest of slow-client handling is hyper's: the header read timeout and the body read
//! timeout of the sidecar, the HTTP/1 header timeout and HTTP/2 keep-alive of the gRPC port.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Connections that have not sent their first bytes yet, oldest first: the ones a newcomer may
/// push out when the port is full.
#[derive(Default)]
struct Waiting {
    queue: Mutex<VecDeque<(u64, CancellationToken)>>,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, CancellationToken)>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove(&self, id: u64) {
        let mut queue = self.lock();
        if let Some(at) = queue.iter().position(|(i, _)| *i == id) {
            queue.remove(at);
        }
    }
}

/// Bytes a client must send before `hello_timeout` (the HTTP/2 connection preface's length).
pub const HELLO_BYTES: usize = 24;

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub hello_timeout: Duration,
    pub idle_timeout: Option<Duration>,
}

/// A listener that hands out [`Guarded`] connections within the limits.
pub struct GuardedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
    port: &'static str,
    waiting: Arc<Waiting>,
    next_id: AtomicU64,
}

impl GuardedListener {
    pub fn new(listener: TcpListener, limits: ConnectionLimits, port: &'static str) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            port,
            waiting: Arc::default(),
            next_id: AtomicU64::new(0),
        }
    }

    /// A slot for a new connection: a free one, or the one of the oldest connection still
    /// waiting for its first bytes (closed to make room).
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(permit);
        }
        let oldest = self.waiting.lock().pop_front();
        let (_, token) = oldest?;
        token.cancel();
        metrics::counter!("connections_refused_total", "port" => self.port, "reason" => "evicted_silent")
            .increment(1);
        // The evicted connection's task wakes, fails its read and drops its slot.
        tokio::time::timeout(
            Duration::from_millis(500),
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok)
    }

    /// The next connection within the cap. Connections over the cap are closed and counted;
    /// accept errors (out of descriptors, say) are logged and waited out briefly.
    pub async fn accept(&self) -> Guarded {
        loop {
            match self.listener.accept().await {
                Ok((stream, _peer)) => match self.slot().await {
                    Some(permit) => {
                        let _ = stream.set_nodelay(true);
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        let evict = CancellationToken::new();
                        self.waiting.lock().push_back((id, evict.clone()));
                        return Guarded::new(
                            stream,
                            permit,
                            self.limits,
                            Slot {
                                id,
                                waiting: Arc::clone(&self.waiting),
                                evicted: Box::pin(evict.cancelled_owned()),
                            },
                        );
                    }
                    None => {
                        metrics::counter!("connections_refused_total", "port" => self.port, "reason" => "full")
                            .increment(1);
                        drop(stream);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, port = self.port, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The connections as a stream, for tonic's `serve_with_incoming_shutdown`.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Guarded>> + Send + 'static {
        futures_util::stream::unfold(self, |listener| async move {
            let next = listener.accept().await;
            Some((Ok(next), listener))
        })
    }
}

/// A connection's place among those waiting for their first bytes.
struct Slot {
    id: u64,
    waiting: Arc<Waiting>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// A connection holding its slot until dropped, closed if it stays silent too long.
pub struct Guarded {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    slot: Slot,
    limits: ConnectionLimits,
    /// Bytes read so far, counted up to [`HELLO_BYTES`].
    hello_read: usize,
    deadline: Pin<Box<Sleep>>,
    /// False once the hello arrived and there is no idle timeout.
    timed: bool,
}

impl Guarded {
    fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        limits: ConnectionLimits,
        slot: Slot,
    ) -> Self {
        Self {
            stream,
            _permit: permit,
            slot,
            limits,
            hello_read: 0,
            deadline: Box::pin(tokio::time::sleep(limits.hello_timeout)),
            timed: true,
        }
    }

    /// Bytes moved: past the hello, the idle clock starts again (or stops for good).
    fn progressed(&mut self, read: usize) {
        if self.hello_read < HELLO_BYTES {
            self.hello_read = self.hello_read.saturating_add(read);
            if self.hello_read < HELLO_BYTES {
                return;
            }
            // Said hello: no longer a candidate for eviction.
            self.slot.waiting.remove(self.slot.id);
        }
        match self.limits.idle_timeout {
            Some(idle) => self.deadline.as_mut().reset(Instant::now() + idle),
            None => self.timed = false,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let evicted =
            self.hello_read < HELLO_BYTES && self.slot.evicted.as_mut().poll(cx).is_ready();
        evicted || (self.timed && self.deadline.as_mut().poll(cx).is_ready())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.hello_read < HELLO_BYTES {
            self.slot.waiting.remove(self.slot.id);
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection silent for too long")
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    self.progressed(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
            && self.hello_read >= HELLO_BYTES
        {
            self.progressed(0);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
            && self.hello_read >= HELLO_BYTES
        {
            self.progressed(0);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn listener(limits: ConnectionLimits) -> (GuardedListener, std::net::SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = tcp.local_addr().unwrap_or_else(|e| panic!("{e}"));
        (GuardedListener::new(tcp, limits, "test"), addr)
    }

    /// Echoes until the guard closes the connection; returns how it ended.
    async fn serve_one(listener: &GuardedListener) -> io::ErrorKind {
        let mut conn = listener.accept().await;
        let mut buf = [0u8; 64];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) => return io::ErrorKind::UnexpectedEof,
                Ok(n) => {
                    let _ = conn.write_all(&buf[..n]).await;
                }
                Err(e) => return e.kind(),
            }
        }
    }

    const LIMITS: ConnectionLimits = ConnectionLimits {
        max_connections: 2,
        hello_timeout: Duration::from_millis(200),
        idle_timeout: None,
    };

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_hello_timeout() {
        let (listener, addr) = listener(LIMITS).await;
        let _client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        assert_eq!(serve_one(&listener).await, io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_dripping_client_is_closed_and_a_real_one_is_not() {
        let (listener, addr) = listener(LIMITS).await;
        let mut drip = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let server = tokio::spawn(async move {
            let first = serve_one(&listener).await;
            (first, serve_one(&listener).await)
        });
        for _ in 0..5 {
            let _ = drip.write_all(b"P").await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let mut real = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        real.write_all(&[b'x'; HELLO_BYTES])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Quiet for longer than the hello timeout: no idle timeout on this port.
        tokio::time::sleep(Duration::from_millis(400)).await;
        real.write_all(b"still here")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut echoed = vec![0u8; HELLO_BYTES + 10];
        real.read_exact(&mut echoed)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(real);
        let (first, second) = server.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, io::ErrorKind::TimedOut);
        assert_eq!(second, io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        let (listener, addr) = listener(ConnectionLimits {
            hello_timeout: Duration::from_secs(30),
            ..LIMITS
        })
        .await;
        let mut held = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(
                TcpStream::connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        // The first two said hello: established clients are never pushed out.
        for client in clients.iter_mut().take(2) {
            client
                .write_all(&[b'x'; HELLO_BYTES])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for _ in 0..2 {
            let mut conn = listener.accept().await;
            let mut hello = [0u8; HELLO_BYTES];
            conn.read_exact(&mut hello)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            held.push(conn);
        }
        // The third is accepted by the kernel, then closed by the cap on the next accept.
        let accepting = tokio::spawn(async move { listener.accept().await });
        let mut third = clients.pop().unwrap_or_else(|| panic!("no client"));
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        accepting.abort();
    }

    #[tokio::test]
    async fn a_full_port_makes_room_by_closing_the_oldest_silent_connection() {
        let (listener, addr) = listener(ConnectionLimits {
            hello_timeout: Duration::from_secs(30),
            ..LIMITS
        })
        .await;
        let listener = Arc::new(listener);
        // A real client (said hello) and a silent one fill the two slots.
        let mut real = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        real.write_all(&[b'x'; HELLO_BYTES])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let l = Arc::clone(&listener);
        let real_server = tokio::spawn(async move { serve_one(&l).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _silent = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let l = Arc::clone(&listener);
        let silent_server = tokio::spawn(async move { serve_one(&l).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A newcomer: the silent connection makes way, the real one stays.
        let mut newcomer = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let l = Arc::clone(&listener);
        let new_server = tokio::spawn(async move { serve_one(&l).await });
        let evicted = tokio::time::timeout(Duration::from_secs(5), silent_server).await;
        assert!(
            matches!(evicted, Ok(Ok(io::ErrorKind::TimedOut))),
            "{evicted:?}"
        );
        newcomer
            .write_all(b"hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut echoed = [0u8; 5];
        newcomer
            .read_exact(&mut echoed)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        real.write_all(b"!").await.unwrap_or_else(|e| panic!("{e}"));
        let mut echoed = vec![0u8; HELLO_BYTES + 1];
        real.read_exact(&mut echoed)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop((real, newcomer));
        let _ = (real_server.await, new_server.await);
    }

    #[tokio::test]
    async fn the_sidecar_idle_timeout_closes_a_quiet_keep_alive_connection() {
        let (listener, addr) = listener(ConnectionLimits {
            idle_timeout: Some(Duration::from_millis(200)),
            ..LIMITS
        })
        .await;
        let mut client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client
            .write_all(&[b'x'; HELLO_BYTES])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serve_one(&listener).await, io::ErrorKind::TimedOut);
    }
}
