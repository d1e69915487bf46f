//! What shaping a delivery produces, in plain Rust: the request the native
//! default format or a plugin decided on (before the core checks, signs
//! and sends it), how it is to be signed, and the attempt it is shaped
//! for. Owned here, with the plugin host that makes these from a plugin's
//! answer; delivery imports them, never the reverse.

use bytes::Bytes;
use std::borrow::Cow;

/// Text the default format fills with constants (no allocation per
/// delivery) and a plugin with its own strings. Borrowed text is taken
/// without checks (`HeaderName::from_static`, `HeaderValue::from_static`),
/// so a borrowed header name must be lowercase and valid, and a borrowed
/// content type a valid header value; only the engine's own code makes
/// borrowed text.
pub type Text = Cow<'static, str>;

/// What shaping a delivery decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Shaped {
    Deliver(OutRequest),
    Skip(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutRequest {
    /// Shared, not copied, when several deliveries send the same bytes
    /// (the default format's envelope of one event).
    pub body: Bytes,
    pub content_type: Text,
    pub headers: Vec<(Text, String)>,
    pub signature: Option<SignSpec>,
}

/// How the core signs (see `wit/plugin.wit`, record `signature`).
#[derive(Clone, Debug, PartialEq)]
pub struct SignSpec {
    pub header: Text,
    pub prefix: Text,
    pub encoding: SigEncoding,
    pub key: KeyFormat,
    pub content: SignedContent,
    pub rotation_separator: Option<Text>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigEncoding {
    Hex,
    Base64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    Utf8,
    StandardWebhooks,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SignedContent {
    Body,
    Bytes(Vec<u8>),
    StandardWebhooks,
}

/// The attempt being shaped.
#[derive(Clone, Debug)]
pub struct AttemptContext {
    pub delivery_id: String,
    pub attempt: u32,
    /// Unix seconds; what `standard-webhooks` content signs.
    pub timestamp: u64,
    /// The same instant in milliseconds (see [`AttemptContext::time`]).
    at_ms: u64,
}

impl AttemptContext {
    pub fn new(delivery_id: &str, attempt: u32, now_ms: u64) -> Self {
        AttemptContext {
            delivery_id: delivery_id.to_owned(),
            attempt,
            timestamp: now_ms / 1000,
            at_ms: now_ms,
        }
    }

    /// The attempt's instant in Unix milliseconds.
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }

    /// The attempt's instant in RFC 3339 with milliseconds, as plugins see
    /// it; made on demand, since the default format does not use it.
    pub fn time(&self) -> String {
        crate::clock::rfc3339_ms(self.at_ms)
    }
}
