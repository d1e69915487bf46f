//! `wasmhook-bench`: measures the engine on this machine against loopback
//! receivers, with a ceiling measured in the same run (a bare hyper client
//! sending the same requests to the same receiver), and prints Markdown
//! tables. `wasmhook-bench all` runs every scenario; see BENCHMARKS.md.

mod claims;
mod harness;
mod scenarios;

use clap::{Parser, Subcommand};

/// mimalloc: malloc/free were ~11 % of CPU samples under load with glibc's
/// allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Every scenario below.
    All {
        /// Measured runs per end-to-end row (see `http`).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        repeat: u16,
    },
    /// The ceiling, ingest, end to end (fan-out 1 and 10, default and plugin
    /// format) and latency at a steady rate, on both backends.
    Http {
        /// Events per throughput run.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Only this backend (`embedded` or `redis`); both by default.
        #[arg(long)]
        backend: Option<String>,
        /// Only the rows whose label contains this (e.g. `fan-out 10, default`).
        #[arg(long)]
        rows: Option<String>,
        /// Measured runs per end-to-end row, each between two ceiling runs;
        /// the row shows the run with the median ratio, and the range.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        repeat: u16,
    },
    /// Microseconds a plugin adds per delivery (1 KiB and 64 KiB payloads).
    Plugin,
    /// Hot reload under load: failed and delayed deliveries during plugin swaps.
    Reload,
    /// RSS with many tenants, each with its own plugin and webhook.
    Tenants {
        #[arg(long, default_value_t = 1_000)]
        tenants: usize,
        /// Only this backend (`embedded` or `redis`); both by default.
        #[arg(long)]
        backend: Option<String>,
    },
    /// The fan-out 10 row alone, no ceiling: a workload for `perf` or
    /// callgrind (see BENCHMARKS.md, "Comparing two builds").
    Workload {
        /// Shape with this plugin from `plugins/` (e.g. `gestiqcloud`)
        /// instead of the default format.
        #[arg(long)]
        plugin: Option<String>,
        /// Events per round (each delivered to 10 webhooks).
        #[arg(long, default_value_t = 2_000)]
        events: usize,
        /// Rounds on the same engine; the first pays for first-touch memory.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// Claims per second from the schedule (both backends).
    Claims {
        /// Deliveries made due at once.
        #[arg(long, default_value_t = 20_000)]
        deliveries: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.scenario {
            Scenario::All { repeat } => {
                // Memory first, while the process is fresh.
                scenarios::tenants(1_000, None).await?;
                scenarios::http(20_000, None, None, repeat.into()).await?;
                scenarios::plugin_overhead().await?;
                scenarios::reload().await?;
                claims::run(20_000).await
            }
            Scenario::Http {
                events,
                backend,
                rows,
                repeat,
            } => scenarios::http(events, backend.as_deref(), rows.as_deref(), repeat.into()).await,
            Scenario::Plugin => scenarios::plugin_overhead().await,
            Scenario::Reload => scenarios::reload().await,
            Scenario::Tenants { tenants, backend } => {
                scenarios::tenants(tenants, backend.as_deref()).await
            }
            Scenario::Workload {
                events,
                rounds,
                plugin,
            } => scenarios::workload(events, rounds, plugin.as_deref()).await,
            Scenario::Claims { deliveries } => claims::run(deliveries).await,
        }
    })
}
