//! `/api/admin/jobs`: the operator lists the engine's jobs and runs one now
//! (see [`crate::jobs`]). Admin token only.

use super::auth::Admin;
use super::error::{ApiError, ApiResult};
use crate::App;
use crate::jobs::{Job, NotRun, Started};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

/// `GET /api/admin/jobs`: each job, its schedule, next run and last run.
pub async fn jobs(_: Admin, State(app): State<Arc<App>>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(json!({ "data": app.jobs.list(&app).await? })))
}

/// `POST /api/admin/jobs/{name}/run`: runs the job now and answers its run
/// once it ends; `all` runs every job, one after another.
pub async fn run(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let jobs: Vec<Job> = match name.as_str() {
        "all" => Job::ALL.to_vec(),
        one => vec![Job::parse(one).ok_or_else(|| {
            let names: Vec<&str> = Job::ALL.iter().map(|j| j.name()).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no job named {one:?}; the jobs are {} (or all)",
                    names.join(", ")
                ),
            )
        })?],
    };
    let mut runs = Vec::with_capacity(jobs.len());
    for job in jobs {
        let run = app
            .jobs
            .run(&app, job, Started::Manual)
            .await
            .map_err(|e| match e {
                NotRun::Busy(_) => {
                    ApiError::new(StatusCode::CONFLICT, "job_running", e.to_string())
                }
                NotRun::Store(e) => e.into(),
            })?;
        let mut view = run.view();
        view["job"] = json!(job.name());
        runs.push(view);
    }
    Ok(axum::Json(json!({ "runs": runs })))
}
