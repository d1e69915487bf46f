//! The one place the host bindings to the WIT world (`wit/plugin.wit`) are
//! generated, and the conversion of a plugin's decision into the engine's
//! request types. Nothing outside `plugin/` uses these types.

use self::wasmhook::plugin::types as wit;
use crate::plugin::request::{KeyFormat, OutRequest, Shaped, SigEncoding, SignSpec, SignedContent};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use self::wasmhook::plugin::log::{Host as LogHost, Level};
pub use self::wasmhook::plugin::types::Host as TypesHost;

/// A plugin's decision as the engine's request types.
pub fn from_wit(decision: wit::Decision) -> Shaped {
    match decision {
        wit::Decision::Skip(reason) => Shaped::Skip(reason),
        wit::Decision::Deliver(r) => Shaped::Deliver(OutRequest {
            body: r.body.into(),
            content_type: r.content_type.into(),
            headers: r.headers.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            signature: r.signature.map(|s| SignSpec {
                header: s.header.into(),
                prefix: s.prefix.into(),
                encoding: match s.encoding {
                    wit::Encoding::Hex => SigEncoding::Hex,
                    wit::Encoding::Base64 => SigEncoding::Base64,
                },
                key: match s.key {
                    wit::KeyFormat::Utf8 => KeyFormat::Utf8,
                    wit::KeyFormat::StandardWebhooks => KeyFormat::StandardWebhooks,
                },
                content: match s.content {
                    wit::SignedContent::Body => SignedContent::Body,
                    wit::SignedContent::Bytes(b) => SignedContent::Bytes(b),
                    wit::SignedContent::StandardWebhooks => SignedContent::StandardWebhooks,
                },
                rotation_separator: s.rotation_separator.map(Into::into),
            }),
        }),
    }
}
