//! Seed `004_7546db8756ab08c4.txt` ("Corp Astro").
//!
//! Body: `{"id": <delivery id>, "timestamp": <attempt time>, "event_type",
//! "data"}` written the way `JSON.stringify` writes it, because the receiver
//! checks `HMAC-SHA256(secret, JSON.stringify(req.body))` in hex in
//! `X-Corp-Astro-Signature`. Headers `X-Corp-Astro-Webhook-ID` (delivery id),
//! `X-Corp-Astro-Event`, `X-Corp-Astro-Timestamp` (the body's timestamp).

use wasmhook_sdk::js;
use wasmhook_sdk::prelude::*;

pub struct CorpAstro;

impl Plugin for CorpAstro {
    fn transform(input: &Input) -> Result<Request> {
        let (e, d) = (&input.event, &input.delivery);
        let body = json!({
            "id": d.id,
            "timestamp": d.time,
            "event_type": e.event_type,
            "data": e.data()?,
        });
        Ok(Request::new(js::stringify(&body), "application/json")
            .header("X-Corp-Astro-Webhook-ID", &d.id)
            .header("X-Corp-Astro-Event", &e.event_type)
            .header("X-Corp-Astro-Timestamp", &d.time)
            .sign(Signature::hmac_sha256_hex("X-Corp-Astro-Signature")))
    }
}

export_plugin!(CorpAstro);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmhook_sdk::{Decision, run};

    #[test]
    fn envelope_with_delivery_id() {
        let input = Input::test("user.created", json!({"userId": "u1"}));
        let Decision::Deliver(req) = run::<CorpAstro>(&input).unwrap() else {
            panic!()
        };
        assert_eq!(
            req.body_str(),
            r#"{"id":"dlv_test","timestamp":"2026-01-01T00:00:00.000Z","event_type":"user.created","data":{"userId":"u1"}}"#
        );
        assert_eq!(
            req.header_value("X-Corp-Astro-Timestamp"),
            Some("2026-01-01T00:00:00.000Z")
        );
    }
}
