//! The sandbox-event callback client: lifecycle outcomes the agent reaches on its own
//! (or that the control plane should learn about even if an RPC response is lost) are
//! pushed to the control plane.
//!
//! Each event is `POST {cp_url}/v1/hosts/sandbox-events` with the header
//! `X-Host-Token: <host JWT>` and a JSON body that is
//! [`wrenn_core::events::SandboxEvent`] serialised, for example
//! `{"event":"auto_paused","sandbox_id":"cl-…","team_id":"team-…","host_id":"host-…","timestamp":1700000000}`
//! (optional `error`, `host_ip`, `metadata`).
//!
//! Delivery: events go through a bounded queue ([`EventsConfig::queue_capacity`],
//! overflow is dropped with a warning, so a control plane that is down never makes the
//! agent grow) to one background task that sends them in order. A transport error, a
//! 5xx, 408 or 429 is retried with exponential backoff (250 ms doubling to 10 s, up to
//! [`EventsConfig::max_attempts`] attempts); any other non-2xx answer is logged and the
//! event dropped (retrying would not change it). The control plane treats these events
//! as a fallback writer with conditional updates, so a duplicate or a lost event never
//! corrupts its state; its host monitor reconciles the rest.
//!
//! Without a control-plane URL or credentials (standalone use, tests, not yet
//! registered) events are only logged. The JWT is read from the shared
//! [`Credentials`] at each attempt, so a refresh by the heartbeat takes effect at once.

use crate::runtime::error_chain;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wrenn_core::events::{SandboxEvent, SandboxEventKind};
use wrenn_core::host_api::{HOST_TOKEN_HEADER, SANDBOX_EVENTS_PATH};
use wrenn_core::id::{HostId, SandboxId, TeamId};

use crate::registration::Credentials;

/// Where and how events are delivered.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Control-plane base URL (`http(s)://host:port`, no trailing `/`); `None` = log only.
    pub cp_url: Option<String>,
    /// This host's id and JWT (sent as `X-Host-Token`); required to post events.
    pub credentials: Option<Credentials>,
    /// Events waiting to be sent, at most (default 1024).
    pub queue_capacity: usize,
    /// Attempts per event before it is dropped (default 8).
    pub max_attempts: u32,
    /// First retry delay (default 250 ms); doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest retry delay (default 10 s).
    pub max_backoff: Duration,
    /// Timeout of one POST (default 10 s).
    pub request_timeout: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            cp_url: None,
            credentials: None,
            queue_capacity: 1024,
            max_attempts: 8,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Queues sandbox events for delivery to the control plane. Cheap to share
/// (`Arc<EventSender>`).
#[derive(Debug)]
pub struct EventSender {
    host_id: Option<HostId>,
    tx: Mutex<Option<mpsc::Sender<SandboxEvent>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl EventSender {
    /// Starts the delivery task (when `config` has a URL and credentials). Must be
    /// called inside a Tokio runtime.
    pub fn start(config: EventsConfig) -> Self {
        let host_id = config.credentials.as_ref().map(Credentials::host_id);
        let (tx, worker) = match (&config.cp_url, host_id) {
            (Some(_), Some(_)) => {
                let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
                let worker = tokio::spawn(deliver(config.clone(), rx));
                (Some(tx), Some(worker))
            }
            (Some(url), None) => {
                tracing::warn!(
                    cp_url = %url,
                    "no host id: sandbox events are only logged until the host is registered"
                );
                (None, None)
            }
            _ => (None, None),
        };
        Self {
            host_id,
            tx: Mutex::new(tx),
            worker: Mutex::new(worker),
        }
    }

    /// An event sender that only logs.
    pub fn log_only() -> Self {
        Self {
            host_id: None,
            tx: Mutex::new(None),
            worker: Mutex::new(None),
        }
    }

    /// Queues an event (never blocks; drops it with a warning if the queue is full).
    pub fn emit(
        &self,
        kind: SandboxEventKind,
        sandbox_id: SandboxId,
        team_id: Option<TeamId>,
        error: Option<String>,
    ) {
        self.emit_with(kind, sandbox_id, |ev| {
            ev.team_id = team_id;
            ev.error = error;
        });
    }

    /// Queues an event after `fill` has set its optional fields (team, host ip,
    /// metadata, error).
    pub fn emit_with(
        &self,
        kind: SandboxEventKind,
        sandbox_id: SandboxId,
        fill: impl FnOnce(&mut SandboxEvent),
    ) {
        // The host id is a placeholder when there is none: the event is then only logged.
        let mut event = SandboxEvent::new(kind, sandbox_id, self.host_id.unwrap_or_default());
        fill(&mut event);
        tracing::info!(
            event = kind.as_str(),
            sandbox_id = %sandbox_id,
            error = event.error.as_deref().unwrap_or(""),
            "sandbox event"
        );
        if self.host_id.is_none() {
            return;
        }
        let tx = self.tx.lock().ok().and_then(|tx| tx.clone());
        if let Some(tx) = tx {
            if let Err(e) = tx.try_send(event) {
                tracing::warn!(sandbox_id = %sandbox_id, event = kind.as_str(), "sandbox event dropped: {}", error_chain(&e));
            }
        }
    }

    /// Stops accepting events and waits up to `timeout` for the queued ones to be
    /// delivered (graceful shutdown). Idempotent.
    pub async fn close(&self, timeout: Duration) {
        let tx = self.tx.lock().ok().and_then(|mut tx| tx.take());
        drop(tx);
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(mut worker) = worker {
            if tokio::time::timeout(timeout, &mut worker).await.is_err() {
                tracing::warn!("undelivered sandbox events dropped at shutdown");
                worker.abort();
            }
        }
    }
}

/// The delivery loop: one event at a time, in order.
async fn deliver(config: EventsConfig, mut rx: mpsc::Receiver<SandboxEvent>) {
    let Some(base) = config.cp_url.clone() else {
        return;
    };
    let url = format!("{}{}", base.trim_end_matches('/'), SANDBOX_EVENTS_PATH);
    let client = match reqwest::Client::builder()
        .timeout(config.request_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                "cannot build the event client, events are dropped: {}",
                error_chain(&e)
            );
            return;
        }
    };
    while let Some(event) = rx.recv().await {
        let mut delay = config.initial_backoff;
        for attempt in 1..=config.max_attempts.max(1) {
            let mut req = client.post(&url).json(&event);
            if let Some(creds) = &config.credentials {
                req = req.header(HOST_TOKEN_HEADER, creds.jwt());
            }
            let retry = match req.send().await {
                Ok(resp) if resp.status().is_success() => break,
                Ok(resp) => {
                    let status = resp.status();
                    let retryable = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    tracing::warn!(
                        sandbox_id = %event.sandbox_id,
                        event = event.event.as_str(),
                        attempt,
                        "control plane answered {status} to a sandbox event"
                    );
                    retryable
                }
                Err(e) => {
                    tracing::warn!(
                        sandbox_id = %event.sandbox_id,
                        event = event.event.as_str(),
                        attempt,
                        "sandbox event not delivered: {}",
                        error_chain(&e)
                    );
                    true
                }
            };
            if !retry || attempt == config.max_attempts.max(1) {
                tracing::error!(
                    sandbox_id = %event.sandbox_id,
                    event = event.event.as_str(),
                    "sandbox event dropped"
                );
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(config.max_backoff);
        }
    }
}
