//! Seed `000_3390972e15d11ac3.txt` (law-firm practice management).
//!
//! Body: `{"event", "firmId", "timestamp", "data"}` written the way
//! `JSON.stringify` writes it, because the receiver checks
//! `HMAC-SHA256(secret, JSON.stringify(req.body))` in hex in
//! `X-Webhook-Signature`.

use wasmhook_sdk::js;
use wasmhook_sdk::prelude::*;

pub struct Lawfirm;

impl Plugin for Lawfirm {
    fn transform(input: &Input) -> Result<Request> {
        let e = &input.event;
        let body = json!({
            "event": e.event_type,
            "firmId": input.webhook.config_str("firm_id", &e.tenant),
            "timestamp": e.occurred_at,
            "data": e.data()?,
        });
        Ok(Request::new(js::stringify(&body), "application/json")
            .header("X-Webhook-Event", &e.event_type)
            .header("X-Webhook-Delivery", &input.delivery.id)
            .sign(Signature::hmac_sha256_hex("X-Webhook-Signature")))
    }
}

export_plugin!(Lawfirm);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmhook_sdk::{Decision, run};

    #[test]
    fn body_is_what_json_stringify_writes() {
        let mut input = Input::test("invoice.paid", json!({}));
        input.event.raw_data = r#"{"_id":"inv_1","totalAmount":1500.00,"2":"x"}"#.into();
        let Decision::Deliver(req) = run::<Lawfirm>(&input).unwrap() else {
            panic!()
        };
        assert_eq!(
            req.body_str(),
            r#"{"event":"invoice.paid","firmId":"tenant_test","timestamp":"2026-01-01T00:00:00.000Z","data":{"2":"x","_id":"inv_1","totalAmount":1500}}"#
        );
        assert_eq!(req.signature.unwrap().header, "X-Webhook-Signature");
    }
}
