//! The `wasmhook jobs` commands: the admin API of a running engine, from the
//! command line (`GET /api/admin/jobs`, `POST /api/admin/jobs/{name}/run`).
//!
//! Owns: the request and how its answer is printed. The admin token goes
//! only in the `Authorization` header, never in what is printed.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Sends `method path` to the engine at `base` with the admin token; the
/// JSON answer, or an error saying what the engine said.
async fn call(base: &str, token: &str, method: &str, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let req = Request::builder()
        .method(method)
        .uri(&url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-length", "0")
        .body(Full::new(Bytes::new()))
        .with_context(|| format!("{url} is not a URL"))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the engine at {base}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = json["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("the engine answered {status}: {message}");
    }
    Ok(json)
}

/// `wasmhook jobs list`: one line per job.
pub async fn list_jobs(base: &str, token: &str) -> anyhow::Result<String> {
    let answer = call(base, token, "GET", "/api/admin/jobs").await?;
    let mut out = format!(
        "{:<20} {:<16} {:<26} {:<26} {:<8} {}\n",
        "JOB", "SCHEDULE", "NEXT RUN", "LAST RUN", "OUTCOME", "DETAIL"
    );
    for job in answer["data"].as_array().into_iter().flatten() {
        let last = &job["last_run"];
        out.push_str(&format!(
            "{:<20} {:<16} {:<26} {:<26} {:<8} {}\n",
            text(&job["name"]),
            text(&job["schedule"]),
            text(&job["next_run"]),
            text(&last["started_at"]),
            text(&last["outcome"]),
            text(&last["detail"]),
        ));
    }
    Ok(out)
}

/// `wasmhook jobs run NAME` (`all` for every job): one line per run; an
/// error if any run failed.
pub async fn run_job(base: &str, token: &str, name: &str) -> anyhow::Result<String> {
    let path = format!("/api/admin/jobs/{name}/run");
    let answer = call(base, token, "POST", &path).await?;
    let mut out = String::new();
    let mut failed = Vec::new();
    for run in answer["runs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}: {} in {} ms: {}\n",
            text(&run["job"]),
            text(&run["outcome"]),
            run["duration_ms"],
            text(&run["detail"]),
        ));
        if run["outcome"] != "ok" {
            failed.push(text(&run["job"]).to_owned());
        }
    }
    if !failed.is_empty() {
        bail!("{out}failed: {}", failed.join(", "));
    }
    Ok(out)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}
