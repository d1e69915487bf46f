//! Shaping: the engine's native default format (Standard Webhooks), a
//! plugin's call, and the checks every shaped request passes before it is
//! signed and sent, whoever shaped it ([`ShapeError`] says why one could
//! not be).

use crate::model::{Event, Webhook};
use crate::plugin::request::{
    AttemptContext, KeyFormat, OutRequest, SigEncoding, SignSpec, SignedContent,
};
use crate::plugin::{LoadedPlugin, PluginError, PluginRuntime, request::Shaped};
use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;

/// Largest body a plugin may produce.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Headers only the core sets.
const RESERVED: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
];

/// The Standard Webhooks request: body `{"type","timestamp","data"}` with
/// `data` byte-for-byte as the application sent it, headers `webhook-id`
/// (the delivery id) and `webhook-timestamp`, and `webhook-signature:
/// v1,<base64>` over `{id}.{timestamp}.{body}`, one per live secret.
pub fn standard_webhooks(event: &Event, ctx: &AttemptContext) -> OutRequest {
    standard_webhooks_with(envelope(event), ctx)
}

/// [`standard_webhooks`] with the event's [`envelope`] already made: the
/// body depends on the event alone, so an event's deliveries share one.
pub fn standard_webhooks_with(body: Bytes, ctx: &AttemptContext) -> OutRequest {
    OutRequest {
        body,
        content_type: "application/json".into(),
        headers: vec![
            ("webhook-id".into(), ctx.delivery_id.clone()),
            ("webhook-timestamp".into(), ctx.timestamp.to_string()),
        ],
        signature: Some(SignSpec {
            header: "webhook-signature".into(),
            prefix: "v1,".into(),
            encoding: SigEncoding::Base64,
            key: KeyFormat::StandardWebhooks,
            content: SignedContent::StandardWebhooks,
            rotation_separator: Some(" ".into()),
        }),
    }
}

/// The default format's body for `event`: `{"type","timestamp","data"}`,
/// with the event's time, not the attempt's.
pub fn envelope(event: &Event) -> Bytes {
    let event_type = serde_json::to_string(&event.event_type).expect("strings serialise");
    let timestamp = crate::clock::rfc3339_ms(event.occurred_at_ms);
    let data = event.data.get();
    let mut body = Vec::with_capacity(data.len() + event_type.len() + 64);
    body.extend_from_slice(b"{\"type\":");
    body.extend_from_slice(event_type.as_bytes());
    body.extend_from_slice(b",\"timestamp\":\"");
    body.extend_from_slice(timestamp.as_bytes());
    body.extend_from_slice(b"\",\"data\":");
    body.extend_from_slice(data.as_bytes());
    body.push(b'}');
    body.into()
}

/// Why a delivery's request could not be shaped; recorded as the attempt's
/// error (`plugin_error`), and the attempt is retried.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ShapeError {
    /// The plugin could not be had, or its call failed (trap, time limit,
    /// memory cap, an error result).
    #[error("{0}")]
    Plugin(String),
    /// The plugin's request was refused (see [`check`]).
    #[error("plugin produced an invalid request: {0}")]
    Invalid(String),
    /// The thread running the call panicked.
    #[error("plugin call panicked: {0}")]
    Panicked(String),
}

/// Calls `plugin` and checks what it produced (see [`checked`]). CPU-bound,
/// like [`PluginRuntime::call`].
pub fn shape_with(
    runtime: &PluginRuntime,
    plugin: &LoadedPlugin,
    event: &Event,
    webhook: &Webhook,
    ctx: &AttemptContext,
) -> Result<Shaped, ShapeError> {
    checked(runtime, plugin, runtime.call(plugin, event, webhook, ctx))
}

/// What a plugin call produced, checked: a request with forbidden or
/// malformed headers is refused with the reason (and counted as invalid).
pub(super) fn checked(
    runtime: &PluginRuntime,
    plugin: &LoadedPlugin,
    result: Result<Shaped, PluginError>,
) -> Result<Shaped, ShapeError> {
    let shaped = result.map_err(|e| ShapeError::Plugin(e.to_string()))?;
    if let Shaped::Deliver(req) = &shaped
        && let Err(e) = check(req)
    {
        let error = ShapeError::Invalid(e);
        runtime.count_invalid(plugin, &error.to_string());
        return Err(error);
    }
    Ok(shaped)
}

/// Checks a shaped request: valid header names and values (no CR/LF), none
/// the core owns, a sane content type and body size.
pub fn check(req: &OutRequest) -> Result<(), String> {
    if req.body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "body of {} bytes is over the {MAX_BODY_BYTES} byte limit",
            req.body.len()
        ));
    }
    HeaderValue::from_str(&req.content_type).map_err(|_| {
        format!(
            "content type {:?} is not a valid header value",
            req.content_type
        )
    })?;
    let signature_header = req
        .signature
        .as_ref()
        .map(|s| s.header.to_ascii_lowercase());
    if let Some(sig) = &req.signature {
        let name = HeaderName::from_bytes(sig.header.as_bytes()).map_err(|_| {
            format!(
                "signature header {:?} is not a valid header name",
                sig.header
            )
        })?;
        if RESERVED.contains(&name.as_str()) || name.as_str() == "content-type" {
            return Err(format!("signature header {:?} is reserved", sig.header));
        }
        if sig.prefix.contains(['\r', '\n']) {
            return Err("signature prefix contains CR or LF".into());
        }
        if let Some(sep) = &sig.rotation_separator
            && sep.contains(['\r', '\n'])
        {
            return Err("rotation separator contains CR or LF".into());
        }
    }
    for (name, value) in &req.headers {
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?} is not valid"))?;
        HeaderValue::from_str(value).map_err(|_| {
            format!("header {name:?} has an invalid value (CR, LF or control bytes)")
        })?;
        if RESERVED.contains(&parsed.as_str()) || parsed.as_str() == "content-type" {
            return Err(format!(
                "header {name:?} is set by the engine and may not be set"
            ));
        }
        if signature_header.as_deref() == Some(parsed.as_str()) {
            return Err(format!(
                "header {name:?} is the signature header, which the engine sets"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{EventId, TenantId};
    use serde_json::value::RawValue;

    fn event(data: &str) -> Event {
        Event {
            id: EventId::from_trusted("evt_1"),
            tenant: TenantId::from_trusted("t"),
            event_type: "invoice.paid".into(),
            data: RawValue::from_string(data.into()).unwrap(),
            occurred_at_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn default_body_keeps_data_bytes() {
        let data = r#"{"z":1,"a":12345678901234567890.50,"s":"é\u00e9"}"#;
        let req = standard_webhooks(&event(data), &AttemptContext::new("dlv_1", 1, 0));
        let body = String::from_utf8(req.body.to_vec()).unwrap();
        assert_eq!(
            body,
            format!(
                r#"{{"type":"invoice.paid","timestamp":"2023-11-14T22:13:20.123Z","data":{data}}}"#
            )
        );
        assert!(
            check(&standard_webhooks(
                &event("1"),
                &AttemptContext::new("d", 1, 0)
            ))
            .is_ok()
        );
    }

    #[test]
    fn forbidden_headers_are_refused() {
        let mut req = standard_webhooks(&event("1"), &AttemptContext::new("d", 1, 0));
        req.headers.push(("Host".into(), "evil".into()));
        assert!(check(&req).unwrap_err().contains("Host"));
        req.headers.pop();
        req.headers.push(("x-a".into(), "1\r\nx-b: 2".into()));
        assert!(check(&req).is_err());
        req.headers.pop();
        req.headers
            .push(("Webhook-Signature".into(), "v1,forged".into()));
        assert!(check(&req).unwrap_err().contains("signature"));
    }
}
