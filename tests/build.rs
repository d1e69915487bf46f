//! Builds the plugins in `plugins/` for `wasm32-wasip2` so tests use real
//! components compiled from source, never committed binaries. Their paths are
//! exported as constants (see `lib.rs`).

use std::path::PathBuf;
use std::process::Command;

const PLUGINS: &[&str] = &[
    "standard-webhooks",
    "lawfirm",
    "gestiqcloud",
    "jossiedb",
    "esign",
    "corp-astro",
    "chaos",
    "handle-only",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // A target dir of its own: the outer cargo holds the lock on `target/debug`.
    let target_dir = root.join("target").join("plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root.join("plugins"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .status()
        .expect("running cargo to build the plugins");
    assert!(
        status.success(),
        "building plugins/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
    let mut consts = String::new();
    for name in PLUGINS {
        let file = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        assert!(file.exists(), "{} was not built", file.display());
        consts.push_str(&format!(
            "pub const {}: &str = {:?};\n",
            name.replace('-', "_").to_uppercase(),
            file.display().to_string()
        ));
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("plugins.rs");
    std::fs::write(out, consts).unwrap();
}
