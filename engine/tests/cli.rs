//! The `wasmhook jobs` commands, run as the binary against a running engine.

use std::process::{Command, Output};
use wasmhook::config::Settings;

const TOKEN: &str = "cli-test-admin-token-0123";

async fn wasmhook(args: &[&str], token: &str) -> Output {
    let (args, token): (Vec<String>, String) =
        (args.iter().map(|a| a.to_string()).collect(), token.into());
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_wasmhook"))
            .args(&args)
            .env("WASMHOOK_ADMIN_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn jobs_list_and_run_against_a_running_engine() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::for_tests(dir.path().to_path_buf(), TOKEN);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = tokio::spawn(wasmhook::run(settings, listener, async {
        let _ = stopped.await;
    }));

    let out = wasmhook(&["jobs", "--url", &url, "run", "health"], TOKEN).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("health: ok in "), "{stdout}");
    assert!(
        stdout.contains("checked 0 active webhooks, disabled 0"),
        "{stdout}"
    );

    let out = wasmhook(&["jobs", "--url", &url, "list"], TOKEN).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("JOB"), "{stdout}");
    assert!(
        lines[1].starts_with("cleanup") && lines[1].contains("0 2 * * *"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("health") && lines[2].contains(" ok "),
        "{stdout}"
    );
    assert_eq!(lines.len(), 5, "{stdout}");

    let out = wasmhook(&["jobs", "--url", &url, "run", "nope"], TOKEN).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("404") && stderr.contains("no job named"),
        "{stderr}"
    );

    let out = wasmhook(&["jobs", "--url", &url, "list"], "not-the-token-at-all").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains("not-the-token-at-all"), "{stderr}");

    let _ = stop.send(());
    engine.await.unwrap().unwrap();
}
