#![doc = include_str!("../README.md")]

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::value::RawValue;

pub use serde_json::{self, Value, json};

pub mod js;

#[doc(hidden)]
pub mod bindings {
    // `handle-many`'s generated export takes its parameters flattened.
    #![allow(clippy::too_many_arguments)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin-many",
        pub_export_macro: true,
        default_bindings_module: "wasmhook_sdk::bindings",
    });
}

use bindings::wasmhook::plugin::types as wit;

pub mod prelude {
    pub use crate::{
        Decision, Delivery, Encoding, Error, Event, Filter, Input, KeyFormat, Plugin, Request,
        Result, ResultExt, Signature, SignedContent, Webhook, export_plugin, log,
    };
    pub use serde_json::{self, Value, json};
}

/// A plugin failure with a message; the engine records it on the attempt and
/// retries the delivery on the webhook's schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(format!("JSON: {e}"))
    }
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_owned())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to an error: `value.parse().context("config.version")?`.
pub trait ResultExt<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }
}

impl<T> ResultExt<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error(format!("{what}: missing")))
    }
}

/// The event being delivered.
#[derive(Debug)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub tenant: String,
    /// RFC 3339, UTC, milliseconds.
    pub occurred_at: String,
    pub occurred_at_ms: u64,
    /// The `data` JSON exactly as the application sent it.
    pub raw_data: String,
    parsed: OnceCell<Value>,
    raw: OnceCell<Box<RawValue>>,
    /// Top-level keys and where their values sit in `raw_data`.
    fields: OnceCell<Members>,
    /// True only for the event the engine handed to this call: its data is
    /// one well-formed JSON value without surrounding whitespace (the
    /// engine checked it when the event was accepted; see `wit/plugin.wit`),
    /// so [`Event::raw`] need not check it again. A plugin only ever sees
    /// that event behind `&`, so `raw_data` cannot change under the flag;
    /// clones and events made with [`Event::new`] are checked.
    checked_by_host: bool,
}

/// A clone is checked again when needed: its `raw_data` may be changed.
impl Clone for Event {
    fn clone(&self) -> Self {
        Event::new(
            self.id.clone(),
            self.event_type.clone(),
            self.tenant.clone(),
            self.occurred_at_ms,
            self.occurred_at.clone(),
            self.raw_data.clone(),
        )
    }
}

impl Event {
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<String>,
        tenant: impl Into<String>,
        occurred_at_ms: u64,
        occurred_at: impl Into<String>,
        raw_data: impl Into<String>,
    ) -> Self {
        Event {
            id: id.into(),
            event_type: event_type.into(),
            tenant: tenant.into(),
            occurred_at: occurred_at.into(),
            occurred_at_ms,
            raw_data: raw_data.into(),
            parsed: OnceCell::new(),
            raw: OnceCell::new(),
            fields: OnceCell::new(),
            checked_by_host: false,
        }
    }

    /// The data as a raw JSON value, to embed in a body *without* parsing it
    /// into a [`Value`] (the cheapest way to forward it byte for byte):
    /// `#[derive(Serialize)] struct Body<'a> { data: &'a RawValue, … }`.
    /// The data the engine passes in is not scanned again here.
    pub fn raw(&self) -> Result<&RawValue> {
        if let Some(r) = self.raw.get() {
            return Ok(r);
        }
        let r = if self.checked_by_host {
            // SAFETY: the engine passes a single well-formed JSON value with
            // no surrounding whitespace (the `data` field's contract in
            // `wit/plugin.wit`), and `raw_data` cannot have changed since
            // (see `checked_by_host`).
            unsafe { RawValue::from_string_unchecked(self.raw_data.clone()) }
        } else {
            RawValue::from_string(self.raw_data.clone()).context("event data")?
        };
        Ok(self.raw.get_or_init(|| r))
    }

    /// One top-level field of the data, parsed on its own: the other fields
    /// are skimmed, not built, so this is much cheaper than [`Event::data`]
    /// when a plugin needs only a few fields. The data is skimmed once,
    /// however many fields are read.
    pub fn field(&self, name: &str) -> Result<Option<Value>> {
        if let Some(v) = self.parsed.get() {
            return Ok(v.get(name).cloned());
        }
        let fields = match self.fields.get() {
            Some(f) => f,
            None => {
                let map = if self.checked_by_host {
                    members_of_checked(&self.raw_data)
                } else {
                    members_checking(&self.raw_data)?
                };
                self.fields.get_or_init(|| map)
            }
        };
        // The last of repeated keys wins, as in `data()`.
        match fields.iter().rev().find(|(k, _)| k == name) {
            Some((_, range)) => Ok(Some(serde_json::from_str(&self.raw_data[range.clone()])?)),
            None => Ok(None),
        }
    }

    /// The data, parsed on first use (key order and number digits preserved).
    pub fn data(&self) -> Result<&Value> {
        if let Some(v) = self.parsed.get() {
            return Ok(v);
        }
        let v: Value = serde_json::from_str(&self.raw_data).context("event data")?;
        Ok(self.parsed.get_or_init(|| v))
    }
}

/// Top-level keys of the data and where their values sit in it; none when
/// the data is not an object.
type Members = Vec<(String, std::ops::Range<usize>)>;

/// [`Members`] of data known to be well formed (the engine's own event),
/// found by `gjson`, which skips values without checking them: two to three
/// times faster than a checking skim, which was most of a plugin call on
/// larger payloads (measured at 64 KiB).
fn members_of_checked(data: &str) -> Members {
    let top = gjson::parse(data);
    if top.kind() != gjson::Kind::Object {
        return Vec::new();
    }
    let base = data.as_ptr() as usize;
    let mut out = Vec::new();
    top.each(|key, value| {
        // Values of a parsed text are slices of it.
        let start = value.json().as_ptr() as usize - base;
        out.push((key.str().to_owned(), start..start + value.json().len()));
        true
    });
    out
}

/// [`Members`] of data not known to be well formed, checked first (an
/// error for malformed data).
fn members_checking(data: &str) -> Result<Members> {
    serde_json::from_str::<&RawValue>(data).context("event data")?;
    Ok(members_of_checked(data))
}

/// The webhook the event goes to.
#[derive(Debug, Clone, Default)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// The webhook's `plugin_config` (`Value::Null` when unset).
    pub config: Value,
    pub metadata: BTreeMap<String, String>,
}

impl Webhook {
    /// A string from the config, or `default`.
    pub fn config_str<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.config
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
    }
}

/// This attempt.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// The same for every attempt; receivers deduplicate on it.
    pub id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Unix seconds.
    pub timestamp: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
}

/// Everything a plugin gets for one attempt.
#[derive(Debug, Clone)]
pub struct Input {
    pub event: Event,
    pub webhook: Webhook,
    pub delivery: Delivery,
}

impl Input {
    /// An input for unit tests: the given event type and data, placeholder ids
    /// and times (`evt_test`, `dlv_test`, attempt 1, 2026-01-01T00:00:00.000Z).
    pub fn test(event_type: &str, data: Value) -> Input {
        Input {
            event: Event::new(
                "evt_test",
                event_type,
                "tenant_test",
                1_767_225_600_000,
                "2026-01-01T00:00:00.000Z",
                data.to_string(),
            ),
            webhook: Webhook {
                id: "wh_test".into(),
                url: "https://example.com/hook".into(),
                ..Webhook::default()
            },
            delivery: Delivery {
                id: "dlv_test".into(),
                attempt: 1,
                timestamp: 1_767_225_600,
                time: "2026-01-01T00:00:00.000Z".into(),
            },
        }
    }

    /// The same input with this webhook config.
    pub fn with_config(mut self, config: Value) -> Input {
        self.webhook.config = config;
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// How the engine turns the webhook secret into the HMAC key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// The secret's UTF-8 bytes (Node's `createHmac('sha256', secret)`).
    Utf8,
    /// Standard Webhooks: base64-decode what follows `whsec_`.
    StandardWebhooks,
}

/// What the engine signs.
#[derive(Clone, Debug, PartialEq)]
pub enum SignedContent {
    Body,
    Bytes(Vec<u8>),
    /// `{delivery id}.{timestamp}.{body}`.
    StandardWebhooks,
}

/// Where and how the engine writes the HMAC-SHA256 signature.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub header: String,
    pub prefix: String,
    pub encoding: Encoding,
    pub key: KeyFormat,
    pub content: SignedContent,
    pub rotation_separator: Option<String>,
}

impl Signature {
    /// Hex HMAC-SHA256 of the body with the secret's UTF-8 bytes, in `header`.
    pub fn hmac_sha256_hex(header: &str) -> Signature {
        Signature {
            header: header.into(),
            prefix: String::new(),
            encoding: Encoding::Hex,
            key: KeyFormat::Utf8,
            content: SignedContent::Body,
            rotation_separator: None,
        }
    }

    /// The Standard Webhooks signature: `webhook-signature: v1,<base64>` over
    /// `{id}.{timestamp}.{body}`, one per live secret, space-separated.
    pub fn standard_webhooks() -> Signature {
        Signature {
            header: "webhook-signature".into(),
            prefix: "v1,".into(),
            encoding: Encoding::Base64,
            key: KeyFormat::StandardWebhooks,
            content: SignedContent::StandardWebhooks,
            rotation_separator: Some(" ".into()),
        }
    }

    /// Text written before the signature, e.g. `sha256=`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }

    pub fn base64(mut self) -> Self {
        self.encoding = Encoding::Base64;
        self
    }

    /// Sign these bytes instead of the body.
    pub fn over(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.content = SignedContent::Bytes(bytes.into());
        self
    }

    pub fn key(mut self, key: KeyFormat) -> Self {
        self.key = key;
        self
    }
}

/// The request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub body: Vec<u8>,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub signature: Option<Signature>,
}

impl Request {
    pub fn new(body: impl Into<Vec<u8>>, content_type: &str) -> Request {
        Request {
            body: body.into(),
            content_type: content_type.into(),
            headers: Vec::new(),
            signature: None,
        }
    }

    /// A compact JSON body (`application/json`), keys in insertion order.
    pub fn json(value: &impl serde::Serialize) -> Result<Request> {
        Ok(Request::new(serde_json::to_vec(value)?, "application/json"))
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn sign(mut self, signature: Signature) -> Self {
        self.signature = Some(signature);
        self
    }

    /// The body as text (for tests).
    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<binary>")
    }

    /// A header's value, if set (for tests; case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Deliver,
    Skip(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Deliver(Request),
    Skip(String),
}

/// A plugin: an optional filter and a transform. The engine calls `filter`
/// first and `transform` only if it delivers; both see the same `Input`, so
/// the event data is parsed at most once.
pub trait Plugin {
    fn filter(_input: &Input) -> Result<Filter> {
        Ok(Filter::Deliver)
    }

    fn transform(input: &Input) -> Result<Request>;
}

/// Runs a plugin on an input the way the engine does (for unit tests).
pub fn run<P: Plugin>(input: &Input) -> Result<Decision> {
    match P::filter(input)? {
        Filter::Skip(reason) => Ok(Decision::Skip(reason)),
        Filter::Deliver => P::transform(input).map(Decision::Deliver),
    }
}

/// Writes to the engine's log, tagged with the tenant and plugin.
pub mod log {
    use crate::bindings::wasmhook::plugin::log::{Level, log};

    fn write(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        log(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = (level, log as fn(Level, &str));
            eprintln!("[plugin] {message}");
        }
    }

    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }
    pub fn info(message: &str) {
        write(Level::Info, message)
    }
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}

#[doc(hidden)]
pub fn __handle<P: Plugin>(
    event: wit::Event,
    webhook: wit::Webhook,
    delivery: wit::Delivery,
) -> std::result::Result<wit::Decision, wit::PluginError> {
    let input = Input {
        event: from_host(event),
        webhook: webhook_from_wit(webhook),
        delivery: delivery_from_wit(delivery),
    };
    decide::<P>(&input)
}

/// `handle` for each target in turn, with one [`Event`] for all of them: its
/// data is parsed or skimmed at most once.
#[doc(hidden)]
pub fn __handle_many<P: Plugin>(
    event: wit::Event,
    targets: Vec<(wit::Webhook, wit::Delivery)>,
) -> Vec<std::result::Result<wit::Decision, wit::PluginError>> {
    let mut out = Vec::with_capacity(targets.len());
    let mut input = Input {
        event: from_host(event),
        webhook: Webhook::default(),
        delivery: Delivery::default(),
    };
    for (webhook, delivery) in targets {
        input.webhook = webhook_from_wit(webhook);
        input.delivery = delivery_from_wit(delivery);
        out.push(decide::<P>(&input));
    }
    out
}

/// The event the engine passed in (its data checked when it was accepted).
fn from_host(event: wit::Event) -> Event {
    Event {
        checked_by_host: true,
        ..Event::new(
            event.id,
            event.event_type,
            event.tenant,
            event.occurred_at_ms,
            event.occurred_at,
            event.data,
        )
    }
}

fn webhook_from_wit(webhook: wit::Webhook) -> Webhook {
    Webhook {
        id: webhook.id,
        url: webhook.url,
        config: serde_json::from_str(&webhook.config).unwrap_or(Value::Null),
        metadata: webhook.metadata.into_iter().collect(),
    }
}

fn delivery_from_wit(delivery: wit::Delivery) -> Delivery {
    Delivery {
        id: delivery.id,
        attempt: delivery.attempt,
        timestamp: delivery.timestamp,
        time: delivery.time,
    }
}

fn decide<P: Plugin>(input: &Input) -> std::result::Result<wit::Decision, wit::PluginError> {
    match run::<P>(input) {
        Ok(Decision::Skip(reason)) => Ok(wit::Decision::Skip(reason)),
        Ok(Decision::Deliver(r)) => Ok(wit::Decision::Deliver(to_wit(r))),
        Err(e) => Err(wit::PluginError { message: e.0 }),
    }
}

fn to_wit(r: Request) -> wit::Request {
    wit::Request {
        body: r.body,
        content_type: r.content_type,
        headers: r.headers,
        signature: r.signature.map(|s| wit::Signature {
            header: s.header,
            prefix: s.prefix,
            encoding: match s.encoding {
                Encoding::Hex => wit::Encoding::Hex,
                Encoding::Base64 => wit::Encoding::Base64,
            },
            key: match s.key {
                KeyFormat::Utf8 => wit::KeyFormat::Utf8,
                KeyFormat::StandardWebhooks => wit::KeyFormat::StandardWebhooks,
            },
            content: match s.content {
                SignedContent::Body => wit::SignedContent::Body,
                SignedContent::Bytes(b) => wit::SignedContent::Bytes(b),
                SignedContent::StandardWebhooks => wit::SignedContent::StandardWebhooks,
            },
            rotation_separator: s.rotation_separator,
        }),
    }
}

/// Exports a [`Plugin`] implementation as the component's `shape`
/// (`handle`) and `batch` (`handle-many`: the same decisions, for several
/// webhooks of one event) interfaces.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __WasmhookGuest;

        impl $crate::bindings::exports::wasmhook::plugin::shape::Guest for __WasmhookGuest {
            fn handle(
                event: $crate::bindings::wasmhook::plugin::types::Event,
                webhook: $crate::bindings::wasmhook::plugin::types::Webhook,
                delivery: $crate::bindings::wasmhook::plugin::types::Delivery,
            ) -> ::std::result::Result<
                $crate::bindings::wasmhook::plugin::types::Decision,
                $crate::bindings::wasmhook::plugin::types::PluginError,
            > {
                $crate::__handle::<$plugin>(event, webhook, delivery)
            }
        }

        impl $crate::bindings::exports::wasmhook::plugin::batch::Guest for __WasmhookGuest {
            fn handle_many(
                event: $crate::bindings::wasmhook::plugin::types::Event,
                targets: ::std::vec::Vec<(
                    $crate::bindings::wasmhook::plugin::types::Webhook,
                    $crate::bindings::wasmhook::plugin::types::Delivery,
                )>,
            ) -> ::std::vec::Vec<
                ::std::result::Result<
                    $crate::bindings::wasmhook::plugin::types::Decision,
                    $crate::bindings::wasmhook::plugin::types::PluginError,
                >,
            > {
                $crate::__handle_many::<$plugin>(event, targets)
            }
        }

        // Only a component has these exports: interface export names
        // (`wasmhook:plugin/batch@…`) are not symbols a native library may
        // export, and native builds (the plugin's unit tests) need none.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export!(__WasmhookGuest with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_and_raw_read_without_building_the_whole_value() {
        let mut input = Input::test("a", json!({}));
        input.event.raw_data =
            r#"{"id": 12345678901234567890, "nested": {"x": [1, 2.50]}, "s": "é\"", "id2": null}"#
                .into();
        let e = &input.event;
        assert_eq!(e.field("s").unwrap(), Some(json!("é\"")));
        assert_eq!(
            e.field("nested").unwrap().unwrap().to_string(),
            r#"{"x":[1,2.50]}"#
        );
        assert_eq!(
            e.field("id").unwrap().unwrap().to_string(),
            "12345678901234567890"
        );
        assert_eq!(e.field("missing").unwrap(), None);
        assert_eq!(e.raw().unwrap().get(), e.raw_data);
        // After a full parse, field reads from it.
        e.data().unwrap();
        assert_eq!(e.field("id2").unwrap(), Some(Value::Null));
    }

    /// The engine's own event is skimmed without a check (gjson): every
    /// member must read exactly as a full parse reads it, on text that
    /// tries to confuse a skimmer.
    #[test]
    fn the_unchecked_skim_reads_what_a_full_parse_reads() {
        let texts = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#" { "a" : 1 ,
                "b" : [ 1 , { "c" : "}" } ] , "d":{"e":{"f":[[],{}]}} } "#,
            r#"{"s":"a \"quoted\" } ] , : { [ value","t":"ends in a backslash \\","u":"\\\""}"#,
            r#"{"k\"ey":1,"\u00e9t\u00e9":"\u00e9","\ud83d\ude00":"😀","é":2,"":3}"#,
            r#"{"n":-12.5e+3,"big":12345678901234567890123,"z":0,"t":true,"f":false,"null":null}"#,
            r#"{"k":1,"other":[],"k":{"nested":"last wins"}}"#,
            r#"{"lines":[{"sku":"SKU-00001","qty":2,"price":19.99},{"sku":"SKU-00002","qty":2,"price":19.99}],"id":"inv_1"}"#,
        ];
        for text in texts {
            let mut event = Event {
                checked_by_host: true,
                ..Input::test("a", json!({})).event
            };
            event.raw_data = text.trim().to_owned();
            let full: Value = serde_json::from_str(text).unwrap();
            let full = full.as_object().unwrap();
            for (key, value) in full {
                assert_eq!(
                    event.field(key).unwrap().as_ref(),
                    Some(value),
                    "{key} in {text}"
                );
            }
            assert_eq!(event.field("missing").unwrap(), None, "{text}");
            assert_eq!(
                members_of_checked(&event.raw_data).len(),
                members_checking(&event.raw_data).unwrap().len()
            );
        }
    }

    #[test]
    fn data_that_is_not_an_object_has_no_fields() {
        for text in [r#"[{"a":1}]"#, r#""a""#, "12", "null"] {
            let checked = Event {
                checked_by_host: true,
                raw_data: text.into(),
                ..Input::test("a", json!({})).event
            };
            let mut unchecked = Input::test("a", json!({})).event;
            unchecked.raw_data = text.into();
            assert_eq!(checked.field("a").unwrap(), None, "{text}");
            assert_eq!(unchecked.field("a").unwrap(), None, "{text}");
            assert_eq!(checked.data().unwrap().get("a"), None, "{text}");
        }
    }

    /// A plugin whose decision depends on the webhook and the delivery.
    struct PerTarget;

    impl Plugin for PerTarget {
        fn filter(input: &Input) -> Result<Filter> {
            Ok(match input.webhook.config_str("skip", "") {
                "" => Filter::Deliver,
                reason => Filter::Skip(reason.into()),
            })
        }

        fn transform(input: &Input) -> Result<Request> {
            if input.webhook.config_str("fail", "") == "yes" {
                return Err("asked to fail".into());
            }
            let n = input.event.field("n")?;
            let body = json!({"hook": input.webhook.id, "delivery": input.delivery.id, "n": n});
            Request::json(&body)
        }
    }

    /// `handle-many` gives, in order, exactly what `handle` gives for each
    /// target, though the targets share one event.
    #[test]
    fn handle_many_decides_as_handle_does_for_each_target() {
        let event = wit::Event {
            id: "evt_1".into(),
            event_type: "invoice.paid".into(),
            tenant: "t".into(),
            occurred_at: "2026-11-23T20:00:00.000Z".into(),
            occurred_at_ms: 1_795_464_000_000,
            data: r#"{"n":1}"#.into(),
        };
        let target = |hook: &str, config: &str| {
            let webhook = wit::Webhook {
                id: hook.into(),
                url: "https://example.com".into(),
                config: config.into(),
                metadata: Vec::new(),
            };
            let delivery = wit::Delivery {
                id: format!("dlv_{hook}"),
                attempt: 1,
                timestamp: 1_795_464_000,
                time: "2026-11-23T20:00:00.000Z".into(),
            };
            (webhook, delivery)
        };
        let targets = vec![
            target("a", "null"),
            target("b", r#"{"skip":"not for b"}"#),
            target("c", r#"{"fail":"yes"}"#),
            target("d", "{}"),
        ];
        let one_by_one: Vec<String> = targets
            .iter()
            .map(|(w, d)| {
                format!(
                    "{:?}",
                    __handle::<PerTarget>(event.clone(), w.clone(), d.clone())
                )
            })
            .collect();
        let results = __handle_many::<PerTarget>(event, targets);
        let shared: Vec<String> = results.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(shared, one_by_one);
        let body = |i: usize| match &results[i] {
            Ok(wit::Decision::Deliver(r)) => serde_json::from_slice::<Value>(&r.body).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(body(0), json!({"hook": "a", "delivery": "dlv_a", "n": 1}));
        assert_eq!(body(3), json!({"hook": "d", "delivery": "dlv_d", "n": 1}));
        assert!(shared[1].contains("not for b"), "{shared:?}");
        assert!(shared[2].contains("asked to fail"), "{shared:?}");
    }

    #[test]
    fn repeated_keys_read_the_last_like_data_does() {
        let mut input = Input::test("a", json!({}));
        input.event.raw_data = r#"{"k": 1, "other": [], "k": 2}"#.into();
        assert_eq!(input.event.field("k").unwrap(), Some(json!(2)));
        assert_eq!(input.event.data().unwrap()["k"], json!(2));
    }

    #[test]
    fn only_the_engines_own_event_skips_the_check() {
        let from_host = Event {
            checked_by_host: true,
            ..Input::test("a", json!({"n": 1})).event
        };
        assert_eq!(from_host.raw().unwrap().get(), r#"{"n":1}"#);
        // A clone may be changed, so it is checked again.
        let mut copy = from_host.clone();
        copy.raw_data = "{oops".into();
        assert!(copy.raw().unwrap_err().0.starts_with("event data"));
        assert!(copy.field("n").is_err());
    }

    #[test]
    fn bad_data_is_an_error_with_context() {
        let mut input = Input::test("a", json!({}));
        input.event.raw_data = "{oops".into();
        assert!(
            input
                .event
                .field("x")
                .unwrap_err()
                .0
                .starts_with("event data")
        );
        assert!(input.event.data().is_err());
    }
}
