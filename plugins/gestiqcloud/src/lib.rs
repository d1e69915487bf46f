//! Seed `001_5705dc89aee71145.txt` (ERP "gestiqcloud").
//!
//! Body: `{event, resource_type, resource_id, timestamp, data, metadata:
//! {tenant_id, source, version}}`; `X-Signature: sha256=<hex HMAC-SHA256 of
//! the raw body>`. `plugin_config` may set `source`, `version` and
//! `tenant_id`. `resource_type` is the event type's first segment
//! (`invoice.created` → `invoice`); `resource_id` is the data's
//! `<resource_type>_id`, else its `id`.

use wasmhook_sdk::prelude::*;

pub struct Gestiqcloud;

#[derive(serde::Serialize)]
struct Envelope<'a> {
    event: &'a str,
    resource_type: &'a str,
    resource_id: Option<String>,
    timestamp: &'a str,
    /// Forwarded byte for byte, never parsed into a `Value`.
    data: &'a serde_json::value::RawValue,
    metadata: Metadata<'a>,
}

#[derive(serde::Serialize)]
struct Metadata<'a> {
    tenant_id: &'a str,
    source: &'a str,
    version: &'a str,
}

impl Plugin for Gestiqcloud {
    fn transform(input: &Input) -> Result<Request> {
        let e = &input.event;
        let resource_type = e.event_type.split('.').next().unwrap_or(&e.event_type);
        let id = match e.field(&format!("{resource_type}_id"))? {
            Some(v) => Some(v),
            None => e.field("id")?,
        };
        let resource_id = id.map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        });
        let cfg = &input.webhook;
        let body = Envelope {
            event: &e.event_type,
            resource_type,
            resource_id,
            timestamp: &e.occurred_at,
            data: e.raw()?,
            metadata: Metadata {
                tenant_id: cfg.config_str("tenant_id", &e.tenant),
                source: cfg.config_str("source", "gestiqcloud"),
                version: cfg.config_str("version", "1.0"),
            },
        };
        Ok(Request::json(&body)?
            .header("X-Event-Type", &e.event_type)
            .header("X-Delivery-ID", &input.delivery.id)
            .sign(Signature::hmac_sha256_hex("X-Signature").prefix("sha256=")))
    }
}

export_plugin!(Gestiqcloud);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmhook_sdk::{Decision, run};

    #[test]
    fn envelope_and_config() {
        let input = Input::test(
            "invoice.created",
            json!({"invoice_id": "inv-123", "amount": "1500.00"}),
        )
        .with_config(json!({"source": "gestiqcloud-eu", "version": "2.0"}));
        let Decision::Deliver(req) = run::<Gestiqcloud>(&input).unwrap() else {
            panic!()
        };
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["resource_type"], "invoice");
        assert_eq!(body["resource_id"], "inv-123");
        assert_eq!(
            body["metadata"],
            json!({"tenant_id": "tenant_test", "source": "gestiqcloud-eu", "version": "2.0"})
        );
        let sig = req.signature.unwrap();
        assert_eq!(
            (sig.header.as_str(), sig.prefix.as_str()),
            ("X-Signature", "sha256=")
        );
    }
}
