//! Jobs: the engine's periodic tasks, each named, on a cron schedule
//! (`job_*_cron`, UTC), and runnable by hand (`POST /api/admin/jobs/{name}/run`,
//! `wasmhook jobs run NAME`).
//!
//! - `cleanup`: retention (`Store::sweep`).
//! - `health`: disables failing webhooks ([`health`]).
//! - `plugin-unload`: unloads plugin versions nobody called for a while.
//! - `plugin-cache-prune`: removes compiled plugins on disk that no current
//!   plugin version uses.
//!
//! Owns: when jobs run and what their last runs were. Invariants: a job
//! runs once at a time in this process; with Redis, once at a time across
//! engines (a lease in the store) and each scheduled time is run by one
//! engine only (the first to claim it); every run is recorded in the store,
//! so any engine reports the last one. What may happen twice: a run whose
//! engine died keeps its lease until [`LEASE`] passes; a job running longer
//! than that may overlap the next run. Every job is safe to repeat.

pub mod health;

use crate::App;
use crate::clock::{now_ms, rfc3339_ms};
use crate::metrics::JobLabel;
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How long a run holds its job's lease at most.
pub const LEASE: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Cleanup,
    Health,
    PluginUnload,
    PluginCachePrune,
}

impl Job {
    pub const ALL: [Job; 4] = [
        Job::Cleanup,
        Job::Health,
        Job::PluginUnload,
        Job::PluginCachePrune,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Job::Cleanup => "cleanup",
            Job::Health => "health",
            Job::PluginUnload => "plugin-unload",
            Job::PluginCachePrune => "plugin-cache-prune",
        }
    }

    pub fn parse(name: &str) -> Option<Job> {
        Job::ALL.into_iter().find(|j| j.name() == name)
    }

    fn index(self) -> usize {
        Job::ALL.iter().position(|j| *j == self).expect("listed")
    }

    /// Its schedule in `app`'s settings.
    pub fn schedule(self, app: &App) -> &croner::Cron {
        let s = &app.settings.jobs;
        match self {
            Job::Cleanup => &s.cleanup,
            Job::Health => &s.health,
            Job::PluginUnload => &s.plugin_unload,
            Job::PluginCachePrune => &s.plugin_cache_prune,
        }
    }
}

/// How a run was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Started {
    Schedule,
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
}

/// One run of a job, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRun {
    pub started_at_ms: u64,
    pub duration_ms: u64,
    pub outcome: Outcome,
    /// What it did, or why it failed.
    pub detail: String,
    pub started: Started,
    /// The engine that ran it.
    pub engine: String,
}

impl JobRun {
    pub fn view(&self) -> Value {
        json!({
            "started_at": rfc3339_ms(self.started_at_ms),
            "duration_ms": self.duration_ms,
            "outcome": self.outcome,
            "detail": self.detail,
            "started": self.started,
            "engine": self.engine,
        })
    }
}

/// Why a job did not run.
#[derive(Debug, thiserror::Error)]
pub enum NotRun {
    #[error("job {0} is running now; try again when it ends")]
    Busy(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The jobs of one engine: which run here now, and this engine's name.
pub struct Jobs {
    engine: String,
    running: [tokio::sync::Mutex<()>; 4],
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            engine: format!(
                "{}-{}",
                std::process::id(),
                crate::ids::EventId::generate()
                    .as_str()
                    .trim_start_matches("evt_")
            ),
            running: Default::default(),
        }
    }
}

impl Jobs {
    /// Runs `job` now, unless it is running (here, or elsewhere with
    /// Redis), and records the run.
    pub async fn run(&self, app: &App, job: Job, started: Started) -> Result<JobRun, NotRun> {
        let Ok(_here) = self.running[job.index()].try_lock() else {
            return Err(NotRun::Busy(job.name()));
        };
        let until = now_ms() + LEASE.as_millis() as u64;
        if !app
            .store
            .take_job_lease(job.name(), &self.engine, until)
            .await?
        {
            return Err(NotRun::Busy(job.name()));
        }
        let started_at_ms = now_ms();
        let clock = std::time::Instant::now();
        let done = perform(app, job).await;
        let (outcome, detail) = match done {
            Ok(detail) => (Outcome::Ok, detail),
            Err(e) => (Outcome::Failed, e),
        };
        let run = JobRun {
            started_at_ms,
            duration_ms: clock.elapsed().as_millis() as u64,
            outcome,
            detail,
            started,
            engine: self.engine.clone(),
        };
        match run.outcome {
            Outcome::Ok => tracing::info!(job = job.name(), detail = %run.detail, "job ran"),
            Outcome::Failed => tracing::warn!(job = job.name(), error = %run.detail, "job failed"),
        }
        count(app, job, run.outcome.as_str());
        let recorded = app.store.put_job_run(job.name(), &run).await;
        app.store
            .release_job_lease(job.name(), &self.engine)
            .await?;
        recorded?;
        Ok(run)
    }

    /// Every job with its schedule, next run and last run.
    pub async fn list(&self, app: &App) -> Result<Vec<Value>, StoreError> {
        let runs = app.store.job_runs().await?;
        let now = now_ms();
        Ok(Job::ALL
            .into_iter()
            .map(|job| {
                let last = runs.iter().find(|(name, _)| name == job.name());
                json!({
                    "name": job.name(),
                    "schedule": job.schedule(app).pattern.to_string(),
                    "next_run": next_after(job.schedule(app), now).map(rfc3339_ms),
                    "running_here": self.running[job.index()].try_lock().is_err(),
                    "last_run": last.map(|(_, run)| run.view()),
                })
            })
            .collect())
    }
}

fn count(app: &App, job: Job, outcome: &'static str) {
    app.metrics
        .job_runs
        .get_or_create(&JobLabel {
            job: job.name(),
            outcome,
        })
        .inc();
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

/// Does the job's work; what it did, or why it failed.
async fn perform(app: &App, job: Job) -> Result<String, String> {
    let now = now_ms();
    match job {
        Job::Cleanup => app
            .store
            .sweep(now)
            .await
            .map(|removed| format!("removed {removed} records past retention"))
            .map_err(|e| e.to_string()),
        Job::Health => health::run(app, now)
            .await
            .map(|report| report.to_string())
            .map_err(|e| e.to_string()),
        Job::PluginUnload => {
            let gone = app.plugins.unload_idle(now);
            Ok(format!("unloaded {gone} idle plugin versions"))
        }
        Job::PluginCachePrune => {
            let mut keep = std::collections::HashSet::new();
            for tenant in app.store.list_tenants().await.map_err(|e| e.to_string())? {
                for p in app
                    .store
                    .list_plugins(&tenant.id)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    keep.insert(p.sha256);
                }
            }
            let plugins = app.plugins.clone();
            let removed = tokio::task::spawn_blocking(move || plugins.prune_disk_cache(&keep))
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "removed {removed} compiled plugins no current version uses"
            ))
        }
    }
}

/// The first time after `now_ms` the schedule names.
pub fn next_after(cron: &croner::Cron, now_ms: u64) -> Option<u64> {
    use chrono::TimeZone;
    let now = chrono::Utc.timestamp_millis_opt(now_ms as i64).single()?;
    let next = cron.find_next_occurrence(&now, false).ok()?;
    u64::try_from(next.timestamp_millis()).ok()
}

/// Runs `job` at every time its schedule names until `stop`: each time is
/// claimed in the store first, so with several engines on one Redis only
/// the first to claim it runs it.
pub async fn run_on_schedule(app: Arc<App>, job: Job, mut stop: crate::Shutdown) {
    loop {
        let now = now_ms();
        let Some(at) = next_after(job.schedule(&app), now) else {
            tracing::warn!(
                job = job.name(),
                "its schedule names no future time; it runs only by hand"
            );
            return;
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))) => {}
        }
        match app.store.claim_job_time(job.name(), at).await {
            Ok(true) => {}
            Ok(false) => {
                count(&app, job, "skipped");
                continue;
            }
            Err(e) => {
                tracing::warn!(job = job.name(), error = %e, "cannot claim a job's scheduled run");
                continue;
            }
        }
        match app.jobs.run(&app, job, Started::Schedule).await {
            Ok(_) => {}
            Err(NotRun::Busy(_)) => count(&app, job, "skipped"),
            Err(NotRun::Store(e)) => {
                tracing::warn!(job = job.name(), error = %e, "job could not run")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_schedules_come_round_when_they_say() {
        let daily = crate::config::parse_cron("0 2 * * *").unwrap();
        // 2025-12-04T10:00:00Z → the next day at 02:00.
        let now = 1_764_842_400_000;
        assert_eq!(
            rfc3339_ms(next_after(&daily, now).unwrap()),
            "2025-12-05T02:00:00.000Z"
        );
        let six_hourly = crate::config::parse_cron("0 */6 * * *").unwrap();
        assert_eq!(
            rfc3339_ms(next_after(&six_hourly, now).unwrap()),
            "2025-12-04T12:00:00.000Z"
        );
        let seconds = crate::config::parse_cron("*/30 * * * * *").unwrap();
        assert_eq!(next_after(&seconds, now), Some(now + 30_000));
    }

    #[test]
    fn names_parse_back() {
        for job in Job::ALL {
            assert_eq!(Job::parse(job.name()), Some(job));
        }
        assert_eq!(Job::parse("nope"), None);
    }
}
