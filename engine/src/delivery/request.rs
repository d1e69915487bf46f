//! The request the engine is about to send, in plain Rust: what the native
//! default format or a plugin produced, before the core checks, signs and
//! sends it.

/// What shaping a delivery decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Shaped {
    Deliver(OutRequest),
    Skip(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutRequest {
    pub body: Vec<u8>,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub signature: Option<SignSpec>,
}

/// How the core signs (see `wit/plugin.wit`, record `signature`).
#[derive(Clone, Debug, PartialEq)]
pub struct SignSpec {
    pub header: String,
    pub prefix: String,
    pub encoding: SigEncoding,
    pub key: KeyFormat,
    pub content: SignedContent,
    pub rotation_separator: Option<String>,
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
    /// The same instant in RFC 3339 with milliseconds.
    pub time: String,
}

impl AttemptContext {
    pub fn new(delivery_id: &str, attempt: u32, now_ms: u64) -> Self {
        AttemptContext {
            delivery_id: delivery_id.to_owned(),
            attempt,
            timestamp: now_ms / 1000,
            time: crate::clock::rfc3339_ms(now_ms),
        }
    }
}
