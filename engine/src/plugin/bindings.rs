//! The one place the host bindings to the WIT world (`wit/plugin.wit`) are
//! generated, and the conversion of a plugin's decision into the engine's
//! request types. Nothing outside `plugin/` uses these types.

use self::wasmhook::plugin::types as wit;
use crate::plugin::request::{KeyFormat, OutRequest, Shaped, SigEncoding, SignSpec, SignedContent};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin-many",
});

use self::exports::wasmhook::plugin::{batch, shape};
use wasmtime::component::{Instance, InstancePre};

/// A component linked against the world, its exports looked up once: the
/// `shape` interface every plugin exports, and `batch` when it exports
/// that too (a component built for the `plugin` world alone does not).
pub struct PluginPre<T: 'static> {
    pre: InstancePre<T>,
    shape: shape::GuestIndices,
    batch: Option<batch::GuestIndices>,
}

/// One instance's exports, typed by the generated bindings.
pub struct Exports {
    pub shape: shape::Guest,
    pub batch: Option<batch::Guest>,
}

impl<T: 'static> PluginPre<T> {
    /// Fails if the component does not export `shape`.
    pub fn new(pre: InstancePre<T>) -> wasmtime::Result<Self> {
        let shape = shape::GuestIndices::new(&pre)?;
        let batch = batch::GuestIndices::new(&pre).ok();
        Ok(PluginPre { pre, shape, batch })
    }

    pub fn instance_pre(&self) -> &InstancePre<T> {
        &self.pre
    }

    /// True if the component exports `batch` (`handle-many`).
    pub fn shares_calls(&self) -> bool {
        self.batch.is_some()
    }

    /// The exports of `instance` (made from this), type-checked against
    /// the world: a component whose functions have other types fails here.
    pub fn exports(
        &self,
        mut store: impl wasmtime::AsContextMut<Data = T>,
        instance: &Instance,
    ) -> wasmtime::Result<Exports> {
        let shape = self.shape.load(&mut store, instance)?;
        let batch = match &self.batch {
            Some(batch) => Some(batch.load(&mut store, instance)?),
            None => None,
        };
        Ok(Exports { shape, batch })
    }
}

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
