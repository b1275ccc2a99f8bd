//! `wrenn-envd`: the Wrenn guest agent.
//!
//! envd runs inside every sandbox and serves the `envd.v1` gRPC services of
//! [`wrenn_proto`]: `Process` (start processes on pipes or PTYs, stream their output
//! with replay, stdin, signals, resize, reattach by pid or tag), `Filesystem` (stat,
//! list, mkdir, move, remove, and files streamed in 64 KiB chunks), `System`
//! (health, Init, snapshot preparation, metrics, default environment) and `Tunnel`
//! (TCP connections to the sandbox's own loopback, for the host agent's port proxy).
//!
//! Inside a VM it listens on TCP `0.0.0.0:49983`; in the process runtime it is PID 1 of
//! the sandbox's namespaces and listens on a unix socket, and then also reaps orphans
//! (see [`reaper`]).
//!
//! # Running it in-process
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wrenn_envd::{Listen, ServerConfig};
//! use wrenn_proto::envd::v1::{HealthRequest, system_client::SystemClient};
//!
//! let server = wrenn_envd::start(ServerConfig::new(Listen::Unix("/tmp/envd.sock".into()))).await?;
//! let channel = wrenn_envd::client::connect(server.local_addr()).await?;
//! let health = SystemClient::new(channel).health(HealthRequest {}).await?.into_inner();
//! assert_eq!(health.version, wrenn_envd::VERSION);
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # The binary
//!
//! `wrenn-envd [--listen ADDR | --socket PATH | --listen-fd FD] [--default-user NAME]
//! [--reap-orphans]`, `--version`. Without a listen flag it serves `0.0.0.0:49983`.
//! SIGTERM or SIGINT shut it down gracefully.
//!
//! # Modules
//!
//! - `process`: the Process service (spawn, PTY, output buffers, registry, streams).
//! - `fs`: the Filesystem service.
//! - `system` and `metrics`: the System service.
//! - `tunnel`: the Tunnel service (loopback destinations only, never envd's port).
//! - [`reaper`]: the single owner of all `waitpid` calls.
//! - [`server`]: listeners and lifecycle; [`client`]: channels for callers.
//! - `users`, `paths`, `state`, [`error`]: `/etc/passwd`, path resolution, Init state,
//!   errors to status codes.

pub mod cli;
pub mod client;
pub mod error;
mod fs;
mod metrics;
mod paths;
mod process;
pub mod reaper;
pub mod server;
mod state;
mod system;
mod tunnel;
mod users;

pub use error::EnvdError;
pub use server::{BoundAddr, Listen, ServeError, ServerConfig, ServerHandle, start};
pub use system::VERSION;
