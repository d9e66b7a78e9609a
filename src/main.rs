//! The `aws-account-worker` binary: parses the command line, sets up logging, loads and
//! validates the configuration (exit 2 on error), and runs the worker until SIGTERM/SIGINT.

use std::io::{IsTerminal, Write};
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
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// The configuration file read when `--config` is not given, if it exists.
const DEFAULT_CONFIG: &str = "config/default.toml";

/// What `--help` adds under the options: the environment the binary reads, and examples.
const ENVIRONMENT_AND_EXAMPLES: &str = "\
Environment:
  WORKER__SECTION__KEY   Overrides one configuration key, over the built-in defaults and the
                         --config file: WORKER__AMQP__URL, WORKER__AMQP__PREFETCH,
                         WORKER__RETRY__MAX_ATTEMPTS, WORKER__PAYERS__DEFAULT__ROLE_ARN,
                         WORKER__BUSINESS_MODEL__SERVICE_CONTROL_POLICIES='[\"p-abcd1234\"]'
  AWS_*                  The AWS SDK's standard chain: AWS_REGION (default us-east-1),
                         AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
                         AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN,
                         AWS_ENDPOINT_URL, AWS_EC2_METADATA_DISABLED
  RUST_LOG               Log filter (default info), e.g. RUST_LOG=debug or
                         RUST_LOG=info,aws_account_worker=debug
  NO_COLOR               Set and not empty: no colour in the logs (colour is used only when
                         standard error is a terminal)

Examples:
  aws-account-worker --config /etc/aws-account-worker/worker.toml check
  WORKER__AMQP__URL=amqps://worker:secret@rabbit.example:5671/prod aws-account-worker run
  aws-account-worker --log-format json run 2> worker.log
  aws-account-worker explain order.json
  aws-account-worker replay --reason AWS_UNREACHABLE --dry-run
  aws-account-worker check --format json | jq '.checks[] | select(.status != \"ok\")'";

/// Turns CloudBlue Connect purchase requests for AWS into AWS member accounts.
#[derive(Parser)]
#[command(
    name = "aws-account-worker",
    version,
    after_help = "Environment variables and examples: --help",
    after_long_help = ENVIRONMENT_AND_EXAMPLES
)]
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
    #[command(after_long_help = "\
Examples:
  aws-account-worker --config worker.toml check
  aws-account-worker check --format json")]
    Check(CheckArgs),
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
    #[command(after_long_help = "\
Examples:
  aws-account-worker replay --dry-run
  aws-account-worker replay --reason AWS_UNREACHABLE --limit 10
  aws-account-worker replay --request-id PR-1234-5678-9012-001
  aws-account-worker replay --format json")]
    Replay(ReplayArgs),
}

/// How `check` reports.
#[derive(Args)]
struct CheckArgs {
    /// Output: one line per check (text), or one JSON document with every check (json)
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
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
    /// Output: one line per message and a summary line (text), or one JSON object per line for
    /// each message and a final summary object (json)
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

/// What `check` and `replay` print on standard output.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
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

/// Logs to standard error at `RUST_LOG`, in colour only when standard error is a terminal and
/// `NO_COLOR` is unset or empty, by default `info` without lapin's channel errors: for
/// `check` a missing queue's `NOT_FOUND` is an answer, reported on standard output, and for
/// `run` a refused exclusive declare (`RESOURCE_LOCKED`: a creation slot or an order's key held
/// elsewhere) is how taking one fails, every `aws.creation_slot_poll_ms` while orders wait. The
/// worker logs the broker errors it acts on itself.
fn init_logging(format: LogFormat) {
    let default = "info,lapin::channel=off";
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let no_color = std::env::var_os("NO_COLOR");
    let colour = use_colour(std::io::stderr().is_terminal(), no_color.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

/// Colour in the logs: on a terminal, unless `NO_COLOR` is set to something (no-color.org).
fn use_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
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
        Command::Check(args) => runtime.block_on(check(&settings, file.as_deref(), args.format)),
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
    // One signal stops both the worker and the observability server.
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    let (_, serving) = observability::bind_until(
        &settings.observability.listen,
        observed.metrics.clone(),
        observed.readiness.clone(),
        observability::ServerLimits::default(),
        shutdown.clone().cancelled_owned(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot listen on observability.listen = {}",
            settings.observability.listen
        )
    })?;
    let serving = tokio::spawn(serving);
    let payers = aws_account_worker::aws::sdk::payers(
        &aws,
        &settings.payers,
        &aws_account_worker::aws::MemberAccess::from_settings(&settings.aws),
        &observed.metrics,
    )
    .await;
    let pipeline = Pipeline::new(payers, &settings);
    let worker = Worker::start(&settings, pipeline, observed)
        .await
        .context("cannot start consuming (is the broker at amqp.url reachable?)")?;
    worker.run_until(shutdown.cancelled_owned()).await;
    let _ = serving.await;
    Ok(())
}

/// `check`: each check prints its line on standard output (or, as JSON, all of them at the end
/// in one document); any failure exits 1.
async fn check(
    settings: &Settings,
    file: Option<&Path>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let summary = match format {
        OutputFormat::Text => aws_account_worker::check::run_and_print(settings, file).await,
        OutputFormat::Json => {
            let summary = aws_account_worker::check::run_with_sdk(settings, file, |_| {}).await;
            let _ = writeln!(std::io::stdout(), "{}", summary.to_json());
            summary
        }
    };
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

/// `replay`: one line per replayed or kept message and the summary on standard output, as text
/// or as one JSON object per line.
async fn replay(settings: &Settings, args: ReplayArgs) -> anyhow::Result<()> {
    let json = args.format == OutputFormat::Json;
    let request = replay::Request {
        filter: replay::Filter {
            request_ids: args.request_ids,
            reason: args.reason,
            limit: args.limit,
        },
        dry_run: args.dry_run,
    };
    let summary = replay::run(settings, &request, |decision, letter| {
        let line = if json {
            replay::json(decision, request.dry_run, letter).to_string()
        } else {
            replay::line(decision, request.dry_run, letter)
        };
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
    if json {
        let _ = writeln!(std::io::stdout(), "{}", summary.to_json(request.dry_run));
    } else {
        let _ = writeln!(std::io::stdout(), "{summary}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = std::ffi::OsStr::new("1");
        let empty = std::ffi::OsStr::new("");
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(empty)), "an empty NO_COLOR is unset");
        assert!(!use_colour(true, Some(set)));
        assert!(!use_colour(false, None), "files and pipes get no colour");
        assert!(!use_colour(false, Some(set)));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
