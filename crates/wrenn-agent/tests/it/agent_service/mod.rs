//! The agent's gRPC service end to end: a real agent on 127.0.0.1:0, tonic clients of
//! its `HostAgentService` and of the envd services it forwards, and real `wrenn-envd`
//! processes behind a test runtime (see `common`).

mod auth;
mod files;
mod lifecycle;
mod metrics;
mod processes;
mod routing;
mod shutdown;
mod snapshots;

use wrenn_proto::envd::v1 as ev;

/// `start` with the tag `tag`.
fn tagged(mut start: ev::StartRequest, tag: &str) -> ev::StartRequest {
    start.tag = Some(tag.into());
    start
}

/// True once `pid` is gone from this host's process table or is a zombie (the test
/// runtime runs envd and its processes on the host).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}
