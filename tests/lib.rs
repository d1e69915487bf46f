//! Paths of the plugin components built from `plugins/` by `build.rs`.

pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}
