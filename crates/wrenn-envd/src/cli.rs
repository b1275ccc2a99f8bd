//! The `wrenn-envd` command line (shared by the `wrenn-envd` binary and by binaries
//! that embed envd, such as `wrenn`, which runs it when started as `wrenn-envd`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{Listen, ServerConfig};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// Wrenn guest agent: serves envd.v1 (processes, files, system) over gRPC.
#[derive(Debug, Parser)]
#[command(name = "wrenn-envd", version, about)]
struct Args {
    /// TCP address to serve on (default 0.0.0.0:49983, as inside a VM).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["socket", "listen_fd"])]
    listen: Option<SocketAddr>,
    /// Unix socket path to serve on (the process runtime).
    #[arg(long, value_name = "PATH", conflicts_with = "listen_fd")]
    socket: Option<PathBuf>,
    /// Serve on an inherited, already listening TCP or unix socket.
    #[arg(long, value_name = "FD")]
    listen_fd: Option<i32>,
    /// The user processes run as until Init sets another.
    #[arg(long, value_name = "NAME", default_value = "root")]
    default_user: String,
    /// Reap every orphaned child, not only envd's own (automatic when envd is PID 1).
    #[arg(long)]
    reap_orphans: bool,
    /// Set the system clock from Init's timestamp (inside a VM).
    #[arg(long)]
    set_clock: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// Parses the command line and runs envd until SIGTERM/SIGINT.
pub fn main() -> ExitCode {
    // The process's name (`comm`, what `ps` shows), whatever file it was started from:
    // binaries that embed envd and descriptor-based `execveat` would show another.
    if let Err(err) = rustix::thread::set_name(c"wrenn-envd") {
        eprintln!("wrenn-envd: cannot set the process name: {err}");
    }
    // Not dumpable: without CAP_SYS_PTRACE nobody — capsule root included, though it
    // has envd's uid — may attach to envd, read its memory or environment, or open
    // its descriptors (its log and listening socket are host files). The processes
    // it starts are dumpable again after their `exec`.
    if let Err(err) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("wrenn-envd: cannot make the process non-dumpable: {err}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("wrenn-envd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(Args::parse()))
}

async fn run(args: Args) -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }

    let listen = match (args.listen, args.socket, args.listen_fd) {
        (Some(addr), _, _) => Listen::Tcp(addr),
        (_, Some(path), _) => Listen::Unix(path),
        (_, _, Some(fd)) => Listen::Fd(fd),
        _ => ServerConfig::default().listen,
    };
    let mut config = ServerConfig::new(listen);
    config.default_user = args.default_user;
    config.reap_orphans |= args.reap_orphans;
    config.set_clock = args.set_clock;

    let server = match crate::start(config).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!("wrenn-envd: {}", error_chain(&err));
            return ExitCode::FAILURE;
        }
    };
    let stop = server.stop_token();
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("wrenn-envd: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        stop.cancel();
    });
    match server.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wrenn-envd: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes joined by `: ` (envd depends on no other Wrenn crate, so this is
/// its own copy of `wrenn_core::report::error_chain`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
