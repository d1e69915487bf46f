//! The HTTP request as sent: a shaped request (from the native default
//! format or a plugin, already checked by [`super::shape::check`]) turned
//! into its final headers and body, signed. One function, used by every
//! attempt, the dry run and the plugin dev kit, so what they show is what
//! is sent.
//!
//! Owns: header precedence (the engine's content type and user agent, then
//! the shaped headers, then the webhook's custom headers, which win) and
//! the signature header. Nothing here may happen twice: it is pure but for
//! reading the webhook's live secrets.

use crate::model::Webhook;
use crate::plugin::request::{AttemptContext, OutRequest, Text};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use bytes::Bytes;
use std::borrow::Cow;

/// The request's final headers and body.
pub struct Outgoing {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Outgoing {
    /// The final headers and body: content type, user agent, the shaped headers,
    /// the webhook's custom headers (which win), and the signature made with
    /// the webhook's secrets live at `now_ms`. `req` must have passed
    /// [`super::shape::check`].
    pub fn build(
        webhook: &Webhook,
        req: OutRequest,
        ctx: &AttemptContext,
        now_ms: u64,
    ) -> Outgoing {
        let mut headers = HeaderMap::with_capacity(8);
        let valid = "checked by shape::check or on webhook write";
        headers.insert(
            header::CONTENT_TYPE,
            match &req.content_type {
                Cow::Borrowed(text) => HeaderValue::from_static(text),
                Cow::Owned(text) => HeaderValue::from_str(text).expect(valid),
            },
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        for (name, value) in &req.headers {
            headers.insert(
                header_name(name),
                HeaderValue::from_str(value).expect(valid),
            );
        }
        for (name, value) in &webhook.headers {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect(valid),
                HeaderValue::from_str(value).expect(valid),
            );
        }
        if let Some(spec) = &req.signature {
            let secrets = webhook.live_secrets(now_ms);
            let value = super::sign::signature_value(
                spec,
                &secrets,
                &req.body,
                &ctx.delivery_id,
                ctx.timestamp,
            );
            headers.insert(
                header_name(&spec.header),
                HeaderValue::from_str(&value).expect("base64, hex and checked prefixes are valid"),
            );
        }
        Outgoing {
            headers,
            body: req.body,
        }
    }
}

/// The headers the default format sends with no custom headers, as the
/// attempt log shows them (the signature redacted): rebuilt from the
/// delivery id and signed timestamp, since such attempts store none.
pub fn default_headers(delivery_id: &str, timestamp: u64) -> serde_json::Value {
    serde_json::json!({
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery_id,
        "webhook-timestamp": timestamp.to_string(),
        "webhook-signature": "[redacted]",
    })
}

const USER_AGENT: &str = concat!("wasmhook/", env!("CARGO_PKG_VERSION"));

/// A shaped header's name: the default format's constants are taken as
/// they are, a plugin's are parsed (and copied).
fn header_name(name: &Text) -> HeaderName {
    match name {
        Cow::Borrowed(name) => HeaderName::from_static(name),
        Cow::Owned(name) => {
            HeaderName::from_bytes(name.as_bytes()).expect("checked by shape::check")
        }
    }
}
