//! The listener: client connections accepted up to a maximum (beyond it they wait in the kernel's listen
//! backlog), each served by hyper (HTTP/1.1 with upgrades, for WebSockets) and watched:
//! - a request's headers must arrive within the header read timeout of its first byte (of the connection's
//!   start, for its first request), else the connection is closed: a slow or stalled head holds nothing;
//! - a kept-alive connection with no request in flight and no byte arriving is closed after the idle
//!   timeout (gracefully: a response still being written is finished first).
//!
//! A stalled request body is the body read timeout's (a layer of the router). On shutdown every connection
//! is closed gracefully: idle ones at once, busy ones when their request has been answered.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// The connection limits, each set by its flag.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Open client connections at most (--max-connections).
    pub max: usize,
    /// From a request's first byte (a connection's start) to its complete head
    /// (--header-read-timeout-secs).
    pub header_read_timeout: Duration,
    /// Between two pieces of a request body (--body-read-timeout-secs).
    pub body_read_timeout: Duration,
    /// A kept-alive connection with nothing happening (--idle-timeout-secs).
    pub idle_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, closes every connection
/// gracefully and returns when they have all closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(settings.max));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer.ip()),
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (router, stopping) = (router.clone(), stopping.clone());
        tokio::spawn(async move {
            connection(stream, peer, router, settings, stopping).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot: all of them back means all closed.
    let _ = slots.acquire_many(settings.max as u32).await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// What a connection has done, counted as it happens (the watcher compares snapshots).
#[derive(Default)]
struct Activity {
    /// Reads that brought bytes.
    reads: AtomicU64,
    /// Requests whose head was read (handed to the router).
    started: AtomicU64,
    /// Requests answered (the router's response produced; its body may still stream).
    answered: AtomicU64,
}

/// Where a connection is, as the watcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's head to be complete: the header read timeout runs.
    Head,
    /// A request in flight: no timeout here (the body read timeout is the router's).
    Busy,
    /// Between requests, nothing arriving: the idle timeout runs.
    Idle,
}

async fn connection(
    stream: TcpStream,
    peer: std::net::IpAddr,
    router: Router,
    settings: Settings,
    mut stopping: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Counted {
        inner: stream,
        activity: activity.clone(),
    });
    let counter = activity.clone();
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            counter.started.fetch_add(1, Ordering::Relaxed);
            let answered = Answered(counter.clone());
            let router = router.clone();
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(crate::limits::Peer(peer));
            async move {
                let response = router.oneshot(request).await;
                drop(answered);
                response
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = pin!(conn);
    let every = (settings.header_read_timeout.min(settings.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut phase, mut since) = (Phase::Head, Instant::now());
    let (mut reads, mut started) = (0, 0);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "connection ended");
                }
                return;
            }
            _ = stopping.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tick.tick(), if !closing => {
                let now_reads = activity.reads.load(Ordering::Relaxed);
                let now_started = activity.started.load(Ordering::Relaxed);
                let answered = activity.answered.load(Ordering::Relaxed);
                let next = if now_started != answered {
                    Phase::Busy
                } else if now_started != started || phase == Phase::Busy {
                    // A request was answered since the last look.
                    Phase::Idle
                } else if now_reads != reads && phase == Phase::Idle {
                    // Bytes of the next request.
                    Phase::Head
                } else {
                    phase
                };
                // A request answered since the last look starts the idle time afresh.
                if next != phase || now_started != started {
                    (phase, since) = (next, Instant::now());
                }
                (reads, started) = (now_reads, now_started);
                match phase {
                    Phase::Head if since.elapsed() >= settings.header_read_timeout => {
                        tracing::debug!("a request head took longer than the header read timeout");
                        return;
                    }
                    Phase::Idle if since.elapsed() >= settings.idle_timeout => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Counts a request as answered when dropped (answered or abandoned alike).
struct Answered(Arc<Activity>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// The socket, counting reads that bring bytes.
struct Counted {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
