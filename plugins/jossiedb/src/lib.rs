//! Seed `002_899dfef5fab283c5.txt` (inventory "Jossiedb").
//!
//! Body: `{"event", "webhookId", "timestamp", "data"}` written the way
//! `JSON.stringify` writes it; `X-Webhook-Signature` is the hex
//! HMAC-SHA256 of `JSON.stringify(body.data)` — the data member only —
//! which the engine signs from the exact bytes this plugin supplies.
//! Headers `X-Webhook-ID` (the webhook's id) and `X-Event-Type`.
//!
//! The seed's per-webhook filters live in `plugin_config.filters`:
//! `locations` and `categories` (the data's `location_id`/`locationId`/
//! `location` and `category_id`/`categoryId`/`category` must be listed) and
//! `minStockThreshold` (a `low-stock-alert` goes out only when the data's
//! `quantity`/`current_quantity`/`currentStock` is below it). A delivery
//! that does not match is skipped with the reason recorded.

use wasmhook_sdk::js;
use wasmhook_sdk::prelude::*;

pub struct Jossiedb;

fn field<'a>(data: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| data.get(*n))
        .filter(|v| !v.is_null())
}

fn listed(allowed: &Value, value: Option<&Value>) -> bool {
    let Some(list) = allowed.as_array().filter(|l| !l.is_empty()) else {
        return true;
    };
    value.is_some_and(|v| list.iter().any(|a| a == v))
}

impl Plugin for Jossiedb {
    fn filter(input: &Input) -> Result<Filter> {
        let filters = &input.webhook.config["filters"];
        if filters.is_null() {
            return Ok(Filter::Deliver);
        }
        let data = input.event.data()?;
        let location = field(data, &["location_id", "locationId", "location"]);
        if !listed(&filters["locations"], location) {
            return Ok(Filter::Skip(format!(
                "location {} is not in the webhook's locations",
                location.unwrap_or(&Value::Null)
            )));
        }
        let category = field(data, &["category_id", "categoryId", "category"]);
        if !listed(&filters["categories"], category) {
            return Ok(Filter::Skip(format!(
                "category {} is not in the webhook's categories",
                category.unwrap_or(&Value::Null)
            )));
        }
        if let (Some(threshold), "low-stock-alert") = (
            filters["minStockThreshold"].as_f64(),
            input.event.event_type.as_str(),
        ) {
            let quantity = field(data, &["quantity", "current_quantity", "currentStock"])
                .and_then(Value::as_f64)
                .context("low-stock-alert data has no quantity")?;
            if quantity >= threshold {
                return Ok(Filter::Skip(format!(
                    "stock {quantity} is not below minStockThreshold {threshold}"
                )));
            }
        }
        Ok(Filter::Deliver)
    }

    fn transform(input: &Input) -> Result<Request> {
        let e = &input.event;
        let data = e.data()?;
        let body = json!({
            "event": e.event_type,
            "webhookId": input.webhook.id,
            "timestamp": e.occurred_at,
            "data": data,
        });
        Ok(Request::new(js::stringify(&body), "application/json")
            .header("X-Webhook-ID", &input.webhook.id)
            .header("X-Event-Type", &e.event_type)
            .sign(Signature::hmac_sha256_hex("X-Webhook-Signature").over(js::stringify(data))))
    }
}

export_plugin!(Jossiedb);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmhook_sdk::{Decision, SignedContent, run};

    fn alert(quantity: u32, location: &str) -> Input {
        Input::test("low-stock-alert", json!({"item_id": "i1", "quantity": quantity, "location_id": location, "category_id": "cat-456"}))
            .with_config(json!({"filters": {"locations": ["loc-123"], "categories": ["cat-456"], "minStockThreshold": 5}}))
    }

    #[test]
    fn filters_by_location_category_and_threshold() {
        assert!(matches!(
            run::<Jossiedb>(&alert(2, "loc-123")).unwrap(),
            Decision::Deliver(_)
        ));
        let Decision::Skip(why) = run::<Jossiedb>(&alert(7, "loc-123")).unwrap() else {
            panic!()
        };
        assert!(why.contains("minStockThreshold"));
        let Decision::Skip(why) = run::<Jossiedb>(&alert(2, "loc-999")).unwrap() else {
            panic!()
        };
        assert!(why.contains("location"));
    }

    #[test]
    fn signs_the_data_member() {
        let Decision::Deliver(req) = run::<Jossiedb>(&alert(2, "loc-123")).unwrap() else {
            panic!()
        };
        let SignedContent::Bytes(signed) = req.signature.unwrap().content else {
            panic!()
        };
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(signed, js::stringify(&body["data"]).into_bytes());
    }
}
