//! The outbound HTTP client: hyper-util's pooled client over rustls (HTTPS
//! with the webpki roots, plain HTTP allowed), HTTP/1.1 and HTTP/2, no
//! redirects followed, every connection going through the SSRF filter.

use super::ssrf;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How much of a response body an attempt keeps, unless set
/// (`log_response_body_bytes`).
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// Resolves names and drops the addresses deliveries may not reach.
#[derive(Clone)]
pub struct GuardedResolver {
    allow: Arc<[IpNet]>,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow = self.allow.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| ssrf::allowed(a.ip(), &allow))
                .collect();
            if permitted.is_empty() && !found.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{} resolves to private address {}",
                        name.as_str(),
                        found[0].ip()
                    ),
                ));
            }
            Ok(permitted.into_iter())
        })
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    allow: Arc<[IpNet]>,
    /// How much of an answer's body is kept.
    response_bytes: usize,
}

/// What the receiver answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    /// Its headers, `name: value` lines, the first [`MAX_HEADER_BYTES`].
    pub headers: String,
}

/// Bytes of an answer's headers kept for the attempt log.
pub const MAX_HEADER_BYTES: usize = 4096;

/// `name: value` lines of `headers`, at most `max` bytes of them, with the
/// values of the headers `redact` names replaced (for the attempt log).
pub fn header_lines(headers: &hyper::HeaderMap, max: usize, redact: &[&str]) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        let value = if redact.iter().any(|r| name.as_str().eq_ignore_ascii_case(r)) {
            "[redacted]"
        } else {
            value.to_str().unwrap_or("[not text]")
        };
        if out.len() + name.as_str().len() + value.len() + 3 > max {
            break;
        }
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(value);
        out.push('\n');
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Network(String),
    #[error("refused: {0} is a private address (allow it with allow_private_targets)")]
    PrivateAddress(IpAddr),
}

impl HttpClient {
    pub fn new(allow: &[IpNet]) -> Self {
        let allow: Arc<[IpNet]> = allow.into();
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            allow: allow.clone(),
        });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        HttpClient {
            client,
            allow,
            response_bytes: MAX_RESPONSE_BYTES,
        }
    }

    /// The same client keeping `bytes` of each answer's body
    /// (`log_response_body_bytes`).
    pub fn keeping(mut self, bytes: usize) -> Self {
        self.response_bytes = bytes;
        self
    }

    /// POSTs `body` to `uri`; the whole exchange, body read included, is bounded by `timeout`.
    pub async fn post(
        &self,
        uri: &hyper::Uri,
        headers: hyper::HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(Answer, Duration), (SendError, Duration)> {
        let started = Instant::now();
        // IP literals bypass the resolver, so they are checked here.
        if let Some(ip) = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok())
            && !ssrf::allowed(ip, &self.allow)
        {
            return Err((SendError::PrivateAddress(ip), started.elapsed()));
        }
        let mut req = Request::post(uri.clone())
            .body(Full::new(body))
            .map_err(|e| (SendError::Network(e.to_string()), started.elapsed()))?;
        *req.headers_mut() = headers;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| describe(&e))?;
            let status = resp.status().as_u16();
            let headers = header_lines(resp.headers(), MAX_HEADER_BYTES, &[]);
            let retry_after = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = resp.into_body();
            let mut kept = Vec::new();
            let max_body = self.response_bytes;
            while kept.len() < max_body {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let room = max_body - kept.len();
                            kept.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    // The status is what counts; a broken body after it is not a failure.
                    Some(Err(_)) | None => break,
                }
            }
            Ok(Answer {
                status,
                retry_after,
                body: String::from_utf8_lossy(&kept).into_owned(),
                headers,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => Ok((answer, started.elapsed())),
            Ok(Err(e)) => Err((e, started.elapsed())),
            Err(_) => Err((
                SendError::Timeout(timeout.as_millis() as u64),
                started.elapsed(),
            )),
        }
    }
}

/// A readable cause for a client error, innermost first (e.g. "connection refused").
fn describe(e: &hyper_util::client::legacy::Error) -> SendError {
    let mut text = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !text.contains(&s) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&s);
        }
        cur = err.source();
    }
    SendError::Network(text)
}
