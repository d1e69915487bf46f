//! The Standard Webhooks format as a plugin: byte for byte what the engine
//! sends when a webhook names no plugin. A starting point for variants (extra
//! headers, a different envelope) that keep Standard Webhooks signing.

use wasmhook_sdk::prelude::*;

pub struct StandardWebhooks;

impl Plugin for StandardWebhooks {
    fn transform(input: &Input) -> Result<Request> {
        let event = &input.event;
        // Built by hand so `data` goes out exactly as the application sent it.
        let body = format!(
            r#"{{"type":{},"timestamp":"{}","data":{}}}"#,
            serde_json::to_string(&event.event_type)?,
            event.occurred_at,
            event.raw_data
        );
        Ok(Request::new(body, "application/json")
            .header("webhook-id", &input.delivery.id)
            .header("webhook-timestamp", &input.delivery.timestamp.to_string())
            .sign(Signature::standard_webhooks()))
    }
}

export_plugin!(StandardWebhooks);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmhook_sdk::{Decision, run};

    #[test]
    fn envelope_keeps_data_verbatim() {
        let mut input = Input::test("invoice.paid", json!({}));
        input.event.raw_data = r#"{"amount": 12.50, "z": 1, "a": 2}"#.into();
        let Decision::Deliver(req) = run::<StandardWebhooks>(&input).unwrap() else {
            panic!("skipped")
        };
        assert_eq!(
            req.body_str(),
            r#"{"type":"invoice.paid","timestamp":"2026-01-01T00:00:00.000Z","data":{"amount": 12.50, "z": 1, "a": 2}}"#
        );
        assert_eq!(req.header_value("webhook-id"), Some("dlv_test"));
        assert_eq!(req.signature, Some(Signature::standard_webhooks()));
    }
}
