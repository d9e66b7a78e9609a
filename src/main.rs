//! The `aws-account-worker` binary: parses the command line, sets up logging, loads and
//! validates the configuration (exit 2 on error), and runs the worker until SIGTERM/SIGINT.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use aws_account_worker::app::{Observed, Worker};
use aws_account_worker::config::Settings;
use aws_account_worker::domain::ids::RequestId;
use aws_account_worker::explain;
use aws_account_worker::observability;
use aws_account_worker::pipeline::Pipeline;
use aws_account_worker::replay;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// The configuration file read when `--config` is not given, if it exists.
const DEFAULT_CONFIG: &str = "config/default.toml";

/// Turns CloudBlue Connect purchase requests for AWS into AWS member accounts.
#[derive(Parser)]
#[command(name = "aws-account-worker", version)]
struct Cli {
    /// Configuration file, laid over the built-in defaults [default: config/default.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume and process orders until SIGTERM/SIGINT
    Run,
    /// Check the configuration, the broker and AWS: one line per check, exit 1 on any failure
    Check,
    /// Resolve an order file as `run` would, with no broker and no AWS call: print the plan,
    /// each setting with where it came from; exit 1 for an order that would fail, 2 for a file
    /// that is not an order
    Explain {
        /// A Connect purchase request (JSON)
        #[arg(value_name = "ORDER.json")]
        order: PathBuf,
    },
    /// Move dead-lettered orders back to the orders exchange (publish with confirm, then ack);
    /// one line per replayed or kept message, then `replayed N, kept M, skipped K`
    Replay(ReplayArgs),
}

/// Which dead letters `replay` moves; all filters must match.
#[derive(Args)]
struct ReplayArgs {
    /// Replay at most N messages
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Replay only this request (repeat for several)
    #[arg(long = "request-id", value_name = "PR-…", value_parser = RequestId::parse)]
    request_ids: Vec<RequestId>,
    /// Replay only messages dead-lettered for this reason (as listed: an x-failure-reason code
    /// such as AWS_UNREACHABLE, or RabbitMQ's reason such as delivery_limit)
    #[arg(long, value_name = "CODE", value_parser = reason_code)]
    reason: Option<String>,
    /// List what would be replayed or kept and move nothing
    #[arg(long)]
    dry_run: bool,
}

/// A `--reason` value: not blank.
fn reason_code(value: &str) -> Result<String, String> {
    let code = value.trim();
    if code.is_empty() {
        Err("a reason code may not be empty (e.g. AWS_UNREACHABLE)".to_owned())
    } else {
        Ok(code.to_owned())
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to standard error at `RUST_LOG`, by default `info` without lapin's channel errors: for
/// `check` a missing queue's `NOT_FOUND` is an answer, reported on standard output, and for
/// `run` a refused exclusive declare (`RESOURCE_LOCKED`: a creation slot or an order's key held
/// elsewhere) is how taking one fails, every `aws.creation_slot_poll_ms` while orders wait. The
/// worker logs the broker errors it acts on itself.
fn init_logging(format: LogFormat) {
    let default = "info,lapin::channel=off";
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let file = cli
        .config
        .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| Path::new(p).is_file()));
    let settings = match Settings::load(file.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("aws-account-worker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Explain { order } = &cli.command {
        return explain(&settings, order);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aws-account-worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run => runtime.block_on(run(settings)),
        Command::Check => runtime.block_on(check(&settings, file.as_deref())),
        Command::Replay(args) => runtime.block_on(replay(&settings, args)),
        Command::Explain { .. } => return ExitCode::from(explain::NOT_AN_ORDER),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let aws = aws_account_worker::aws::sdk::load_config().await;
    let observed = Observed::default();
    let (_, serving) = observability::bind(
        &settings.observability.listen,
        observed.metrics.clone(),
        observed.readiness.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot listen on observability.listen = {}",
            settings.observability.listen
        )
    })?;
    tokio::spawn(serving);
    let payers = aws_account_worker::aws::sdk::payers(
        &aws,
        &settings.payers,
        &settings.member_access(),
        &observed.metrics,
    )
    .await;
    let pipeline = Pipeline::new(payers, &settings);
    let worker = Worker::start(&settings, pipeline, observed)
        .await
        .context("cannot start consuming (is the broker at amqp.url reachable?)")?;
    worker.run_until(shutdown_signal()).await;
    Ok(())
}

/// `check`: each check prints its line on standard output; any failure exits 1.
async fn check(settings: &Settings, file: Option<&Path>) -> anyhow::Result<()> {
    let summary = aws_account_worker::check::run_and_print(settings, file).await;
    anyhow::ensure!(
        summary.failed() == 0,
        "{} of {} checks failed",
        summary.failed(),
        summary.lines.len()
    );
    Ok(())
}

/// `explain`: the plan (or the failure) on standard output; a file that cannot be read or is
/// not an order exits 2 with the reason on standard error.
fn explain(settings: &Settings, order: &Path) -> ExitCode {
    let body = match std::fs::read(order) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("aws-account-worker: cannot read {}: {e}", order.display());
            return ExitCode::from(explain::NOT_AN_ORDER);
        }
    };
    let explained = explain::explain(&settings.rules(), &body);
    if explained.exit == explain::NOT_AN_ORDER {
        for line in &explained.lines {
            eprintln!("aws-account-worker: {}: {line}", order.display());
        }
    } else {
        let mut out = std::io::stdout().lock();
        for line in &explained.lines {
            let _ = writeln!(out, "{line}");
        }
    }
    ExitCode::from(explained.exit)
}

/// `replay`: one line per replayed or kept message and the summary on standard output.
async fn replay(settings: &Settings, args: ReplayArgs) -> anyhow::Result<()> {
    let request = replay::Request {
        filter: replay::Filter {
            request_ids: args.request_ids,
            reason: args.reason,
            limit: args.limit,
        },
        dry_run: args.dry_run,
    };
    let summary = replay::run(settings, &request, |line| {
        // A closed standard output (`replay | head -1`) must not stop the replay half-way.
        let _ = writeln!(std::io::stdout(), "{line}");
    })
    .await?;
    if request.dry_run {
        eprintln!(
            "dry run: {} would be replayed; nothing was moved",
            summary.would_replay
        );
    }
    let _ = writeln!(std::io::stdout(), "{summary}");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    info!("shutdown requested");
}
