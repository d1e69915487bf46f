//! Black-box tests of the whole engine: real engine, real loopback receivers,
//! real plugin components built from `plugins/`.

mod harness;

mod api_errors;
mod contract;
mod delivery;
mod devkit;
mod durability;
mod formats;
mod hostile;
mod limits;
mod lists;
mod ops;
mod pause;
mod plugin_ops;
mod plugins;
mod redis_scale;
mod redis_server;
mod replay;
mod retries;
mod sandbox;
mod tenancy;

/// Not a test of its own: when `WH_TEST_CHILD` is set (not a `WASMHOOK_` name, which the config would refuse), this test binary
/// runs an engine configured from `WASMHOOK_*` variables until it is killed.
/// Tests that must SIGKILL an engine start the binary again this way.
#[test]
fn child_engine() {
    if std::env::var_os("WH_TEST_CHILD").is_none() {
        return;
    }
    let settings = wasmhook::config::Settings::load(None).expect("child engine settings");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .unwrap();
            wasmhook::run(settings, listener, std::future::pending())
                .await
                .unwrap();
        });
}
