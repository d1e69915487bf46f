//! The plugin developer kit: `plugin new` scaffolds a crate that builds,
//! passes its own tests and runs under `plugin test`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;
use std::process::Command;
use wasmhook::devkit::{DevkitError, TestOutcome, scaffold, test_plugin};
use wasmhook_tests::plugins;

fn cargo(dir: &Path, args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(env!("CARGO"))
        .current_dir(dir)
        .args(args)
        .arg("--target-dir")
        .arg(root.join("target").join("devkit"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo {args:?} failed in the scaffolded plugin"
    );
}

#[test]
fn scaffolded_plugin_builds_tests_and_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("billing-format");
    scaffold("billing-format", &dir, &root.join("sdk")).unwrap();
    assert!(
        scaffold("billing-format", &dir, &root.join("sdk")).is_err(),
        "refuses to overwrite"
    );
    assert!(scaffold("Bad Name", &tmp.path().join("x"), &root.join("sdk")).is_err());

    cargo(&dir, &["test", "--quiet"]);
    cargo(
        &dir,
        &["build", "--quiet", "--release", "--target", "wasm32-wasip2"],
    );
    let wasm = root.join("target/devkit/wasm32-wasip2/release/billing_format.wasm");

    let TestOutcome::Request(text) = test_plugin(
        &wasm,
        &dir.join("event.json"),
        Some(&dir.join("webhook.json")),
    )
    .unwrap() else {
        panic!("the template skipped its sample event")
    };
    assert!(
        text.starts_with("POST /webhooks HTTP/1.1\r\nhost: receiver.example\r\n"),
        "{text}"
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(body.contains(r#""source":"billing""#), "{body}");
    let signature = head
        .lines()
        .find_map(|l| l.strip_prefix("x-signature: sha256="))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"my-webhook-secret-12345678").unwrap();
    mac.update(body.as_bytes());
    assert_eq!(signature, hex::encode(mac.finalize().into_bytes()));
}

#[test]
fn plugin_test_reports_skips_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let event = tmp.path().join("event.json");
    let webhook = tmp.path().join("webhook.json");
    std::fs::write(
        &event,
        r#"{"type": "low-stock-alert", "data": {"quantity": 9}}"#,
    )
    .unwrap();
    std::fs::write(
        &webhook,
        r#"{"plugin_config": {"filters": {"minStockThreshold": 5}}}"#,
    )
    .unwrap();
    let Ok(TestOutcome::Skipped(reason)) =
        test_plugin(Path::new(plugins::JOSSIEDB), &event, Some(&webhook))
    else {
        panic!("expected a skip")
    };
    assert!(reason.contains("minStockThreshold"));

    std::fs::write(
        &event,
        r#"{"type": "low-stock-alert", "data": {"item": 1}}"#,
    )
    .unwrap();
    let Err(DevkitError::Plugin(msg)) =
        test_plugin(Path::new(plugins::JOSSIEDB), &event, Some(&webhook))
    else {
        panic!("expected a plugin error")
    };
    assert!(msg.contains("no quantity"), "{msg}");

    std::fs::write(&event, r#"{"type": "x"}"#).unwrap();
    assert!(matches!(
        test_plugin(Path::new(plugins::JOSSIEDB), &event, None),
        Err(DevkitError::Input(_))
    ));
    assert!(matches!(
        test_plugin(Path::new("/nonexistent.wasm"), &event, None),
        Err(DevkitError::Input(_))
    ));
}
