//! The one place the host bindings to the WIT world (`wit/plugin.wit`) are
//! generated. Nothing outside `plugin/` uses these types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use self::wasmhook::plugin::log::{Host as LogHost, Level};
pub use self::wasmhook::plugin::types::Host as TypesHost;
