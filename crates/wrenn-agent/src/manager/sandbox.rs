//! One [`Sandbox`]: its operation lock, its state record, its activity clock, its
//! proxy connections and its metric rings.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wrenn_core::id::{SandboxId, TeamId};
use wrenn_core::lifecycle::SandboxStatus;

use super::SandboxView;
use crate::conntrack::ConnTracker;
use crate::envd::EnvdClient;
use crate::error::{AgentError, AgentResult};
use crate::metrics::MetricRings;
use crate::runtime::{Instance, SandboxConfig};

/// Mutable state of a sandbox (never held across an `.await`).
#[derive(Debug)]
pub(super) struct State {
    pub(super) status: SandboxStatus,
    pub(super) config: SandboxConfig,
    pub(super) template_name: String,
    pub(super) created_at_unix: i64,
    pub(super) timeout_sec: u32,
    /// The live instance (running, paused), or the last one (hibernated).
    pub(super) instance: Option<Instance>,
    /// Cached envd client of the live instance.
    pub(super) envd: Option<EnvdClient>,
    pub(super) user_metadata: BTreeMap<String, String>,
    pub(super) agent_metadata: BTreeMap<String, String>,
    pub(super) auto_paused: bool,
    pub(super) paused_at: Option<Instant>,
    /// envd access token of this sandbox.
    pub(super) access_token: String,
    /// Bumped whenever `instance` is replaced, so a watcher of an older instance
    /// recognises that its news is stale.
    pub(super) generation: u64,
    /// Stops the watcher of the live instance.
    pub(super) watch: Option<tokio_util::sync::CancellationToken>,
    /// Why the sandbox is in `error`, when it died or could not be adopted.
    pub(super) failure: Option<String>,
}

/// One sandbox: its lock, state, activity clock, proxy connections and metrics.
#[derive(Debug)]
pub struct Sandbox {
    pub(super) id: SandboxId,
    pub(super) op: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    last_active_ms: AtomicI64,
    pub(super) conns: ConnTracker,
    pub(super) metrics: Mutex<MetricRings>,
    /// Consecutive failed health checks.
    pub(super) health_failures: std::sync::atomic::AtomicU32,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn random_token() -> String {
    let b: [u8; 24] = rand::random();
    hex::encode(b)
}

impl Sandbox {
    pub(super) fn new(config: SandboxConfig, status: SandboxStatus) -> Self {
        let now = now_ms();
        Self {
            id: config.id,
            op: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                status,
                config,
                template_name: String::new(),
                created_at_unix: now / 1000,
                timeout_sec: 0,
                instance: None,
                envd: None,
                user_metadata: BTreeMap::new(),
                agent_metadata: BTreeMap::new(),
                auto_paused: false,
                paused_at: None,
                access_token: random_token(),
                generation: 0,
                watch: None,
                failure: None,
            }),
            last_active_ms: AtomicI64::new(now),
            conns: ConnTracker::new(),
            metrics: Mutex::new(MetricRings::default()),
            health_failures: std::sync::atomic::AtomicU32::new(0),
        }
    }

    pub(super) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st)
    }

    /// The sandbox id.
    pub fn id(&self) -> SandboxId {
        self.id
    }

    /// Current status.
    pub fn status(&self) -> SandboxStatus {
        self.with(|s| s.status)
    }

    /// Owning team.
    pub fn team_id(&self) -> TeamId {
        self.with(|s| s.config.team_id)
    }

    /// Empties its sample rings into the form the control plane keeps (`None` when
    /// there were none): called when sampling stops for good or until a resume.
    pub fn take_metric_history(&self) -> Option<wrenn_core::model::MetricHistory> {
        self.metrics.lock().ok().and_then(|mut m| m.take_history())
    }

    /// Its proxy connection tracker.
    pub fn conns(&self) -> &ConnTracker {
        &self.conns
    }

    /// The live instance's reachable address, if running.
    pub fn running_host_ip(&self) -> Option<String> {
        self.with(|s| {
            (s.status == SandboxStatus::Running)
                .then(|| s.instance.as_ref().map(|i| i.host_ip.clone()))
                .flatten()
        })
    }

    /// Marks the sandbox active now (pushes back its inactivity timeout).
    pub fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Last activity, milliseconds since the epoch.
    pub fn last_active_ms(&self) -> i64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    /// A snapshot of everything known about the sandbox.
    pub fn view(&self) -> SandboxView {
        let last_active_unix = self.last_active_ms() / 1000;
        self.with(|s| {
            let live = matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused);
            SandboxView {
                status: s.status,
                config: s.config.clone(),
                template_name: s.template_name.clone(),
                host_ip: if live {
                    s.instance
                        .as_ref()
                        .map(|i| i.host_ip.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                },
                created_at_unix: s.created_at_unix,
                last_active_unix,
                timeout_sec: s.timeout_sec,
                metadata: merged_metadata(&s.user_metadata, &s.agent_metadata),
                auto_paused: s.auto_paused && s.status == SandboxStatus::Paused,
            }
        })
    }

    /// Fails with NotFound once the sandbox has been destroyed (an operation that
    /// waited for the lock behind a destroy).
    pub(super) fn check_alive(&self) -> AgentResult<()> {
        if self.status() == SandboxStatus::Stopped {
            return Err(AgentError::SandboxNotFound(self.id));
        }
        Ok(())
    }

    pub(super) fn wrong_state(&self, status: SandboxStatus, what: &str) -> AgentError {
        AgentError::WrongState {
            id: self.id,
            status,
            what: what.to_owned(),
        }
    }

    /// The envd client of the live instance (built on first use).
    pub(super) fn envd_client(&self) -> AgentResult<EnvdClient> {
        self.with(|s| {
            if let Some(c) = &s.envd {
                return Ok(c.clone());
            }
            let instance = s.instance.as_ref().ok_or_else(|| {
                AgentError::Internal(format!("sandbox {} has no live instance", self.id))
            })?;
            let client = EnvdClient::connect(&instance.envd, Some(&s.access_token))?;
            s.envd = Some(client.clone());
            Ok(client)
        })
    }

    pub(super) fn instance(&self) -> AgentResult<Instance> {
        self.with(|s| s.instance.clone()).ok_or_else(|| {
            AgentError::Internal(format!("sandbox {} has no live instance", self.id))
        })
    }

    pub(super) fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_active_ms()).max(0) as u64)
    }
}

pub(super) fn merged_metadata(
    user: &BTreeMap<String, String>,
    agent: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut m = user.clone();
    m.extend(agent.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}
