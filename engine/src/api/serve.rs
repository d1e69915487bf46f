//! The API's HTTP server: accepting connections and the limits on them.
//!
//! Owns: how many connections are open at once (`max_connections`; one over
//! it is closed as soon as it is accepted), how long a connection may take
//! to send a request's headers (`http_header_timeout_ms`, counted from when
//! it opens or its previous answer was sent, so it is also the keep-alive
//! idle limit) and its body (`http_body_timeout_ms`, from when its headers
//! arrived); a connection past either is closed (a late body is answered
//! `408` first). Headers beyond [`MAX_HEADERS`] or [`MAX_HEADER_BYTES`] and
//! URIs beyond [`MAX_URI_BYTES`] are answered `431` and `414` with the
//! API's JSON error: hyper's own limits sit above these, so only requests
//! far past them (or that are not HTTP at all) get hyper's bare answer.
//!
//! Invariants: shutdown stops accepting at once and lets requests in flight
//! finish (for up to 10 s); a slow client holds one connection slot and
//! nothing else.

use super::error::ApiError;
use crate::config::Settings;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

/// Most header fields a request may have.
pub const MAX_HEADERS: usize = 100;
/// Most bytes a request's header fields may take, names and values.
pub const MAX_HEADER_BYTES: usize = 32 << 10;
/// Longest request target (path and query).
pub const MAX_URI_BYTES: usize = 8 << 10;
/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then waits for the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.http_header_timeout)
        // Room above the limits answered in JSON (see `limits`).
        .max_headers(4 * MAX_HEADERS)
        .max_buf_size(4 * (MAX_HEADER_BYTES + MAX_URI_BYTES));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.http_header_timeout)
        .keep_alive_timeout(settings.http_header_timeout)
        .max_header_list_size((4 * MAX_HEADER_BYTES) as u32);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let body_timeout = settings.http_body_timeout;
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up before
                    // the accept: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("connection refused: max_connections are open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let mut router = router.clone();
            async move {
                if let Some(refused) = limits(&req) {
                    return Ok(refused.into_response());
                }
                let req = req.map(|body| Body::new(Timed::new(body, body_timeout)));
                router.call(req).await
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("stopped with requests still in flight after {DRAIN:?}");
    }
    Ok(())
}

/// The JSON answer for a request past the header or URI limits.
fn limits(req: &Request<Incoming>) -> Option<ApiError> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        ));
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "a request may have at most {MAX_HEADERS} header fields of {MAX_HEADER_BYTES} bytes in all"
            ),
        ));
    }
    None
}

/// A request body that fails once its deadline passes. The timer is set
/// only when the body is not all there at once (a small body usually comes
/// with its headers), so most requests never touch the timer wheel.
struct Timed {
    body: Incoming,
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Timed {
    fn new(body: Incoming, within: Duration) -> Timed {
        Timed {
            body,
            deadline: tokio::time::Instant::now() + within,
            timer: None,
        }
    }
}

/// The body did not arrive within `http_body_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

impl HttpBody for Timed {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
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

/// True if a body error, or one of its sources, is a [`BodyTimeout`].
pub fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimeout>() {
            return true;
        }
        next = e.source();
    }
    false
}
