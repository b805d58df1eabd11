//! The `pgharbor` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "pgharbor",
    version,
    about = "PostgreSQL connection pooler and wire-protocol proxy"
)]
struct Cli {
    /// Configuration file (default: config/pgharbor.toml when present).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and exit.
    CheckConfig { file: PathBuf },
    /// Start a throwaway Postgres and pgharbor in front of it.
    Demo {
        /// Where pgharbor listens (port 0: any free port, printed at start).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:6432")]
        listen: String,
        /// Where the metrics endpoint listens (port 0: any free port).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9930")]
        metrics_listen: String,
    },
}

/// `PGHARBOR_LOG` as a static filter (`Targets`) unless it has span or
/// field directives (`[...]`), which need `EnvFilter`. Every poll of a
/// client's task enters and leaves the client's span, and `EnvFilter` takes
/// a lock at each of those to track span-scoped directives, a cost paid on
/// every transaction (`bench/marginal.sh` shows it).
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("PGHARBOR_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".to_string());
    let targets = if spec.contains('[') {
        None
    } else {
        spec.parse::<tracing_subscriber::filter::Targets>().ok()
    };
    if let Some(targets) = targets {
        // The builder's own level (INFO by default) would cut below
        // `targets`; the targets alone decide.
        let b = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE);
        match format {
            LogFormat::Text => b.finish().with(targets).init(),
            LogFormat::Json => b.json().finish().with(targets).init(),
        }
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return match pgharbor::check_config(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                // The error names the file (and the line, where known).
                eprintln!("pgharbor: {e}");
                ExitCode::from(2)
            }
        };
    }
    init_tracing(cli.log_format);
    // Loaded before the runtime exists: it says which runtime to build.
    let loaded = match &cli.command {
        Some(Command::Demo { .. }) => None,
        _ => {
            let path = cli
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("config/pgharbor.toml"));
            match pgharbor::config::Config::load(&path) {
                Ok(c) => Some((c, path)),
                Err(e) => {
                    eprintln!("pgharbor: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let workers = loaded.as_ref().map_or(1, |(c, _)| c.proxy.worker_threads);
    let runtime = match build_runtime(workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgharbor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match (cli.command, loaded) {
        (_, Some((config, path))) => runtime.block_on(pgharbor::run_with_signals(path, config)),
        (
            Some(Command::Demo {
                listen,
                metrics_listen,
            }),
            None,
        ) => runtime.block_on(pgharbor::demo::run(&listen, &metrics_listen)),
        (_, None) => unreachable!("the configuration is loaded for every command but demo"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgharbor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `proxy.worker_threads`: 1 runs every client on one thread, as PgBouncer
/// does. On the benchmark machine the multi-thread runtime used more CPU per
/// transaction, even with one worker
/// (bench/results/runtime-threads-2026-12-06.md): work stealing, its wakeups
/// of the other worker and the shared counters bouncing between cores cost
/// more than a second core gains while Postgres needs the cores too. More
/// threads pay off when pgharbor's one thread is saturated.
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}
