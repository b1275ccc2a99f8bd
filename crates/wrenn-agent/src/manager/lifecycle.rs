//! Lifecycle operations of [`SandboxManager`]: create, destroy, pause, resume, ping
//! and pause-all, plus envd's Init (defaults and access token).

use crate::runtime::error_chain;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wrenn_core::events::SandboxEventKind;
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_proto::envd::v1::{InitRequest, PrepareSnapshotRequest};

use super::liveness::stop_watch;
use super::sandbox::merged_metadata;
use super::settings::committed;
use super::{
    AGENT_VERSION, CreateSpec, PauseAllOutcome, PauseCause, Sandbox, SandboxManager, Started,
    caught, placeholder_config,
};
use crate::envd::EnvdClient;
use crate::error::{AgentError, AgentResult};
use crate::runtime::Instance;

impl SandboxManager {
    /// Creates and boots a sandbox; returns once its envd answers and its defaults are
    /// applied. On any failure, a panic included, what was made of the sandbox is
    /// destroyed, it is removed and reported `failed`.
    pub async fn create(&self, spec: CreateSpec) -> AgentResult<Started> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(AgentError::Unavailable("the agent is shutting down".into()));
        }
        let id = spec.config.id;
        let sb = Arc::new(Sandbox::new(spec.config.clone(), SandboxStatus::Starting));
        sb.with(|s| {
            s.template_name = spec.template_name.clone();
            s.timeout_sec = spec.timeout_sec;
            s.user_metadata = spec.metadata.clone();
        });
        {
            let mut map = self.map_mut();
            match map.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    return Err(AgentError::AlreadyExists(format!(
                        "sandbox {id} already exists on this host"
                    )));
                }
                std::collections::hash_map::Entry::Vacant(_) => {
                    if let Some(capacity) = &self.settings.capacity {
                        capacity.admit(
                            committed(&map),
                            spec.config.vcpus,
                            spec.config.memory_mb,
                        )?;
                    }
                    map.insert(id, Arc::clone(&sb));
                }
            }
        }
        let _op = sb.op.lock().await;
        // A panic while starting (a bug: in the runtime, in envd's client, in a
        // tracing layer) fails this create like any error: what was made is destroyed
        // and the sandbox is reported failed, never left half made.
        match caught("create", self.start(&sb, &spec)).await {
            Ok(started) => Ok(started),
            Err(e) => {
                self.abandon(&sb, &e).await;
                Err(e)
            }
        }
    }

    /// Boots the instance of a new sandbox (its op lock held), applies its defaults
    /// and marks it running.
    async fn start(&self, sb: &Arc<Sandbox>, spec: &CreateSpec) -> AgentResult<Started> {
        let (id, team) = (sb.id, spec.config.team_id);
        let instance = self.runtime.create(&spec.config).await?;
        sb.with(|s| s.instance = Some(instance.clone()));
        let envd = sb.envd_client()?;
        // `create` returns once envd answers; a runtime that asked it says which
        // version answered, and asking again would only cost a round trip.
        let envd_version = match instance.metadata.get("envd_version") {
            Some(version) => version.clone(),
            None => {
                envd.wait_ready(self.settings.envd_ready_timeout)
                    .await?
                    .version
            }
        };
        let token = sb.with(|s| s.access_token.clone());
        init_envd(
            &envd,
            &spec.config.default_user,
            &spec.config.default_env,
            &token,
        )
        .await?;
        let started = sb.with(|s| {
            s.agent_metadata = self.agent_metadata(&instance, &envd_version);
            s.status = SandboxStatus::Running;
            Started {
                host_ip: instance.host_ip.clone(),
                metadata: merged_metadata(&s.user_metadata, &s.agent_metadata),
            }
        });
        sb.touch();
        self.persist(sb);
        self.watch(sb, instance);
        let (ip, md) = (started.host_ip.clone(), started.metadata.clone());
        self.events.emit_with(SandboxEventKind::Started, id, |ev| {
            ev.team_id = Some(team);
            ev.host_ip = Some(ip);
            ev.metadata = Some(md);
        });
        Ok(started)
    }

    /// After a failed (or panicked) create, with the op lock held: destroys whatever
    /// the runtime made, forgets the sandbox and reports it failed with `e`.
    async fn abandon(&self, sb: &Arc<Sandbox>, e: &AgentError) {
        let (id, team) = (sb.id, sb.team_id());
        tracing::warn!(sandbox_id = %id, "create failed: {}", error_chain(e));
        if let Err(d) = caught("cleanup", async { Ok(self.runtime.destroy(id).await?) }).await {
            tracing::error!(sandbox_id = %id, "cleanup after a failed create: {}", error_chain(&d));
        }
        sb.with(|s| {
            s.status = SandboxStatus::Stopped;
            s.envd = None;
            s.instance = None;
            stop_watch(s);
        });
        self.remove(sb);
        self.events.emit(
            SandboxEventKind::Failed,
            id,
            Some(team),
            Some(e.wire_message()),
        );
    }

    pub(super) fn agent_metadata(
        &self,
        instance: &Instance,
        envd_version: &str,
    ) -> BTreeMap<String, String> {
        let mut m = instance.metadata.clone();
        m.insert("runtime".into(), self.runtime.name().into());
        m.insert("agent_version".into(), AGENT_VERSION.into());
        if !envd_version.is_empty() {
            m.insert("envd_version".into(), envd_version.into());
        }
        m
    }

    /// Destroys a sandbox in any state, or the leftover on-disk state of one the agent
    /// no longer tracks. NotFound if there is neither.
    pub async fn destroy(&self, id: SandboxId) -> AgentResult<()> {
        let Some(sb) = self.lookup(id) else {
            return self.destroy_leftovers(id).await;
        };
        // Refuse new proxy connections at once; in-flight ones end with the sandbox.
        sb.conns.drain(Duration::ZERO).await;
        let _op = sb.op.lock().await;
        if sb.status() == SandboxStatus::Stopped {
            return Ok(());
        }
        let team = sb.team_id();
        sb.with(|s| {
            s.status = SandboxStatus::Stopping;
            s.envd = None;
        });
        // A panicking teardown leaves the sandbox in `error` (a later destroy tries
        // again), not `stopping`.
        match caught("destroy", async { Ok(self.runtime.destroy(id).await?) }).await {
            Ok(()) => {
                sb.with(|s| {
                    s.status = SandboxStatus::Stopped;
                    s.instance = None;
                    stop_watch(s);
                });
                let metrics = sb.take_metric_history();
                self.remove(&sb);
                self.events.emit_with(SandboxEventKind::Stopped, id, |ev| {
                    ev.team_id = Some(team);
                    ev.metrics = metrics;
                });
                Ok(())
            }
            Err(e) => {
                sb.with(|s| s.status = SandboxStatus::Error);
                self.events.emit(
                    SandboxEventKind::Failed,
                    id,
                    Some(team),
                    Some(e.wire_message()),
                );
                Err(e)
            }
        }
    }

    /// Removes leftovers (`sandboxes/{id}`, `snapshots/{id}`) of an untracked sandbox.
    async fn destroy_leftovers(&self, id: SandboxId) -> AgentResult<()> {
        let dirs = [self.layout.sandbox_dir(id), self.layout.snapshot_dir(id)];
        let exists = tokio::task::spawn_blocking(move || dirs.iter().any(|d| d.exists()))
            .await
            .unwrap_or(false);
        if !exists {
            return Err(AgentError::SandboxNotFound(id));
        }
        // Reserve the id while cleaning, so a concurrent create of it waits its turn.
        let placeholder = Arc::new(Sandbox::new(
            placeholder_config(id),
            SandboxStatus::Stopping,
        ));
        let tracked = {
            let mut map = self.map_mut();
            match map.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => true,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Arc::clone(&placeholder));
                    false
                }
            }
        };
        if tracked {
            // Created meanwhile: destroy it like any tracked sandbox.
            return Box::pin(self.destroy(id)).await;
        }
        let result = self.runtime.destroy(id).await;
        placeholder.with(|s| s.status = SandboxStatus::Stopped);
        self.remove(&placeholder);
        result.map_err(Into::into)
    }

    /// Pauses a running sandbox (manual pause).
    pub async fn pause(&self, id: SandboxId) -> AgentResult<()> {
        self.pause_with(id, PauseCause::Request).await
    }

    /// Pauses a running sandbox for `cause`. An idle pause re-checks, under the lock,
    /// that the sandbox is still idle (and otherwise does nothing and fails with
    /// FailedPrecondition).
    pub async fn pause_with(&self, id: SandboxId, cause: PauseCause) -> AgentResult<()> {
        let sb = self.get(id)?;
        let _op = sb.op.lock().await;
        sb.check_alive()?;
        let status = sb.status();
        if status != SandboxStatus::Running {
            return Err(sb.wrong_state(status, "pause needs a running sandbox"));
        }
        if cause == PauseCause::Idle && !self.is_idle(&sb) {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is no longer idle"
            )));
        }
        self.pause_locked(&sb, cause).await
    }

    fn effective_timeout(&self, timeout_sec: u32) -> Option<Duration> {
        (timeout_sec > 0)
            .then(|| Duration::from_secs(u64::from(timeout_sec)).max(self.settings.min_timeout))
    }

    /// Running, with a timeout, and idle longer than it.
    pub fn is_idle(&self, sb: &Sandbox) -> bool {
        let (status, timeout) = sb.with(|s| (s.status, s.timeout_sec));
        status == SandboxStatus::Running
            && self
                .effective_timeout(timeout)
                .is_some_and(|t| sb.idle_for() > t)
    }

    /// Drains connections, lets envd prepare, and freezes; with the op lock held and the
    /// sandbox running.
    async fn pause_locked(&self, sb: &Arc<Sandbox>, cause: PauseCause) -> AgentResult<()> {
        let id = sb.id;
        let team = sb.team_id();
        let instance = sb.instance()?;
        sb.with(|s| s.status = SandboxStatus::Pausing);
        if !sb.conns.drain(self.settings.drain_grace).await {
            tracing::info!(sandbox_id = %id, "proxy connections still open after the drain grace");
        }
        // A pause that keeps memory (cgroup freezer, VM memory snapshot) keeps the page
        // cache too: nothing to flush. Only a pause that drops memory asks envd to sync.
        if !self.runtime.capabilities().memory_snapshots {
            self.prepare_snapshot(sb).await;
        }
        match self.runtime.pause(&instance).await {
            Ok(()) => {
                sb.with(|s| {
                    s.status = SandboxStatus::Paused;
                    s.paused_at = Some(Instant::now());
                    s.auto_paused = cause != PauseCause::Request;
                    s.envd = None;
                });
                // The control plane takes the samples of a pause it asked for before
                // it records the pause; one the agent decided on hands them over.
                let (kind, metrics) = match cause {
                    PauseCause::Request => (SandboxEventKind::Paused, None),
                    PauseCause::Idle | PauseCause::PauseAll => {
                        (SandboxEventKind::AutoPaused, sb.take_metric_history())
                    }
                };
                self.events.emit_with(kind, id, |ev| {
                    ev.team_id = Some(team);
                    ev.metrics = metrics;
                });
                Ok(())
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, "pause failed: {}", error_chain(&e));
                sb.conns.reset();
                let back = self.recover_running(sb, &instance).await;
                if back {
                    self.events.emit(
                        SandboxEventKind::PauseFailed,
                        id,
                        Some(team),
                        Some(e.wire_message()),
                    );
                } else {
                    self.events.emit(
                        SandboxEventKind::Failed,
                        id,
                        Some(team),
                        Some(e.wire_message()),
                    );
                }
                Err(e.into())
            }
        }
    }

    /// After a failed freeze: makes sure the sandbox runs (thawing it if the runtime
    /// left it half-frozen) and answers; sets `running`, or `error` if it does not.
    pub(super) async fn recover_running(&self, sb: &Arc<Sandbox>, instance: &Instance) -> bool {
        sb.with(|s| s.envd = None);
        let answers = |budget| async move {
            match sb.envd_client() {
                Ok(envd) => envd.wait_ready(budget).await.is_ok(),
                Err(_) => false,
            }
        };
        let mut ok = answers(Duration::from_secs(2)).await;
        if !ok {
            if let Err(e) = self.runtime.resume(instance).await {
                tracing::debug!(sandbox_id = %sb.id, "thaw after a failed pause: {}", error_chain(&e));
            }
            ok = answers(Duration::from_secs(5)).await;
        }
        sb.with(|s| {
            s.status = if ok {
                SandboxStatus::Running
            } else {
                SandboxStatus::Error
            }
        });
        ok
    }

    /// Gives a sandbox's envd its access token again after a template was taken of it;
    /// if that fails the sandbox is paused (never left running without its token).
    pub(super) async fn restore_envd_token(&self, sb: &Arc<Sandbox>) {
        let token = sb.with(|s| {
            s.envd = None;
            s.access_token.clone()
        });
        let set = async {
            let envd = sb.envd_client()?;
            envd.wait_ready(self.settings.envd_ready_timeout).await?;
            set_envd_token(&envd, &token).await
        }
        .await;
        if let Err(e) = set {
            tracing::warn!(sandbox_id = %sb.id, "giving envd its token back: {}; pausing the sandbox", error_chain(&e));
            if let Ok(instance) = sb.instance()
                && self.runtime.pause(&instance).await.is_ok()
            {
                sb.with(|s| {
                    s.status = SandboxStatus::Paused;
                    s.paused_at = Some(Instant::now());
                    s.envd = None;
                });
            } else {
                sb.with(|s| s.status = SandboxStatus::Error);
            }
        }
    }

    /// Asks envd to prepare for a freeze (best effort, bounded).
    pub(super) async fn prepare_snapshot(&self, sb: &Arc<Sandbox>) {
        if let Ok(envd) = sb.envd_client() {
            let mut system = envd.system;
            match tokio::time::timeout(
                self.settings.prepare_timeout,
                system.prepare_snapshot(PrepareSnapshotRequest {}),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(sandbox_id = %sb.id, "PrepareSnapshot: {}", error_chain(&e))
                }
                Err(_) => tracing::debug!(sandbox_id = %sb.id, "PrepareSnapshot timed out"),
            }
        }
    }

    /// Resumes a paused or hibernated sandbox. `timeout_sec` replaces the stored value,
    /// `default_user` (if non-empty) replaces the default user and `default_env` is
    /// merged into the defaults. On failure the sandbox keeps its previous state.
    pub async fn resume(
        &self,
        id: SandboxId,
        timeout_sec: u32,
        default_user: String,
        default_env: BTreeMap<String, String>,
    ) -> AgentResult<Started> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(AgentError::Unavailable("the agent is shutting down".into()));
        }
        let sb = self.get(id)?;
        let _op = sb.op.lock().await;
        sb.check_alive()?;
        let prev = sb.status();
        if !matches!(prev, SandboxStatus::Paused | SandboxStatus::Hibernated) {
            return Err(sb.wrong_state(prev, "resume needs a paused or hibernated sandbox"));
        }
        let team = sb.team_id();
        let (old_config, token) = sb.with(|s| (s.config.clone(), s.access_token.clone()));
        let mut config = old_config.clone();
        if !default_user.is_empty() {
            config.default_user = default_user.clone();
        }
        config.default_env.extend(default_env.clone());
        {
            // A hibernated sandbox takes its memory and vCPUs back: admit it first,
            // atomically with the other creates and restores.
            let map = self.map_mut();
            if prev == SandboxStatus::Hibernated {
                if let Some(capacity) = &self.settings.capacity {
                    capacity.admit(committed(&map), config.vcpus, config.memory_mb)?;
                }
            }
            sb.with(|s| s.status = SandboxStatus::Resuming);
        }

        let result: AgentResult<(Instance, String)> = if prev == SandboxStatus::Paused {
            let instance = sb.instance()?;
            match self.runtime.resume(&instance).await {
                Err(e) => Err(e.into()),
                Ok(()) => {
                    sb.with(|s| s.envd = None);
                    let keeps_memory = self.runtime.capabilities().templates_keep_processes;
                    let ready = async {
                        let envd = sb.envd_client()?;
                        let health = envd.wait_ready(self.settings.envd_ready_timeout).await?;
                        // A VM's envd also learns the time again (its clock stood still).
                        if keeps_memory || !default_user.is_empty() || !default_env.is_empty() {
                            init_envd(&envd, &default_user, &default_env, &token).await?;
                        }
                        Ok::<_, AgentError>(health.version)
                    }
                    .await;
                    match ready {
                        Ok(v) => Ok((instance, v)),
                        Err(e) => {
                            // Back to paused, as it was.
                            if let Err(pe) = self.runtime.pause(&instance).await {
                                tracing::warn!(sandbox_id = %id, "re-pause after a failed resume: {}", error_chain(&pe));
                                sb.with(|s| s.status = SandboxStatus::Error);
                                return Err(e);
                            }
                            Err(e)
                        }
                    }
                }
            }
        } else {
            match self.runtime.restore(&config).await {
                Err(e) => Err(e.into()),
                Ok(instance) => {
                    sb.with(|s| {
                        s.instance = Some(instance.clone());
                        s.envd = None;
                    });
                    let ready = async {
                        let envd = sb.envd_client()?;
                        let health = envd.wait_ready(self.settings.envd_ready_timeout).await?;
                        init_envd(&envd, &config.default_user, &config.default_env, &token).await?;
                        Ok::<_, AgentError>(health.version)
                    }
                    .await;
                    match ready {
                        Ok(v) => Ok((instance, v)),
                        Err(e) => {
                            if let Err(he) = self.runtime.hibernate(&instance).await {
                                tracing::warn!(sandbox_id = %id, "re-hibernate after a failed restore: {}", error_chain(&he));
                                sb.with(|s| {
                                    s.status = SandboxStatus::Error;
                                    s.envd = None;
                                });
                                return Err(e);
                            }
                            Err(e)
                        }
                    }
                }
            }
        };
        match result {
            Ok((instance, envd_version)) => {
                let started = sb.with(|s| {
                    s.config = config;
                    s.timeout_sec = timeout_sec;
                    s.status = SandboxStatus::Running;
                    s.auto_paused = false;
                    s.paused_at = None;
                    s.agent_metadata = self.agent_metadata(&instance, &envd_version);
                    s.instance = Some(instance.clone());
                    Started {
                        host_ip: instance.host_ip.clone(),
                        metadata: merged_metadata(&s.user_metadata, &s.agent_metadata),
                    }
                });
                sb.conns.reset();
                sb.touch();
                self.persist(&sb);
                if prev == SandboxStatus::Hibernated {
                    self.watch(&sb, instance);
                }
                let (ip, md) = (started.host_ip.clone(), started.metadata.clone());
                self.events.emit_with(SandboxEventKind::Resumed, id, |ev| {
                    ev.team_id = Some(team);
                    ev.host_ip = Some(ip);
                    ev.metadata = Some(md);
                });
                Ok(started)
            }
            Err(e) => {
                sb.with(|s| {
                    if s.status == SandboxStatus::Resuming {
                        s.status = prev;
                    }
                    s.envd = None;
                });
                self.events.emit(
                    SandboxEventKind::ResumeFailed,
                    id,
                    Some(team),
                    Some(e.wire_message()),
                );
                Err(e)
            }
        }
    }

    /// Marks a running sandbox active now.
    pub fn ping(&self, id: SandboxId) -> AgentResult<()> {
        let sb = self.get(id)?;
        let status = sb.status();
        if status != SandboxStatus::Running {
            return Err(sb.wrong_state(status, "ping needs a running sandbox"));
        }
        sb.touch();
        Ok(())
    }

    /// Pauses every running sandbox concurrently, each with its own deadline; they are
    /// reported as auto-paused.
    pub async fn pause_all(self: &Arc<Self>) -> PauseAllOutcome {
        let running: Vec<SandboxId> = self
            .all()
            .iter()
            .filter(|s| s.status() == SandboxStatus::Running)
            .map(|s| s.id)
            .collect();
        let budget = self.settings.pause_all_timeout;
        let tasks = running.into_iter().map(|id| {
            let mgr = Arc::clone(self);
            let handle =
                tokio::spawn(async move { mgr.pause_with(id, PauseCause::PauseAll).await });
            async move {
                let r = match tokio::time::timeout(budget, handle).await {
                    Ok(Ok(r)) => r.map_err(|e| error_chain(&e)),
                    Ok(Err(e)) => Err(format!("pause task failed: {}", error_chain(&e))),
                    Err(_) => Err(format!("pause still running after {budget:?}")),
                };
                (id, r)
            }
        });
        let mut out = PauseAllOutcome::default();
        for (id, r) in futures::future::join_all(tasks).await {
            match r {
                Ok(()) => out.paused.push(id),
                Err(e) => out.failed.push((id, e)),
            }
        }
        out
    }
}

/// Sets only envd's access token (empty: none) through Init.
pub(super) async fn set_envd_token(envd: &EnvdClient, token: &str) -> AgentResult<()> {
    init_envd(envd, "", &BTreeMap::new(), token).await
}

/// Applies defaults and the access token through envd's Init.
async fn init_envd(
    envd: &EnvdClient,
    default_user: &str,
    default_env: &BTreeMap<String, String>,
    token: &str,
) -> AgentResult<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let req = InitRequest {
        default_user: (!default_user.is_empty()).then(|| default_user.to_owned()),
        default_workdir: None,
        env_vars: default_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        access_token: Some(token.to_owned()),
        hostname: None,
        timestamp: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
    };
    let mut system = envd.system.clone();
    system.init(req).await?;
    Ok(())
}
