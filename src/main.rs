//! The `cplb` command: argument parsing, logging, signals. Everything else
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use cplb::Config;
// What cplb prints about its input (errors, warnings, the `-t` line)
// carries that input's text: control characters in it are escaped.
use cplb::logfmt::Escaped;

// The system allocator. A global allocator of cplb's own (pooling tokio's
// 128-aligned blocks) saved 12 kB at 100 idle connections and 0.5 MB at
// 1,000, what a node holds, for 800 lines of unsafe code; mimalloc and
// jemalloc cost 8 to 30 MB more idle RSS (docs/architecture.md, "Memory").

#[derive(Parser)]
#[command(
    name = "cplb",
    version,
    about = "Control-plane load balancer: a node-local TCP proxy for Kubernetes API servers"
)]
struct Cli {
    /// Configuration file (YAML). Also after `discover` and `dataplane detach`
    /// (`cplb discover -c FILE`).
    #[arg(short, long, value_name = "FILE", global = true)]
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
    ImportNginx {
        /// The nginx config file (nginx.conf, or the file with the `stream`
        /// block); `-` reads standard input.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show the upstreams of a running cplb: state, since when and why,
    /// the last health check, connections and bytes; and the last config load.
    ///
    /// Exit codes: 0 at least one upstream is usable; 1 none is usable;
    /// 3 cplb's admin endpoint cannot be reached or its answer is not understood;
    /// 4 cplb is shutting down (draining connections, as /readyz says).
    Status {
        /// The admin endpoint of the cplb to ask (its `admin` setting).
        // The default is the config's `admin` default.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8081")]
        admin: String,
        /// `table` for people, `json` for scripts (the same data).
        #[arg(long, value_enum, default_value = "table")]
        output: StatusOutput,
        /// Show the local clients instead (`/clients`): one line each with
        /// name, pids, open connections, new connections per second over
        /// the last minute, refusals, bytes and masters. Exit code 0
        /// whenever cplb answers.
        #[arg(long)]
        clients: bool,
    },
    /// Simulate a cluster's proxies and masters (no sockets) and compare
    /// fail-back strategies; see docs/failback.md.
    #[cfg(feature = "tools")]
    Simulate(cplb::simulate::Args),
    /// Simulate a cluster's proxies and masters: not in this build (see
    /// `cplb simulate`).
    #[cfg(not(feature = "tools"))]
    Simulate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Check the config's `discovery:` section from this node: dial the
    /// upstreams directly (never the kubeconfig's server) and print the API
    /// servers the cluster lists, one JSON line per change. Proxies nothing.
    Discover {
        /// Exit after the first list: 0 with a list, 1 when none came
        /// within `--timeout` (the last error is printed).
        #[arg(long)]
        once: bool,
        /// With `--once`: how long to wait for the first list.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The kernel data plane's programs and maps (docs/kernel.md).
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
}

#[derive(Subcommand)]
enum DataplaneCommand {
    /// Detach the kernel programs of the cplb that runs from this config
    /// file and remove its pins under `dataplane.bpffs`. Needed when
    /// uninstalling cplb, or going back to proxy mode without restarting
    /// cplb: otherwise the last masters it published keep being chosen,
    /// with no cplb to follow their health. The config file (`--config
    /// FILE`, before or after `detach`) is that cplb's: its `listen` and
    /// `dataplane.bpffs` name the pins.
    Detach,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusOutput {
    Table,
    Json,
}

/// `cplb dataplane detach --config FILE`.
fn dataplane_detach(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cplb: {}", Escaped(cplb::logfmt::Chain(&e)));
            return Ok(ExitCode::FAILURE);
        }
    };
    let (bpffs, listen) = (&config.dataplane.bpffs, &config.listen);
    let dir = cplb::kernel::Instance::new(bpffs, listen)
        .dir()
        .to_path_buf();
    let done = cplb::kernel::detach(bpffs, listen).with_context(|| {
        format!(
            "could not detach the kernel data plane pinned at {}",
            dir.display()
        )
    })?;
    if done.links == 0 && done.maps == 0 {
        println!("nothing was pinned at {}", dir.display());
    } else {
        println!(
            "detached {} links and removed {} maps pinned at {}",
            done.links,
            done.maps,
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(name) = matches.subcommand_name() {
        // Only `discover` and `dataplane` read the config: refuse the options elsewhere
        // rather than ignore them (`cplb -c f.yaml demo` may be meant as a check).
        let takes_config = matches!(
            cli.command,
            Some(Command::Discover { .. } | Command::Dataplane(_))
        );
        for (given, flag) in [
            (cli.config.is_some() && !takes_config, "--config"),
            (cli.check, "--check"),
        ] {
            if given {
                eprintln!(
                    "cplb: {flag} does not apply to `cplb {name}`; run `cplb {flag} …` on its own"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    // The demo narrates on stdout, naming the masters; cplb's own logs
    // (addresses, timestamps) would land in the middle of its steps.
    // RUST_LOG=warn shows them.
    let default_level = if matches!(cli.command, Some(Command::Demo)) {
        "off"
    } else {
        "info"
    };
    init_logging(cli.log_format, default_level);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cplb: {}", Escaped(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Some(Command::ImportNginx { file }) => return import_nginx(file),
        Some(Command::Demo) => return demo(),
        Some(Command::Status {
            admin,
            output,
            clients,
        }) => {
            let output = match output {
                StatusOutput::Table => cplb::status::Output::Table,
                StatusOutput::Json => cplb::status::Output::Json,
            };
            let run = if *clients {
                cplb::status::run_clients
            } else {
                cplb::status::run
            };
            let code = run(
                admin,
                output,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            );
            return Ok(ExitCode::from(code));
        }
        #[cfg(feature = "tools")]
        Some(Command::Simulate(args)) => {
            cplb::simulate::command(args, &mut std::io::stdout().lock())?;
            return Ok(ExitCode::SUCCESS);
        }
        #[cfg(not(feature = "tools"))]
        Some(Command::Simulate { .. }) => return Ok(not_in_this_build("simulate")),
        Some(Command::Discover { .. } | Command::Dataplane(_)) | None => {}
    }
    let path = cli.config.context("--config FILE is required")?;
    if let Some(Command::Dataplane(DataplaneCommand::Detach)) = cli.command {
        return dataplane_detach(&path);
    }
    if let Some(Command::Discover { once, timeout }) = cli.command {
        return discover(&path, once.then_some(timeout));
    }
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cplb: {}", Escaped(cplb::logfmt::Chain(&e)));
            if cli.check {
                eprintln!(
                    "cplb: configuration file {} test failed",
                    Escaped(path.display())
                );
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    if cli.check
        && let Err(e) = config.check_names_are_not_self(&path)
    {
        eprintln!("cplb: {}", cplb::logfmt::Chain(&e));
        eprintln!("cplb: configuration file {} test failed", path.display());
        return Ok(ExitCode::FAILURE);
    }
    if let Err(e) = cplb::probe::prepare(&config) {
        eprintln!("cplb: {}", Escaped(format!("{}: {e}", path.display())));
        if cli.check {
            eprintln!(
                "cplb: configuration file {} test failed",
                Escaped(path.display())
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    // With discovery: the files it needs, read and written as the user
    // cplb runs as (a static pod's uid decides this).
    if cli.check
        && let Some(d) = &config.discovery
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?;
        if let Err(e) = runtime.block_on(cplb::discovery::check::access(d)) {
            eprintln!(
                "cplb: {}",
                Escaped(format!("{}: {}", path.display(), cplb::logfmt::Chain(&e)))
            );
            eprintln!(
                "cplb: configuration file {} test failed",
                Escaped(path.display())
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    if cli.check {
        let n = config.upstreams.len();
        let discovery = config.discovery.as_ref().map_or("off".into(), |d| {
            format!(
                "{} (kubeconfig {}, state file {})",
                d.service_ref(),
                d.kubeconfig.display(),
                d.state_file.display()
            )
        });
        let failback = if config.failback.enabled {
            format!(
                "on (settle {})",
                humantime::format_duration(config.failback.settle)
            )
        } else {
            "off".into()
        };
        let admin = config.admin.map_or("off".into(), |a| a.to_string());
        let checks = config.health_check.as_ref().map_or("off".into(), |hc| {
            let mode = match hc.mode {
                cplb::config::CheckMode::Https => "https",
                cplb::config::CheckMode::Tcp => "tcp",
            };
            format!("{mode} every {}", humantime::format_duration(hc.interval))
        });
        print_out(&format!(
            "cplb: configuration file {} test is successful ({n} upstream{}, listen {:?}, admin {admin}, active health checks {checks}, hash key {}, node id {:?}, discovery {}, fail-back {failback})\n",
            Escaped(path.display()),
            if n == 1 { "" } else { "s" },
            config.listen,
            config.hash.key.as_str(),
            config.hash.node_id,
            Escaped(discovery),
        ))
        .context("could not write the result")?;
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
        let server = match cplb::Server::bind(config, prometheus::Registry::new()).await {
            Ok(s) => s,
            // Name the file and the setting to change, as a config error does.
            Err(e) => {
                let field = match &e {
                    cplb::ServerError::Listen(l) => Some(l.role.field()),
                    cplb::ServerError::Taken { role, .. } => Some(role.field()),
                    _ => None,
                };
                return Err(match field {
                    Some(field) => {
                        anyhow::Error::new(e).context(format!("{}: {field}", path.display()))
                    }
                    None => e.into(),
                });
            }
        };
        server
            .reload_on_sighup()
            .context("could not install SIGHUP handler")?;
        server.serve(shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `cplb discover`: runs the discovery watcher alone, seeded with the
/// config's static upstreams in their order. `once`: the deadline for the
/// first list; a script must not wait forever on an API that fails.
fn discover(path: &std::path::Path, once: Option<std::time::Duration>) -> anyhow::Result<ExitCode> {
    use cplb::discovery::{Settings, Stats, run};
    let config = Config::load(path)?;
    let d = config
        .discovery
        .clone()
        .with_context(|| format!("{} has no discovery: section", path.display()))?;
    let seeds: Vec<String> = config.upstreams.iter().map(|u| u.address.clone()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async move {
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        let stop = tokio_util::sync::CancellationToken::new();
        let stats = std::sync::Arc::new(Stats::default());
        let task = tokio::spawn(run(
            Settings::new(&d),
            move || seeds.clone(),
            tx,
            stats.clone(),
            stop.clone(),
        ));
        let mut shutdown = std::pin::pin!(shutdown_signal()?);
        // Polled only with --once: without, it watches until stopped.
        let mut deadline = std::pin::pin!(tokio::time::sleep(once.unwrap_or_default()));
        let mut code = ExitCode::SUCCESS;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                () = &mut deadline, if once.is_some() => {
                    let why = stats.last_error().unwrap_or_else(|| "no answer yet".into());
                    eprintln!(
                        "cplb: discover: no list within {}: {}",
                        humantime::format_duration(once.unwrap_or_default()),
                        Escaped(why)
                    );
                    code = ExitCode::FAILURE;
                    break;
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let Some(list) = rx.borrow_and_update().clone() else { continue };
                    let line = serde_json::json!({
                        "service": d.service_ref(), "addresses": list.addresses, "via": list.via,
                    });
                    println!("{line}");
                    if once.is_some() {
                        break;
                    }
                }
            }
        }
        stop.cancel();
        let _ = task.await;
        Ok(code)
    })
}

/// `cplb import-nginx FILE`: YAML on stdout, warnings on stderr.
/// `FILE` `-` is standard input, as with most Unix tools.
fn import_nginx(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("could not read standard input")?
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("could not read {}", file.display()))?
    };
    let file = if file == std::path::Path::new("-") {
        std::path::Path::new("<stdin>")
    } else {
        file
    };
    match cplb::import::convert(&text) {
        Ok(conversion) => {
            for w in &conversion.warnings {
                eprintln!("cplb: warning: {}", Escaped(w));
            }
            print_out(&conversion.yaml).context("could not write the converted config")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("cplb: {}", Escaped(format!("{}:{e}", file.display())));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Writes `text` to standard output. `print!` would panic on a closed pipe
/// (`cplb -t | head -0`); a reader that went away has read all it wanted,
/// so that is not an error, as with `yes | head`.
fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
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

/// A tool left out of this build (`--no-default-features`, as the
/// container image is built): said plainly, with a distinct exit code.
#[cfg(not(feature = "tools"))]
fn not_in_this_build(command: &str) -> ExitCode {
    eprintln!(
        "cplb: `cplb {command}` is not in this build: it was built without the `tools` feature \
         (the container image leaves out the demo, the simulator and the stand-in API server); \
         a build with default features has it (`cargo install --path .`, or `cargo run --release -- {command}`)"
    );
    ExitCode::from(2)
}

#[cfg(not(feature = "tools"))]
fn demo() -> anyhow::Result<ExitCode> {
    Ok(not_in_this_build("demo"))
}

#[cfg(feature = "tools")]
fn demo() -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let mut out = std::io::stdout();
    match runtime.block_on(cplb::demo::run(&mut out)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The reader went away (`cplb demo | head`): it has read all it
        // wanted, so stop quietly and successfully, as `yes | head` does.
        Err(cplb::demo::DemoError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e).context("demo failed"),
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // kube logs every failed request at ERROR; discovery logs its failures
    // itself, once per transition. Unless RUST_LOG asks for kube by name.
    // notify logs its internal inotify errors as Rust debug text at INFO
    // and WARN (`Os { code: 22, .. }`, `WatchNotFound`) on every ConfigMap
    // swap; the config watcher says what happened itself (`watch`).
    let rust_log = std::env::var("RUST_LOG").unwrap_or_default();
    for (name, directives) in [
        ("kube", &["kube_client=off", "kube_runtime=off"][..]),
        ("notify", &["notify=off"][..]),
    ] {
        if rust_log.contains(name) {
            continue;
        }
        for d in directives {
            if let Ok(d) = d.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        // Control characters in a value or a message are escaped (see `logfmt`).
        LogFormat::Text => builder.fmt_fields(cplb::logfmt::TextFields).init(),
        // Real JSON values for list and number fields (see `logfmt`).
        LogFormat::Json => builder.event_format(cplb::logfmt::JsonLines).init(),
    }
}
