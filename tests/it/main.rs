//! Black-box tests of the whole engine: real engine, real loopback receivers,
//! real plugin components built from `plugins/`.

mod harness;

mod api_errors;
mod delivery;
mod devkit;
mod durability;
mod formats;
mod plugins;
mod retries;
mod tenancy;
