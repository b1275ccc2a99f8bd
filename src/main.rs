//! `wrenn`: the all-in-one binary.
//!
//! `wrenn dev [--listen ADDR] [--dir PATH]` runs the whole platform on its
//! embedded defaults (SQLite in `PATH`, in-process events, an in-process host agent
//! with the process runtime). `wrenn image build [--dir PATH] [--force]` builds the
//! default capsule image (`wrenn dev` does on its first start). The same binary is the sandbox init step and, when
//! started as `wrenn-envd`, the guest agent inside each sandbox.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wrenn",
    version,
    about = "Wrenn: isolated sandboxes for AI agents and developers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole platform locally on its embedded defaults.
    Dev {
        /// Address the control plane listens on.
        #[arg(long, default_value = wrenn::dev::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Directory holding the database, secrets and sandboxes.
        #[arg(long, default_value = wrenn::dev::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Manage the capsule images.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the default capsule image (Debian) unless it is already built.
    Build {
        /// Directory whose `images/base/` holds the image ($WRENN_IMAGE_CACHE overrides).
        #[arg(long, default_value = wrenn::dev::DEFAULT_DIR)]
        dir: PathBuf,
        /// Build again even if a build of the current recipe exists.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    // Inside a sandbox being set up: become its init step (never returns).
    wrenn_agent::init::main_if_init();
    // Started as the sandbox's guest agent.
    let arg0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&arg0)
        .file_name()
        .is_some_and(|n| n == "wrenn-envd")
    {
        return wrenn_envd::cli::main();
    }
    let cli = Cli::parse();
    let _telemetry = match wrenn_cpserver::logging::init("wrenn") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wrenn: {}", wrenn_core::report::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wrenn: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev { listen, dir } => wrenn::dev::run(dir, listen)
                .await
                .map_err(|e| wrenn_core::report::error_chain(&e)),
            Command::Image(ImageCommand::Build { dir, force }) => {
                wrenn::image::build(&dir, force).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wrenn: {e}");
            ExitCode::FAILURE
        }
    }
}
