//! The `wasmhook` binary: `serve` runs the engine; `dev-receiver` prints the
//! webhooks it receives (for trying the engine out).

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use wasmhook::config::Settings;

/// mimalloc: malloc/free were ~11 % of CPU samples under load with glibc's
/// allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wasmhook",
    version,
    about = "A webhook delivery engine with per-tenant WASM plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine. Settings: defaults, then --config, then WASMHOOK_* variables.
    Serve {
        /// A TOML file with settings (keys as in the README).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Plugin developer kit: scaffold and try out plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// List the jobs of a running engine, or run one now (admin token).
    Jobs {
        /// The engine's address.
        #[arg(long, env = "WASMHOOK_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The engine's admin token.
        #[arg(long, env = "WASMHOOK_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Listen for webhooks and print each one (method, headers, body); answers 200.
    DevReceiver {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Each job: its schedule, next run and last run.
    List,
    /// Run a job now and wait for it: cleanup, health, plugin-unload,
    /// plugin-cache-prune, or all.
    Run { name: String },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a ready-to-build plugin crate (SDK dependency, example, tests).
    New {
        /// The plugin's name (lowercase letters, digits, '-', '_').
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path to the wasmhook-sdk crate (default: the SDK this binary was built with).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Run a compiled plugin on an event and print the exact request the
    /// engine would send (signed with a test secret), or the skip reason.
    /// Exits non-zero when the plugin fails.
    Test {
        /// The component (`target/wasm32-wasip2/release/NAME.wasm`).
        wasm: PathBuf,
        /// A trigger body: {"type": ..., "data": {...}}.
        #[arg(long)]
        event: PathBuf,
        /// The webhook: {"url"?, "plugin_config"?, "metadata"?, "headers"?, "secret"?}.
        #[arg(long)]
        webhook: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmhook: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve { config } => {
            let settings = Settings::load(config.as_deref())
                .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
            init_tracing(settings.log_json);
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(settings.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", settings.listen))?;
                wasmhook::run(settings, listener, shutdown_signal()).await
            })
        }
        Command::Plugin { command } => plugin(command),
        Command::DevReceiver { listen } => runtime.block_on(dev_receiver(listen)),
        Command::Jobs {
            url,
            admin_token,
            command,
        } => {
            let out = runtime.block_on(async {
                match command {
                    JobsCommand::List => wasmhook::remote::list_jobs(&url, &admin_token).await,
                    JobsCommand::Run { name } => {
                        wasmhook::remote::run_job(&url, &admin_token, &name).await
                    }
                }
            })?;
            print!("{out}");
            Ok(())
        }
    }
}

fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    use wasmhook::devkit;
    match command {
        PluginCommand::New { name, dir, sdk } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = sdk
                .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk")));
            let sdk = sdk
                .canonicalize()
                .with_context(|| format!("the SDK is not at {} (give --sdk)", sdk.display()))?;
            devkit::scaffold(&name, &dir, &sdk)?;
            println!(
                "created {}: cd there, then `cargo test` and `cargo build --release --target wasm32-wasip2`",
                dir.display()
            );
            Ok(())
        }
        PluginCommand::Test {
            wasm,
            event,
            webhook,
        } => {
            match devkit::test_plugin(&wasm, &event, webhook.as_deref())? {
                devkit::TestOutcome::Request(text) => println!("{text}"),
                devkit::TestOutcome::Skipped(reason) => println!("skipped: {reason}"),
            }
            Ok(())
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: finishing requests and deliveries in flight");
}

async fn dev_receiver(listen: String) -> anyhow::Result<()> {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, Uri};
    let app = axum::Router::new().fallback(
        |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| async move {
            let mut out = format!("{method} {uri}\n");
            for (k, v) in &headers {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
            }
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(&body));
            println!("{out}\n");
            "ok"
        },
    );
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("dev-receiver listening on http://{listen}");
    axum::serve(listener, app).await?;
    Ok(())
}
