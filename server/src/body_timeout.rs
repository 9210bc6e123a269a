//! The body read timeout: a request body that stalls longer than `--body-read-timeout-secs` between two
//! pieces fails its reader with [`Stalled`] (answered 408 `body_timeout`).
//!
//! The timer is armed only when the body has nothing ready. A body already in the connection's buffer, as
//! nearly every JSON request's is, never touches the runtime's timer wheel; tower-http's `TimeoutBody`
//! registers and removes a timer for every piece it is polled for, two per small request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;

/// Every request's body timed: the router's layer.
pub fn layer(
    timeout: Duration,
) -> tower::util::MapRequestLayer<impl Fn(Request) -> Request + Clone> {
    tower::util::MapRequestLayer::new(move |request: Request| {
        request.map(|body| Body::new(Timed::new(body, timeout)))
    })
}

/// A body that fails with [`Stalled`] when no piece arrives within `timeout` of asking for one.
pub struct Timed {
    body: Body,
    timeout: Duration,
    /// Armed when the body first answered "not yet", dropped when a piece arrives.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timed {
    pub fn new(body: Body, timeout: Duration) -> Timed {
        Timed {
            body,
            timeout,
            sleep: None,
        }
    }
}

impl HttpBody for Timed {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error a stalled body fails with.
#[derive(Debug)]
pub struct Stalled;

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body stalled longer than the body read timeout")
    }
}

impl std::error::Error for Stalled {}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// Long enough that a loaded machine's scheduling does not reach it between pieces sent at once.
    const TIMEOUT: Duration = Duration::from_millis(500);

    fn timed(body: Body) -> Body {
        Body::new(Timed::new(body, TIMEOUT))
    }

    #[tokio::test]
    async fn a_ready_body_is_read_whole_and_keeps_its_length() {
        let body = timed(Body::from("{\"a\": 1}"));
        assert_eq!(body.size_hint().exact(), Some(8));
        let bytes = axum::body::to_bytes(body, 1024).await.unwrap();
        assert_eq!(&bytes[..], b"{\"a\": 1}");
    }

    #[tokio::test]
    async fn a_stall_past_the_timeout_fails_the_reader_and_pieces_in_time_do_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let pieces = tokio_stream(rx);
        let mut body = timed(Body::from_stream(pieces)).into_data_stream();
        let sender = tokio::spawn(async move {
            for _ in 0..3 {
                // Each gap is shorter than the timeout, all of them together longer.
                tokio::time::sleep(TIMEOUT / 2).await;
                tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
            }
            tokio::time::sleep(TIMEOUT * 4).await;
            drop(tx);
        });
        for _ in 0..3 {
            assert_eq!(&body.next().await.unwrap().unwrap()[..], b"x");
        }
        let error = body.next().await.unwrap().unwrap_err();
        assert!(crate::error::timed_out(&error), "{error}");
        sender.abort();
    }

    fn tokio_stream(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
