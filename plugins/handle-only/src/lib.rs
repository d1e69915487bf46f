//! A plugin built against the `plugin` world alone, with `wit-bindgen` and
//! no SDK: it exports `shape` (`handle`) but not `batch` (`handle-many`), as a component made
//! with another toolchain, or with an SDK from before `handle-many`, does.
//! The engine must shape a fan-out with one `handle` call per webhook.
//!
//! Its body names the delivery and webhook, unsigned; never upload it for
//! real webhooks.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::wasmhook::plugin::shape::Guest;
use wasmhook::plugin::types::{Decision, Delivery, Event, PluginError, Request, Webhook};

struct HandleOnly;

impl Guest for HandleOnly {
    fn handle(event: Event, webhook: Webhook, delivery: Delivery) -> Result<Decision, PluginError> {
        let body = format!(
            r#"{{"event":"{}","webhook":"{}","delivery":"{}"}}"#,
            event.id, webhook.id, delivery.id
        );
        Ok(Decision::Deliver(Request {
            body: body.into_bytes(),
            content_type: "application/json".into(),
            headers: Vec::new(),
            signature: None,
        }))
    }
}

#[cfg(target_arch = "wasm32")]
export!(HandleOnly);
