//! `wrenn`: the all-in-one binary.
//!
//! `wrenn dev [--listen ADDR] [--dir PATH]` runs the whole platform on its
//! embedded defaults (SQLite in `PATH`, in-process events).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wrenn", version, about = "Wrenn: isolated sandboxes for AI agents and developers")]
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
}

#[tokio::main]
async fn main() -> ExitCode {
    wrenn_cpserver::logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev { listen, dir } => wrenn::dev::run(dir, listen).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wrenn: {e}");
            ExitCode::FAILURE
        }
    }
}
