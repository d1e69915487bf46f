//! The plugin developer kit behind `wasmhook plugin new` and
//! `wasmhook plugin test`: scaffold a plugin crate, and run a compiled plugin
//! outside the server to show the exact request the engine would send.

use crate::clock::now_ms;
use crate::delivery::{Outgoing, shape_with};
use crate::ids::{EventId, TenantId, WebhookId};
use crate::metrics::PluginMetrics;
use crate::model::{Event, Secret, Webhook};
use crate::plugin::request::{AttemptContext, Shaped};
use crate::plugin::{PluginConfig, PluginRuntime};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

/// The secret `plugin test` signs with unless the webhook file gives one.
pub const TEST_SECRET: &str = "whsec_dGVzdC1zZWNyZXQtZm9yLXdhc21ob29r";

#[derive(Debug, thiserror::Error)]
pub enum DevkitError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Plugin(String),
}

/// `EVENT.json`: the body of a trigger.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    id: Option<String>,
    tenant: Option<String>,
}

/// `WEBHOOK.json`: the parts of a webhook a plugin sees, plus a secret.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WebhookFile {
    id: Option<String>,
    url: Option<String>,
    #[serde(default)]
    plugin_config: serde_json::Value,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    secret: Option<String>,
}

/// What a dry run of a plugin produced.
pub enum TestOutcome {
    /// The request as it would go on the wire (HTTP/1.1 text).
    Request(String),
    Skipped(String),
}

/// Runs `wasm` on the event (and webhook) files, as the engine would for a first attempt.
pub fn test_plugin(
    wasm: &Path,
    event: &Path,
    webhook: Option<&Path>,
) -> Result<TestOutcome, DevkitError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| DevkitError::Input(format!("{}: {e}", p.display())))
    };
    let event: EventFile = serde_json::from_slice(&read(event)?)
        .map_err(|e| DevkitError::Input(format!("event file: {e}")))?;
    let hook: WebhookFile = match webhook {
        Some(p) => serde_json::from_slice(&read(p)?)
            .map_err(|e| DevkitError::Input(format!("webhook file: {e}")))?,
        None => WebhookFile::default(),
    };
    let runtime = PluginRuntime::new(
        PluginConfig {
            timeout: Duration::from_millis(500),
            ..PluginConfig::default()
        },
        PluginMetrics::default(),
    )
    .map_err(|e| DevkitError::Plugin(e.to_string()))?;
    let pre = runtime
        .compile(&read(wasm)?)
        .map_err(|e| DevkitError::Plugin(e.to_string()))?;
    let tenant = TenantId::from_trusted(event.tenant.unwrap_or_else(|| "tenant_test".into()));
    let name = wasm
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    let meta = crate::model::PluginVersion::unstored(name, 1, "devkit");
    let plugin = runtime.install(&tenant, &meta, pre);
    let now = now_ms();
    let event = Event {
        id: EventId::from_trusted(event.id.unwrap_or_else(|| "evt_test".into())),
        tenant: tenant.clone(),
        event_type: event.event_type,
        data: event.data,
        occurred_at_ms: now,
    };
    let webhook = Webhook {
        id: WebhookId::from_trusted(hook.id.unwrap_or_else(|| "wh_test".into())),
        url: hook
            .url
            .unwrap_or_else(|| "https://receiver.example/webhooks".into()),
        headers: hook.headers,
        metadata: hook.metadata,
        plugin: Some(meta.name.clone()),
        plugin_config: hook.plugin_config,
        secret: Secret::new(hook.secret.unwrap_or_else(|| TEST_SECRET.into())),
        ..Webhook::new(tenant, "", vec!["*".into()], now)
    };
    let ctx = AttemptContext::new("dlv_test", 1, now);
    // Exactly what a delivery attempt does: call, then check the request.
    match shape_with(&runtime, &plugin, &event, &webhook, &ctx)
        .map_err(|e| DevkitError::Plugin(e.to_string()))?
    {
        Shaped::Skip(reason) => Ok(TestOutcome::Skipped(reason)),
        Shaped::Deliver(req) => {
            let Outgoing { headers, body } = Outgoing::build(&webhook, req, &ctx, now);
            let uri: axum::http::Uri = webhook
                .url
                .parse()
                .map_err(|_| DevkitError::Input("webhook url is not a URL".into()))?;
            let mut out = format!(
                "POST {} HTTP/1.1\r\nhost: {}\r\n",
                uri.path_and_query().map_or("/", |p| p.as_str()),
                uri.authority().map_or("", |a| a.as_str())
            );
            for (name, value) in &headers {
                let _ = write!(out, "{name}: {}\r\n", value.to_str().unwrap_or("<binary>"));
            }
            let _ = write!(out, "content-length: {}\r\n\r\n", body.len());
            out.push_str(&String::from_utf8_lossy(&body));
            Ok(TestOutcome::Request(out))
        }
    }
}

/// Writes a ready-to-build plugin crate named `name` into `dir`, depending on
/// the SDK at `sdk`.
pub fn scaffold(name: &str, dir: &Path, sdk: &Path) -> Result<(), DevkitError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        return Err(DevkitError::Input(
            "plugin names start with a lowercase letter and hold lowercase letters, digits, '-' or '_'".into(),
        ));
    }
    if dir.exists() {
        return Err(DevkitError::Input(format!(
            "{} already exists",
            dir.display()
        )));
    }
    let io = |e: std::io::Error| DevkitError::Input(e.to_string());
    std::fs::create_dir_all(dir.join("src")).map_err(io)?;
    let files = [
        (
            "Cargo.toml",
            TEMPLATE_CARGO
                .replace("{name}", name)
                .replace("{sdk}", &sdk.display().to_string()),
        ),
        (
            "src/lib.rs",
            TEMPLATE_LIB
                .replace("{name}", name)
                .replace("{type}", &camel(name)),
        ),
        ("event.json", TEMPLATE_EVENT.to_owned()),
        ("webhook.json", TEMPLATE_WEBHOOK.to_owned()),
        (
            "README.md",
            TEMPLATE_README
                .replace("{name}", name)
                .replace("{file}", &name.replace('-', "_")),
        ),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (file, text) in files {
        std::fs::write(dir.join(file), text).map_err(io)?;
    }
    Ok(())
}

/// `my-format` → `MyFormat`.
fn camel(name: &str) -> String {
    name.split(['-', '_'])
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

const TEMPLATE_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
wasmhook-sdk = { path = "{sdk}" }

# A workspace of its own; move it into plugins/ as a member if you like.
[workspace]

[profile.release]
lto = true
strip = true
panic = "abort"
"#;

const TEMPLATE_LIB: &str = r#"//! The `{name}` wasmhook plugin.

use wasmhook_sdk::prelude::*;

pub struct {type};

impl Plugin for {type} {
    /// Skip what the receiver does not want (the reason is recorded).
    fn filter(input: &Input) -> Result<Filter> {
        if input.event.event_type.ends_with(".internal") {
            return Ok(Filter::Skip("internal events are not sent".into()));
        }
        Ok(Filter::Deliver)
    }

    /// The request the receiver expects. The engine signs it as `sign` says.
    fn transform(input: &Input) -> Result<Request> {
        let e = &input.event;
        let body = json!({
            "event": e.event_type,
            "id": input.delivery.id,
            "occurred_at": e.occurred_at,
            "source": input.webhook.config_str("source", "{name}"),
            "data": e.data()?,
        });
        Ok(Request::json(&body)?
            .header("X-Event-Type", &e.event_type)
            .sign(Signature::hmac_sha256_hex("X-Signature").prefix("sha256=")))
    }
}

export_plugin!({type});

#[cfg(test)]
mod tests {
    use super::*;
    use wasmhook_sdk::{Decision, run};

    #[test]
    fn shapes_the_body() {
        let input = Input::test("invoice.paid", json!({"amount": 12.5}))
            .with_config(json!({"source": "billing"}));
        let Decision::Deliver(req) = run::<{type}>(&input).unwrap() else {
            panic!("skipped")
        };
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["source"], "billing");
        assert_eq!(body["data"]["amount"], 12.5);
        assert_eq!(req.header_value("X-Event-Type"), Some("invoice.paid"));
    }

    #[test]
    fn skips_internal_events() {
        let input = Input::test("audit.internal", json!({}));
        assert!(matches!(run::<{type}>(&input).unwrap(), Decision::Skip(_)));
    }
}
"#;

const TEMPLATE_EVENT: &str = r#"{"type": "invoice.paid", "data": {"invoiceNumber": "INV-1001", "amount": 1250.50}}
"#;

const TEMPLATE_WEBHOOK: &str = r#"{"url": "https://receiver.example/webhooks", "plugin_config": {"source": "billing"}, "secret": "my-webhook-secret-12345678"}
"#;

const TEMPLATE_README: &str = r#"# {name}

A wasmhook plugin.

```sh
cargo test                                   # logic, on the native target
cargo build --release --target wasm32-wasip2 # the component
wasmhook plugin test target/wasm32-wasip2/release/{file}.wasm --event event.json --webhook webhook.json
curl -X PUT http://127.0.0.1:8080/api/plugins/{name} \
  -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/wasm' \
  --data-binary @target/wasm32-wasip2/release/{file}.wasm
```
"#;
