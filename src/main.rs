//! The `aws-account-worker` binary: parses the command line, sets up logging, loads and
//! validates the configuration (exit 2 on error), and runs the worker until SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use aws_account_worker::app::{Observed, Worker};
use aws_account_worker::aws::sdk::SdkOrganizations;
use aws_account_worker::config::Settings;
use aws_account_worker::observability;
use aws_account_worker::pipeline::Pipeline;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use clap::{Parser, Subcommand, ValueEnum};
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
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aws-account-worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run => runtime.block_on(run(settings)),
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
    // Organizations is a global service homed in us-east-1: use it when no region is configured.
    let region = RegionProviderChain::default_provider().or_else("us-east-1");
    let aws = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .timeout_config(aws_account_worker::aws::sdk::timeouts())
        .load()
        .await;
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
    let pipeline = Pipeline::new(
        SdkOrganizations::new(&aws, &settings.aws.member_role_name, &observed.metrics),
        &settings,
    );
    let worker = Worker::start(&settings, pipeline, observed)
        .await
        .context("cannot start consuming (is the broker at amqp.url reachable?)")?;
    worker.run_until(shutdown_signal()).await;
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
