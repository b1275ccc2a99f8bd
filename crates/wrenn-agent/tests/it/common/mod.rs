//! Shared test harness: a [`Runtime`] that runs REAL `wrenn-envd` processes on unix
//! sockets (no namespaces: real processes, real files on this host), an agent started
//! on 127.0.0.1:0 with short timings, a tonic client, [`Envd`] clients of envd's own
//! `Process` and `Filesystem` services routed through the agent to one sandbox, and a
//! stand-in for the control plane's sandbox-event endpoint (a real axum server on
//! loopback that records what it receives).

mod agent;
mod artifacts;
mod control_plane;
mod deployment;
mod envd;
mod messages;
mod runtime;

pub use agent::{Setup, TestAgent, agent_client, connect_channel, create_request};
pub use artifacts::{envd_binary, process_options, test_image};
pub use control_plane::FakeControlPlane;
pub use deployment::{AgentProcess, ControlPlaneUnderTest};
pub use envd::Envd;
pub use messages::{
    by_pid, by_tag, collect, command, file_data, file_header, first_start, next_event,
    read_pty_until, shell,
};

use std::time::Duration;

/// Upper bound for anything a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `cond` until it holds (or panics after [`PATIENCE`]).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
