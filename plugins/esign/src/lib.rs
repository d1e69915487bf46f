//! Seed `003_b0b751f4f66019c1.txt` (e-signature SaaS).
//!
//! Flat body: `{"event", <the data's fields>, "status", "timestamp"}` —
//! e.g. `{"event":"document.signed","document_id":"document123",
//! "status":"signed","signed_by":"user456","timestamp":"…"}`. `status`
//! defaults to the event's last segment. `X-Webhook-Signature`: hex
//! HMAC-SHA256 of the raw body (the receiver hashes `req.bodyRaw`).

use wasmhook_sdk::prelude::*;

pub struct Esign;

impl Plugin for Esign {
    fn filter(input: &Input) -> Result<Filter> {
        if !input.event.data()?.is_object() {
            return Err("document events carry an object".into());
        }
        Ok(Filter::Deliver)
    }

    fn transform(input: &Input) -> Result<Request> {
        let e = &input.event;
        let mut body = serde_json::Map::new();
        body.insert("event".into(), json!(e.event_type));
        if let Some(fields) = e.data()?.as_object() {
            for (k, v) in fields {
                if k != "event" && k != "timestamp" {
                    body.insert(k.clone(), v.clone());
                }
            }
        }
        if !body.contains_key("status") {
            let status = e.event_type.rsplit('.').next().unwrap_or(&e.event_type);
            body.insert("status".into(), json!(status));
        }
        body.insert("timestamp".into(), json!(e.occurred_at));
        Ok(Request::json(&body)?
            .header("X-Webhook-Event", &e.event_type)
            .sign(Signature::hmac_sha256_hex("X-Webhook-Signature")))
    }
}

export_plugin!(Esign);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmhook_sdk::{Decision, run};

    #[test]
    fn flat_body() {
        let input = Input::test(
            "document.signed",
            json!({"document_id": "document123", "signed_by": "user456"}),
        );
        let Decision::Deliver(req) = run::<Esign>(&input).unwrap() else {
            panic!()
        };
        assert_eq!(
            req.body_str(),
            r#"{"event":"document.signed","document_id":"document123","signed_by":"user456","status":"signed","timestamp":"2026-01-01T00:00:00.000Z"}"#
        );
    }
}
