//! The `cplb` command: argument parsing, logging, signals. Everything else
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use cplb::Config;

#[derive(Parser)]
#[command(
    name = "cplb",
    version,
    about = "Control-plane load balancer: a node-local TCP proxy for Kubernetes API servers"
)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (like `nginx -t`).
    #[arg(short = 't', long)]
    check: bool,
    /// Log format on stderr. The filter comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value = "text")]
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
    /// Watch cplb work on this machine: stand-in masters, simulated nodes,
    /// a master failing and coming back. Loopback only, no root, no config.
    Demo,
    /// Convert an nginx `stream` proxy config to cplb YAML (printed on stdout).
    ImportNginx { file: PathBuf },
    /// Simulate a cluster's proxies and masters (no sockets) and compare
    /// fail-back strategies; see docs/failback.md.
    Simulate(cplb::simulate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; only warnings (state changes) are logged.
    let default_level = if matches!(cli.command, Some(Command::Demo)) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_format, default_level);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cplb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Some(Command::ImportNginx { file }) => return import_nginx(file),
        Some(Command::Demo) => return demo(),
        Some(Command::Simulate(args)) => {
            cplb::simulate::command(args, &mut std::io::stdout().lock())?;
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let path = cli.config.context("--config FILE is required")?;
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cplb: {e}");
            if cli.check {
                eprintln!("cplb: configuration file {} test failed", path.display());
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Err(e) = cplb::health_check::prepare(&config) {
        eprintln!("cplb: {}: {e}", path.display());
        if cli.check {
            eprintln!("cplb: configuration file {} test failed", path.display());
        }
        return Ok(ExitCode::FAILURE);
    }
    if cli.check {
        println!(
            "cplb: configuration file {} test is successful ({} upstreams, listen {:?}, hash key {}, node id {:?})",
            path.display(),
            config.upstreams.len(),
            config.listen,
            config.hash.key.as_str(),
            config.hash.node_id
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The control plane (admin, reload, health checks); the proxying runs
    // on cplb's own worker threads (see `workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        let server = cplb::Server::bind(config, prometheus::Registry::new()).await?;
        reload_on_sighup(server.reload_handle())?;
        server.serve(shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `cplb import-nginx FILE`: YAML on stdout, warnings on stderr.
fn import_nginx(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("could not read {}", file.display()))?;
    match cplb::import::convert(&text) {
        Ok(conversion) => {
            for w in &conversion.warnings {
                eprintln!("cplb: warning: {w}");
            }
            print!("{}", conversion.yaml);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("cplb: {}:{e}", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Completes on the first SIGTERM or SIGINT. A second one exits at once,
/// without waiting for the drain.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("could not install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("could not install SIGINT handler")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = first, "shutting down");
        let _ = tx.send(());
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        };
        tracing::warn!("second signal; exiting without waiting for the drain");
        std::process::exit(1);
    });
    Ok(async move {
        let _ = rx.await;
    })
}

fn demo() -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let mut out = std::io::stdout();
    runtime
        .block_on(cplb::demo::run(&mut out))
        .context("demo failed")?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP goes through the same reload path as a file change.
fn reload_on_sighup(handle: cplb::reload::ReloadHandle) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("could not install SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading configuration");
            handle.signal();
        }
    });
    Ok(())
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
