//! The heartbeat: a registered agent tells the control plane it is alive, at once and
//! then every `WRENN_HEARTBEAT_INTERVAL_SECS` (default
//! [`DEFAULT_HEARTBEAT_INTERVAL`](wrenn_core::config::DEFAULT_HEARTBEAT_INTERVAL);
//! `POST {cp}/v1/hosts/{id}/heartbeat`, header `X-Host-Token`, empty body). The control
//! plane marks a host `unreachable` after 90 s (by default) without one and its
//! sandboxes `missing`.
//!
//! What each answer does:
//!
//! | answer | action |
//! |---|---|
//! | 2xx | failures reset |
//! | 401, 403 | refresh the credentials ([`ControlPlane::refresh`]), store them, beat again at once; if the control plane **refuses** the refresh token, pause every running sandbox and stop heartbeating (the agent can no longer prove who it is; an operator re-registers it) |
//! | 404 | the host was deleted: remove the credentials file and shut the agent down |
//! | transport error, other status | retried sooner ([`RETRY_FIRST`], doubling up to the interval); once no beat has been answered for [`INTERVALS_BEFORE_PAUSE`] intervals every running sandbox is paused (once, until a beat succeeds again), since the control plane will soon consider them missing |

use crate::runtime::error_chain;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::manager::SandboxManager;
use crate::registration::{ControlPlane, Credentials, HostCredentials};
use wrenn_core::host_api::{HOST_TOKEN_HEADER, heartbeat_path};

/// How long one heartbeat request may take.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat intervals without an answer after which running sandboxes are paused
/// (the control plane marks the host unreachable after three).
pub const INTERVALS_BEFORE_PAUSE: u32 = 2;
/// The first retry after a failed beat; each further failure doubles it, up to the
/// interval.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);

/// Why the heartbeat stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatEnd {
    /// The agent is shutting down.
    Stopped,
    /// The control plane refused both the JWT and the refresh token.
    CredentialsRefused,
    /// The control plane no longer knows this host (404).
    HostDeleted,
}

/// The heartbeat task's settings and collaborators.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The credentials it authenticates with (refreshed in place).
    pub credentials: Credentials,
    /// Whose sandboxes are paused when the control plane is lost.
    pub manager: Arc<SandboxManager>,
    /// Time between beats.
    pub interval: Duration,
}

/// One beat's outcome as the loop sees it.
enum Beat {
    Ok,
    Refused,
    Gone,
    Failed(String),
}

impl Heartbeat {
    /// Beats until `stop` is cancelled or the control plane ends the relationship
    /// (see the module docs). On [`HeartbeatEnd::HostDeleted`] the credentials file is
    /// already removed; the caller shuts the agent down.
    pub async fn run(self, stop: CancellationToken) -> HeartbeatEnd {
        let host_id = self.credentials.host_id();
        let mut failures = 0u32;
        let mut last_answer = tokio::time::Instant::now();
        let mut paused = false;
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return HeartbeatEnd::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
            let mut beat = self.beat().await;
            if matches!(beat, Beat::Refused) {
                let current = self.credentials.get();
                match self.control_plane.refresh(&current).await {
                    Ok(new) => {
                        tracing::info!(host_id = %host_id, "host credentials refreshed");
                        if let Err(e) = self.credentials.replace(new).await {
                            tracing::error!(host_id = %host_id, "refreshed credentials not stored: {}", error_chain(&e));
                        }
                        beat = self.beat().await;
                    }
                    Err(e) if e.is_refused() => {
                        tracing::error!(
                            host_id = %host_id,
                            "the control plane refused this host's refresh token ({}); \
                             pausing every sandbox and stopping the heartbeat: re-register the agent",
                            error_chain(&e)
                        );
                        if !paused {
                            self.pause_all().await;
                        }
                        return HeartbeatEnd::CredentialsRefused;
                    }
                    Err(e) => beat = Beat::Failed(format!("refresh failed: {}", error_chain(&e))),
                }
            }
            match beat {
                Beat::Ok => {
                    if failures > 0 {
                        tracing::info!(host_id = %host_id, failures, "heartbeat answered again");
                    }
                    failures = 0;
                    last_answer = tokio::time::Instant::now();
                    paused = false;
                }
                Beat::Gone => {
                    tracing::warn!(
                        host_id = %host_id,
                        "the control plane does not know this host any more; removing its credentials and shutting down"
                    );
                    if let Some(file) = self.credentials.file() {
                        if let Err(e) = HostCredentials::remove(file) {
                            tracing::error!("{}", error_chain(&e));
                        }
                    }
                    return HeartbeatEnd::HostDeleted;
                }
                Beat::Refused => {
                    // Refused again right after a successful refresh: count it.
                    failures += 1;
                    tracing::warn!(host_id = %host_id, failures, "heartbeat refused after a refresh");
                }
                Beat::Failed(why) => {
                    failures += 1;
                    tracing::warn!(host_id = %host_id, failures, "heartbeat failed: {why}");
                }
            }
            wait = self.interval;
            if failures > 0 {
                wait = retry_delay(failures).min(self.interval);
                if last_answer.elapsed() >= self.interval * INTERVALS_BEFORE_PAUSE && !paused {
                    tracing::warn!(
                        host_id = %host_id,
                        failures,
                        "control plane unreachable; pausing every running sandbox"
                    );
                    self.pause_all().await;
                    paused = true;
                }
            }
        }
    }

    async fn beat(&self) -> Beat {
        let creds = self.credentials.get();
        let url = self.control_plane.url(&heartbeat_path(creds.host_id));
        let sent = self
            .control_plane
            .http()
            .post(url)
            .timeout(HEARTBEAT_TIMEOUT)
            .header(HOST_TOKEN_HEADER, creds.jwt)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Beat::Ok,
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => Beat::Refused,
            Ok(r) if r.status().as_u16() == 404 => Beat::Gone,
            Ok(r) => Beat::Failed(format!("answered {}", r.status())),
            Err(e) => Beat::Failed(error_chain(&e)),
        }
    }

    async fn pause_all(&self) {
        let out = self.manager.pause_all().await;
        tracing::info!(
            paused = out.paused.len(),
            failed = out.failed.len(),
            "sandboxes paused (control plane lost)"
        );
    }
}

/// How long to wait after the `failures`-th failed beat in a row.
fn retry_delay(failures: u32) -> Duration {
    RETRY_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_beats_are_retried_sooner_and_back_off() {
        assert_eq!(retry_delay(1), RETRY_FIRST);
        assert_eq!(retry_delay(2), RETRY_FIRST * 2);
        assert_eq!(retry_delay(4), RETRY_FIRST * 8);
        assert!(retry_delay(u32::MAX) > wrenn_core::config::DEFAULT_HEARTBEAT_INTERVAL);
    }
}
