//! The HTTP/1.1 connection loop under the router, and what keeps a slow or idle client from
//! holding the gateway:
//! - at most `server.max_connections` connections are open; one more is answered 503 and closed;
//! - a request head must be complete within `server.header_read_timeout_ms` of its first byte;
//! - a request body must be complete within `server.body_read_timeout_ms` of its head (else 408),
//!   plus a second per declared MiB beyond the first (a large media upload);
//! - a connection with no request in flight is closed after `server.idle_timeout_ms`.
//!
//! On shutdown the listener stops, idle connections close at once and busy ones finish their
//! request; [`Connections::close_all`] drops whatever is still open (a half-sent request cannot
//! hold a stopping gateway past its grace period). Settlements do not live on connections (they
//! run on the application's task tracker), so closing a connection never loses one.

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The connection limits and timeouts (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub body_read: Duration,
    pub idle: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The limits `[server]` configures.
    pub fn from_config(c: &crate::config::ServerConfig) -> Limits {
        Limits {
            header_read: Duration::from_millis(c.header_read_timeout_ms),
            body_read: Duration::from_millis(c.body_read_timeout_ms),
            idle: Duration::from_millis(c.idle_timeout_ms),
            max_connections: c.max_connections,
        }
    }
}

/// Extra time for a large declared body (a media upload): one second per MiB of its
/// `Content-Length` beyond the first MiB, so a 512 MB video is not cut at the ordinary body
/// deadline while a slow client still cannot hold a connection longer than its size allows.
fn transfer_allowance(headers: &axum::http::HeaderMap) -> Duration {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_secs(declared.saturating_sub(1 << 20) >> 20)
}

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds on a process-wide monotonic clock (never 0: 0 means "not set" below).
fn now_ms() -> u64 {
    clock_base().elapsed().as_millis() as u64 + 1
}

/// The instant a [`now_ms`] reading stands for.
fn instant_at(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(clock_base() + Duration::from_millis(ms.saturating_sub(1)))
}

/// What one connection is doing, shared by its socket wrapper, its service and its watchdog.
#[derive(Default)]
struct Activity {
    /// Last time bytes moved either way, or a response ended.
    last_ms: AtomicU64,
    /// When the first byte of a request head arrived that has not become a request yet (0: none).
    head_since_ms: AtomicU64,
    /// Requests whose response has not been sent completely.
    in_flight: AtomicUsize,
}

/// The socket, noting every read and write in the connection's [`Activity`].
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = now_ms();
            let a = &self.activity;
            a.last_ms.store(now, Ordering::Relaxed);
            if a.in_flight.load(Ordering::Acquire) == 0 {
                let _ =
                    a.head_since_ms
                        .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passes (the timer is armed only if the body is
/// not already there when first read, so a small request costs no timer).
struct DeadlineBody {
    inner: Incoming,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

/// The error a body that missed its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out.store(true, Ordering::Release);
                Poll::Ready(Some(Err(BodyTimeout.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its request finished when it is dropped (sent or abandoned).
struct Finishing {
    inner: Body,
    activity: Arc<Activity>,
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HttpBody for Finishing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The open connections: stop them gracefully, or close them outright.
#[derive(Clone)]
pub struct Connections {
    tracker: TaskTracker,
    /// Stop accepting; idle connections close, busy ones after their request.
    stop: CancellationToken,
    /// Drop every connection still open.
    close: CancellationToken,
}

impl Connections {
    /// Stops accepting new connections and asks the open ones to finish.
    pub fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
    }

    /// Waits until every connection has closed.
    pub async fn closed(&self) {
        self.tracker.wait().await;
    }

    /// Closes every connection still open, mid-request or not.
    pub fn close_all(&self) {
        self.close.cancel();
    }
}

/// Accepts connections on `listener` and serves `router` on each until [`Connections::stop`].
pub fn start(listener: TcpListener, router: Router, limits: Limits) -> Connections {
    let connections = Connections {
        tracker: TaskTracker::new(),
        stop: CancellationToken::new(),
        close: CancellationToken::new(),
    };
    let c = connections.clone();
    connections
        .tracker
        .spawn(accept(listener, router, limits, c));
    connections
}

async fn accept(listener: TcpListener, router: Router, limits: Limits, c: Connections) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = c.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
            c.tracker.spawn(refuse(tcp));
            continue;
        };
        let router = router.clone();
        let c2 = c.clone();
        c.tracker.spawn(async move {
            serve_connection(tcp, peer, router, limits, c2).await;
            drop(slot);
        });
    }
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse(mut tcp: TcpStream) {
    let answer = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 28\r\n\r\ntoo many open connections\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(answer).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Header,
    Idle,
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    c: Connections,
) {
    metrics::gauge!(crate::metrics::OPEN_CONNECTIONS).increment(1.0);
    let activity = Arc::new(Activity::default());
    activity.last_ms.store(now_ms(), Ordering::Relaxed);
    let io = TokioIo::new(Watched {
        tcp,
        activity: Arc::clone(&activity),
    });
    let a = Arc::clone(&activity);
    let body_read = limits.body_read;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let activity = Arc::clone(&a);
        activity.head_since_ms.store(0, Ordering::Release);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        let timed_out = Arc::new(AtomicBool::new(false));
        let (mut parts, inner) = req.into_parts();
        parts.extensions.insert(ConnectInfo(peer));
        let deadline = tokio::time::Instant::now() + body_read + transfer_allowance(&parts.headers);
        let body = Body::new(DeadlineBody {
            inner,
            deadline,
            sleep: None,
            timed_out: Arc::clone(&timed_out),
        });
        let router = router.clone();
        async move {
            let response = match router.oneshot(Request::from_parts(parts, body)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let response = if timed_out.load(Ordering::Acquire) {
                body_timeout_response()
            } else {
                response
            };
            Ok::<_, std::convert::Infallible>(response.map(|inner| {
                Body::new(Finishing {
                    inner,
                    activity: Arc::clone(&activity),
                })
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    let check_every = limits.idle.min(limits.header_read);
    loop {
        let now = now_ms();
        let head = activity.head_since_ms.load(Ordering::Acquire);
        let busy = activity.in_flight.load(Ordering::Acquire) > 0;
        let due = if head != 0 {
            Some((head + limits.header_read.as_millis() as u64, Cut::Header))
        } else if !busy {
            let last = activity.last_ms.load(Ordering::Relaxed);
            Some((last + limits.idle.as_millis() as u64, Cut::Idle))
        } else {
            None
        };
        if let Some((at, why)) = due
            && at <= now
        {
            tracing::debug!(peer = %peer, reason = ?why, "closing a slow or idle connection");
            let reason = match why {
                Cut::Header => "header_timeout",
                Cut::Idle => "idle",
            };
            metrics::counter!(crate::metrics::CONNECTIONS_CUT, "reason" => reason).increment(1);
            break;
        }
        let wake = match due {
            Some((at, _)) => at.min(now + check_every.as_millis() as u64),
            None => now + check_every.as_millis() as u64,
        };
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = tokio::time::sleep_until(instant_at(wake)) => {}
            _ = c.stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = c.close.cancelled() => break,
        }
    }
    metrics::gauge!(crate::metrics::OPEN_CONNECTIONS).decrement(1.0);
}

/// 408 in OpenAI's error shape (every client of ours can read it), closing the connection.
fn body_timeout_response() -> Response<Body> {
    let body = serde_json::json!({"error": {
        "message": "the request body did not arrive in time",
        "type": "invalid_request_error", "code": "request_timeout", "param": null}});
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_declared_body_gets_a_second_per_mib_beyond_the_first() {
        let with = |len: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, len.parse().expect("value"));
            transfer_allowance(&h)
        };
        assert_eq!(
            transfer_allowance(&axum::http::HeaderMap::new()),
            Duration::ZERO
        );
        assert_eq!(with("1048576"), Duration::ZERO);
        assert_eq!(with("not a number"), Duration::ZERO);
        assert_eq!(with(&(512u64 << 20).to_string()), Duration::from_secs(511));
    }
}
