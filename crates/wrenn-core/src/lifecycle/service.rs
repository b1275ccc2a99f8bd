//! The [`Lifecycle`] service: every sandbox state change goes through here.
//!
//! Each operation validates its input and performs its first conditional write
//! synchronously (so the caller learns at once whether it was accepted), then drives
//! the host agent in a background task and records the outcome with another
//! conditional write. Whoever is late — the task, the event consumer, the host
//! monitor, a concurrent request — finds the row no longer in the status it expected
//! and changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::agents::{HostAgents, HostCallError, SandboxSpec, StartedSandbox};
use crate::audit::Actor;
use crate::config::DEFAULT_TEAM_MAX_CAPSULES;
use crate::events::{
    Event, EventBus, PLATFORM_STREAM, PlatformEvent, PlatformEventKind, Publisher, SANDBOX_STREAM,
    SandboxEvent, SandboxEventKind,
};
use crate::id::{BUILTIN_TEMPLATE_NAME, SandboxId, TeamId};
use crate::lifecycle::CreateSandbox;
use crate::lifecycle::SandboxStatus::{self, *};
use crate::model::{NewSandbox, Sandbox};
use crate::repo::{Quota, RepoError, Store};
use crate::scheduler::{Placement, Scheduler, SchedulerError};
use crate::validate::{self, ValidationError};

/// Closes when a background lifecycle operation has ended (see `settle`).
type Finished = tokio::sync::oneshot::Receiver<()>;

/// Why a lifecycle operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The sandbox or template does not exist (for this team).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The sandbox is not in a status that allows the operation.
    #[error("capsule {id} is {status}; cannot {action}")]
    InvalidState {
        /// The sandbox.
        id: SandboxId,
        /// Its current status.
        status: SandboxStatus,
        /// The refused operation.
        action: &'static str,
    },
    /// The template is not there yet: a build is producing it.
    #[error("template {name} is still building (step {step}/{total}); try again shortly")]
    TemplateBuilding {
        /// The template.
        name: String,
        /// The build's current step.
        step: i32,
        /// Its step count.
        total: i32,
    },
    /// A template name is reserved by a platform template.
    #[error("template name {0:?} is reserved by a platform template")]
    NameReserved(String),
    /// A template name is already used by the team.
    #[error("template name {0:?} is already taken; pass overwrite=true to replace it")]
    NameTaken(String),
    /// No host can take the sandbox.
    #[error(transparent)]
    NoHosts(SchedulerError),
    /// The team already has as many live capsules as it may.
    #[error(
        "team capsule quota exceeded: {live} capsules are live (starting, running, pausing, \
         paused, resuming or snapshotting) and the limit is {limit}; destroy or hibernate one first"
    )]
    QuotaExceeded {
        /// The team's limit (`WRENN_TEAM_MAX_CAPSULES`).
        limit: u32,
        /// Its live capsules.
        live: i64,
    },
    /// The host agent failed.
    #[error(transparent)]
    Agent(#[from] HostCallError),
    /// Storage failed.
    #[error(transparent)]
    Store(RepoError),
}

impl From<RepoError> for LifecycleError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound { entity } => Self::NotFound(entity),
            other => Self::Store(other),
        }
    }
}

impl From<SchedulerError> for LifecycleError {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::Store(e) => Self::Store(e),
            other => Self::NoHosts(other),
        }
    }
}

/// How long background steps may take before they count as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Agent create.
    pub create: Duration,
    /// Agent pause.
    pub pause: Duration,
    /// Agent resume.
    pub resume: Duration,
    /// Agent destroy (per attempt).
    pub destroy: Duration,
    /// Agent snapshot.
    pub snapshot: Duration,
    /// Liveness ping after a failed operation.
    pub ping: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            create: Duration::from_secs(600),
            pause: Duration::from_secs(600),
            resume: Duration::from_secs(300),
            destroy: Duration::from_secs(300),
            snapshot: Duration::from_secs(300),
            ping: Duration::from_secs(10),
        }
    }
}

pub(super) struct Inner {
    pub(super) store: Arc<dyn Store>,
    pub(super) agents: Arc<dyn HostAgents>,
    /// Where events go (kept through a bus outage).
    pub(super) events: Publisher,
    scheduler: Arc<dyn Scheduler>,
    pub(super) tasks: TaskTracker,
    pub(super) timeouts: Timeouts,
    /// Most live capsules per team (see [`crate::repo::QUOTA_STATUSES`]).
    team_max_capsules: AtomicU32,
    /// Template copies in progress.
    pub(super) copies: super::template_copies::CopyLocks,
    /// Runs templates' start commands (see [`super::start_command`]).
    pub(super) data_plane: std::sync::OnceLock<Arc<dyn crate::data_plane::DataPlane>>,
}

/// The sandbox lifecycle service. Cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("backend", &self.inner.store.backend())
            .field("tasks", &self.inner.tasks.len())
            .finish()
    }
}

/// A sandbox after a failed agent call, as a ping tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Liveness {
    /// It answers.
    Alive,
    /// Its host answered that it is gone or broken.
    Gone,
    /// Its host could not be reached (down, restarting, partitioned): nothing is
    /// known, and nothing may be concluded about the sandbox.
    Unknown,
}

pub(super) async fn with_timeout<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, HostCallError>>,
) -> Result<T, HostCallError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(HostCallError::Timeout(format!(
            "{what} took longer than {limit:?}"
        )))
    })
}

/// Hosts a create tries at most: the one chosen, then others while those it tried
/// could not be reached or had no room.
pub const MAX_CREATE_PLACEMENTS: usize = 3;

impl Lifecycle {
    /// A service over the given backends, with default [`Timeouts`].
    pub fn new(
        store: Arc<dyn Store>,
        agents: Arc<dyn HostAgents>,
        bus: Arc<dyn EventBus>,
        scheduler: Arc<dyn Scheduler>,
    ) -> Self {
        Self::with_timeouts(store, agents, bus, scheduler, Timeouts::default())
    }

    /// A service with custom timeouts.
    pub fn with_timeouts(
        store: Arc<dyn Store>,
        agents: Arc<dyn HostAgents>,
        bus: Arc<dyn EventBus>,
        scheduler: Arc<dyn Scheduler>,
        timeouts: Timeouts,
    ) -> Self {
        let tasks = TaskTracker::new();
        Self {
            inner: Arc::new(Inner {
                store,
                agents,
                events: Publisher::new(bus, tasks.clone()),
                scheduler,
                tasks,
                timeouts,
                team_max_capsules: AtomicU32::new(DEFAULT_TEAM_MAX_CAPSULES),
                copies: Default::default(),
                data_plane: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sets the most live capsules a team may have (default
    /// [`DEFAULT_TEAM_MAX_CAPSULES`]); enforced on create and on resuming a hibernated
    /// capsule, atomically in the store.
    pub fn set_team_max_capsules(&self, max: u32) {
        self.inner
            .team_max_capsules
            .store(max.max(1), Ordering::Relaxed);
    }

    fn team_max_capsules(&self) -> u32 {
        self.inner.team_max_capsules.load(Ordering::Relaxed)
    }

    /// Waits until every background task started so far has finished.
    pub async fn wait_idle(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.tasks.reopen();
    }

    /// Stops accepting background work and waits up to `grace` for running tasks.
    /// Returns `false` if tasks were still running when the grace ran out (their rows
    /// stay transient and the host monitor resolves them).
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_ok()
    }

    /// Number of background tasks in flight.
    pub fn tasks_in_flight(&self) -> usize {
        self.inner.tasks.len()
    }

    pub(super) async fn publish_sandbox(&self, event: SandboxEvent) {
        self.inner
            .events
            .publish(SANDBOX_STREAM, Event::Sandbox(event))
            .await;
    }

    pub(super) async fn publish_platform(
        &self,
        kind: PlatformEventKind,
        sandbox: &Sandbox,
        actor: &Actor,
    ) {
        let ev = PlatformEvent::capsule(kind, sandbox.team_id, actor.clone(), sandbox.id);
        self.inner
            .events
            .publish(PLATFORM_STREAM, Event::Platform(ev))
            .await;
    }

    /// Where the service publishes events: others publishing platform events use
    /// it too, so that they also survive a bus outage and keep their order.
    pub fn events(&self) -> &Publisher {
        &self.inner.events
    }

    pub(super) fn outcome(&self, kind: SandboxEventKind, sandbox: &Sandbox) -> SandboxEvent {
        let mut ev = SandboxEvent::new(kind, sandbox.id, sandbox.host_id);
        ev.team_id = Some(sandbox.team_id);
        ev
    }

    pub(super) async fn invalid_state(
        &self,
        team: TeamId,
        id: SandboxId,
        action: &'static str,
    ) -> LifecycleError {
        match self.inner.store.get_team_sandbox(team, id).await {
            Ok(sb) => LifecycleError::InvalidState {
                id,
                status: sb.status,
                action,
            },
            Err(e) => e.into(),
        }
    }

    /// Moves the sandbox from whichever of `from` it is in to `to`, conditionally.
    /// Returns the status it left, or `None` if it is in none of them.
    pub(super) async fn transition_from_any(
        &self,
        sandbox: &Sandbox,
        from: &[SandboxStatus],
        to: SandboxStatus,
    ) -> Result<Option<(SandboxStatus, Sandbox)>, LifecycleError> {
        let mut current = sandbox.status;
        // A few rounds: each lost race re-reads the row and tries its new status.
        for _ in 0..8 {
            if !from.contains(&current) {
                return Ok(None);
            }
            if let Some(sb) = self.inner.store.status_if(sandbox.id, current, to).await? {
                return Ok(Some((current, sb)));
            }
            current = self.inner.store.get_sandbox(sandbox.id).await?.status;
        }
        Ok(None)
    }

    /// Creates a sandbox: validates, picks a host, inserts the row as `starting` and
    /// starts it in the background. Returns the `starting` row.
    pub async fn create(
        &self,
        team: TeamId,
        actor: &Actor,
        req: CreateSandbox,
    ) -> Result<Sandbox, LifecycleError> {
        self.create_waiting(team, actor, req, Duration::ZERO).await
    }

    /// [`create`](Self::create), then waits up to `wait` for the start to finish:
    /// returns the row as it is then (`running` or `error` when the start finished in
    /// time, else `starting`). The start goes on in the background either way; a
    /// caller that stops waiting changes nothing.
    pub async fn create_waiting(
        &self,
        team: TeamId,
        actor: &Actor,
        req: CreateSandbox,
        wait: Duration,
    ) -> Result<Sandbox, LifecycleError> {
        let (sandbox, finished) = self.start_create(team, actor, req).await?;
        Ok(self.settle(sandbox, finished, wait).await)
    }

    /// Waits up to `wait` for a background operation to finish (`finished` closes when
    /// its task ends, however it ended), then returns the row as the store has it; with
    /// no wait, `row` as it is.
    async fn settle(&self, row: Sandbox, finished: Finished, wait: Duration) -> Sandbox {
        if wait.is_zero() {
            return row;
        }
        let _ = tokio::time::timeout(wait, finished).await;
        self.inner.store.get_sandbox(row.id).await.unwrap_or(row)
    }

    async fn start_create(
        &self,
        team: TeamId,
        actor: &Actor,
        req: CreateSandbox,
    ) -> Result<(Sandbox, Finished), LifecycleError> {
        let store = &self.inner.store;
        let name = req.template.as_deref().unwrap_or(BUILTIN_TEMPLATE_NAME);
        validate::safe_name("template", name)?;
        validate::capsule_metadata(&req.metadata)?;
        // Independent lookups: one round of waiting, not two.
        let (template, team_row) =
            futures::try_join!(self.template_for_create(team, name), async {
                Ok(store.get_team(team).await?)
            })?;
        let resources = req.resources.resolve(&template)?;
        let timeout_sec = req
            .timeout_sec
            .map(validate::timeout_sec)
            .transpose()?
            .unwrap_or(0);
        if team_row.deleted_at.is_some() {
            return Err(LifecycleError::NotFound("team"));
        }
        let placement = Placement {
            team_id: team,
            team_is_byoc: team_row.is_byoc,
            resources,
            avoid: Vec::new(),
        };
        let host_id = self.inner.scheduler.select_host(&placement).await?;
        let limit = self.team_max_capsules();
        let inserted = store
            .insert_sandbox_within_quota(
                NewSandbox {
                    id: SandboxId::new(),
                    team_id: team,
                    host_id,
                    template: template.name.clone(),
                    template_id: template.id,
                    template_team_id: template.team_id,
                    status: Starting,
                    resources,
                    timeout_sec,
                    metadata: req.metadata,
                },
                limit,
            )
            .await?;
        let sandbox = match inserted {
            Quota::Done(sb) => sb,
            Quota::Exceeded { live } => return Err(LifecycleError::QuotaExceeded { limit, live }),
        };
        self.publish_platform(PlatformEventKind::CapsuleCreated, &sandbox, actor)
            .await;
        let span = info_span!("sandbox.create", sandbox_id = %sandbox.id, team_id = %team, host_id = %host_id);
        let (this, sb, spec, actor) = (
            self.clone(),
            sandbox.clone(),
            SandboxSpec::for_sandbox(&sandbox, Some(&template)),
            actor.clone(),
        );
        let finished = self.spawn(span, async move {
            let mut placement = placement;
            let mut sb = sb;
            let res = loop {
                let res = match this.place_template(&template, sb.host_id).await {
                    Ok(()) => {
                        with_timeout(
                            this.inner.timeouts.create,
                            "create",
                            this.inner.agents.create_sandbox(sb.host_id, &spec),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                // A host that could not be reached (its agent died, or is restarting)
                // or had no room after all leaves the create to another one; whatever
                // an unreachable one may have started is destroyed by the host monitor
                // once it answers again (its row is elsewhere).
                if let Err(
                    HostCallError::Unavailable(reason) | HostCallError::ResourceExhausted(reason),
                ) = &res
                    && placement.avoid.len() + 1 < MAX_CREATE_PLACEMENTS
                {
                    placement.avoid.push(sb.host_id);
                    if let Some(moved) = this.place_again(&sb, &placement).await {
                        warn!(%reason, from = %sb.host_id, to = %moved.host_id, "host unreachable: the create goes to another host");
                        sb = moved;
                        continue;
                    }
                }
                break res;
            };
            let started = res.is_ok();
            this.finish_start(&sb, Starting, Error, res, &actor).await;
            if started {
                this.run_start_command(sb.id, &template).await;
            }
        });
        Ok((sandbox, finished))
    }

    /// Another host for a create whose host could not be reached: the row moved to
    /// it, or `None` (no other host has room, or the row moved on meanwhile).
    async fn place_again(&self, sb: &Sandbox, placement: &Placement) -> Option<Sandbox> {
        let to = self.inner.scheduler.select_host(placement).await.ok()?;
        match self
            .inner
            .store
            .rehost_if_starting(sb.id, sb.host_id, to)
            .await
        {
            Ok(moved) => moved,
            Err(e) => {
                warn!(error = %e, "could not move the create to another host");
                None
            }
        }
    }

    /// The template a create in `team` starts from; a template that a build is still
    /// producing is [`LifecycleError::TemplateBuilding`], not "not found".
    async fn template_for_create(
        &self,
        team: TeamId,
        name: &str,
    ) -> Result<crate::model::Template, LifecycleError> {
        let store = &self.inner.store;
        match store.get_template_for_team(team, name).await {
            Err(RepoError::NotFound { .. }) => match store.active_build_for(team, name).await? {
                Some(build) => Err(LifecycleError::TemplateBuilding {
                    name: name.to_owned(),
                    step: build.current_step,
                    total: build.total_steps,
                }),
                None => Err(LifecycleError::NotFound("template")),
            },
            other => Ok(other?),
        }
    }

    /// Runs one background operation in `span`; what it returns closes when the
    /// operation ends.
    fn spawn(
        &self,
        span: tracing::Span,
        op: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Finished {
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        self.inner.tasks.spawn(
            async move {
                op.await;
                drop(done);
            }
            .instrument(span),
        );
        finished
    }

    /// Records the outcome of an agent create or resume that started from `expected`
    /// (nothing if the row had moved on meanwhile).
    async fn finish_start(
        &self,
        sb: &Sandbox,
        expected: SandboxStatus,
        on_failure: SandboxStatus,
        res: Result<StartedSandbox, HostCallError>,
        actor: &Actor,
    ) {
        let store = &self.inner.store;
        let (ok_kind, fail_kind) = if expected == Starting {
            (SandboxEventKind::Started, SandboxEventKind::Failed)
        } else {
            (SandboxEventKind::Resumed, SandboxEventKind::ResumeFailed)
        };
        match res {
            Ok(started) => match store
                .running_if(sb.id, expected, &started.host_ip, &started.metadata)
                .await
            {
                Ok(Some(row)) => {
                    let mut ev = self.outcome(ok_kind, &row);
                    ev.host_ip = Some(started.host_ip);
                    ev.metadata = Some(started.metadata);
                    self.publish_sandbox(ev).await;
                    self.publish_platform(PlatformEventKind::CapsuleRunning, &row, actor)
                        .await;
                }
                Ok(None) => {
                    // Someone moved the row on (a destroy, most likely). If it is on
                    // its way out, make sure the agent does not keep what it just made.
                    let current = store.get_sandbox(sb.id).await.map(|s| s.status);
                    if current.as_ref().is_ok_and(|s| *s == Running) {
                        // The agent's own `started` event got there first.
                        debug!("sandbox already recorded running by its host's event");
                    } else {
                        warn!(status = ?current, "sandbox changed while it was starting");
                    }
                    if matches!(current, Ok(Stopping | Stopped | Error)) {
                        self.destroy_on_agent(sb).await;
                    }
                }
                Err(e) => warn!(error = %e, "could not record running sandbox"),
            },
            Err(err) => {
                warn!(error = %err, "agent failed to start sandbox");
                // A resume of a sandbox the agent no longer has cannot be retried.
                let target = if matches!(err, HostCallError::NotFound(_)) {
                    Error
                } else {
                    on_failure
                };
                let moved = if target == Error {
                    store.fail_if(sb.id, expected, &err.to_string()).await
                } else {
                    store.status_if(sb.id, expected, target).await
                };
                match moved {
                    Ok(Some(row)) => {
                        let kind = if target == Error {
                            SandboxEventKind::Failed
                        } else {
                            fail_kind
                        };
                        let mut ev = self.outcome(kind, &row);
                        ev.error = Some(err.to_string());
                        self.publish_sandbox(ev).await;
                        if target == Error {
                            self.publish_platform(PlatformEventKind::CapsuleFailed, &row, actor)
                                .await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "could not record failed start"),
                }
                // A timed-out create may still complete on the host: clean it up.
                if expected == Starting
                    && matches!(
                        err,
                        HostCallError::Timeout(_) | HostCallError::Unavailable(_)
                    )
                {
                    self.destroy_on_agent(sb).await;
                }
            }
        }
    }

    /// What a failed call left of `sb`, asked of its host with a ping.
    pub(super) async fn after_failure(&self, sb: &Sandbox) -> Liveness {
        let res = with_timeout(
            self.inner.timeouts.ping,
            "ping",
            self.inner.agents.ping_sandbox(sb.host_id, sb.id),
        )
        .await;
        match res {
            Ok(()) => Liveness::Alive,
            Err(HostCallError::Unavailable(_) | HostCallError::Timeout(_)) => Liveness::Unknown,
            Err(_) => Liveness::Gone,
        }
    }

    async fn destroy_on_agent(&self, sb: &Sandbox) {
        let res = with_timeout(
            self.inner.timeouts.destroy,
            "destroy",
            self.inner.agents.destroy_sandbox(sb.host_id, sb.id),
        )
        .await;
        match res {
            Ok(()) | Err(HostCallError::NotFound(_)) => {}
            Err(e) => warn!(error = %e, "could not destroy sandbox on its host"),
        }
    }

    /// Pauses a running sandbox: `running → pausing` now, `paused` (or back to
    /// `running`, or `error` if it no longer answers) when the agent is done.
    pub async fn pause(
        &self,
        team: TeamId,
        id: SandboxId,
        actor: &Actor,
    ) -> Result<Sandbox, LifecycleError> {
        self.pause_waiting(team, id, actor, Duration::ZERO).await
    }

    /// [`pause`](Self::pause), then waits up to `wait` for the outcome: returns the
    /// row as it is then (`paused`, `running` or `error` when the agent answered in
    /// time, else `pausing`).
    pub async fn pause_waiting(
        &self,
        team: TeamId,
        id: SandboxId,
        actor: &Actor,
        wait: Duration,
    ) -> Result<Sandbox, LifecycleError> {
        let store = &self.inner.store;
        store.get_team_sandbox(team, id).await?;
        let Some(sb) = store.status_if(id, Running, Pausing).await? else {
            return Err(self.invalid_state(team, id, "pause").await);
        };
        let span =
            info_span!("sandbox.pause", sandbox_id = %id, team_id = %team, host_id = %sb.host_id);
        let (this, row, actor) = (self.clone(), sb.clone(), actor.clone());
        let finished = self.spawn(span, async move {
            let res = with_timeout(
                this.inner.timeouts.pause,
                "pause",
                this.inner.agents.pause_sandbox(row.host_id, row.id),
            )
            .await;
            this.finish_pause(&row, res, &actor).await;
        });
        Ok(self.settle(sb, finished, wait).await)
    }

    async fn finish_pause(&self, sb: &Sandbox, res: Result<(), HostCallError>, actor: &Actor) {
        let store = &self.inner.store;
        match res {
            // The samples are stored before the row says `paused`, so whoever sees
            // the pause can read them.
            Ok(()) => {
                self.keep_metric_history(sb).await;
                match store.status_if(sb.id, Pausing, Paused).await {
                    Ok(Some(row)) => {
                        self.publish_sandbox(self.outcome(SandboxEventKind::Paused, &row))
                            .await;
                        self.publish_platform(PlatformEventKind::CapsulePaused, &row, actor)
                            .await;
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "could not record paused sandbox"),
                }
            }
            Err(err) => {
                warn!(error = %err, "agent failed to pause sandbox");
                // A host that cannot be reached says nothing about the sandbox: it is
                // `running` again, and the host monitor follows the host's inventory
                // (paused, if the pause happened after all) once it answers.
                let alive = self.after_failure(sb).await != Liveness::Gone;
                let target = if alive { Running } else { Error };
                match store.status_if(sb.id, Pausing, target).await {
                    Ok(Some(row)) => {
                        let kind = if alive {
                            SandboxEventKind::PauseFailed
                        } else {
                            SandboxEventKind::Failed
                        };
                        let mut ev = self.outcome(kind, &row);
                        ev.error = Some(err.to_string());
                        self.publish_sandbox(ev).await;
                        if !alive {
                            self.publish_platform(PlatformEventKind::CapsuleFailed, &row, actor)
                                .await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "could not record failed pause"),
                }
            }
        }
    }

    /// Resumes a paused or hibernated sandbox: `→ resuming` now, `running` (or back
    /// to where it was) when the agent is done.
    pub async fn resume(
        &self,
        team: TeamId,
        id: SandboxId,
        actor: &Actor,
    ) -> Result<Sandbox, LifecycleError> {
        self.resume_waiting(team, id, actor, Duration::ZERO).await
    }

    /// [`resume`](Self::resume), then waits up to `wait` for the outcome: returns the
    /// row as it is then (`running`, back where it was, or `error` when the agent
    /// answered in time, else `resuming`).
    pub async fn resume_waiting(
        &self,
        team: TeamId,
        id: SandboxId,
        actor: &Actor,
        wait: Duration,
    ) -> Result<Sandbox, LifecycleError> {
        let store = &self.inner.store;
        let current = store.get_team_sandbox(team, id).await?;
        let Some((from, sb)) = self.begin_resume(current).await? else {
            return Err(self.invalid_state(team, id, "resume").await);
        };
        let template = store.get_template(sb.template_id).await.ok();
        let spec = SandboxSpec::for_sandbox(&sb, template.as_ref());
        let span =
            info_span!("sandbox.resume", sandbox_id = %id, team_id = %team, host_id = %sb.host_id);
        let (this, row, actor) = (self.clone(), sb.clone(), actor.clone());
        let finished = self.spawn(span, async move {
            let res = with_timeout(
                this.inner.timeouts.resume,
                "resume",
                this.inner.agents.resume_sandbox(row.host_id, &spec),
            )
            .await;
            this.finish_start(&row, Resuming, from, res, &actor).await;
        });
        Ok(self.settle(sb, finished, wait).await)
    }

    /// `paused → resuming`, or `hibernated → resuming` within the team's quota (a
    /// hibernated capsule holds no host memory and does not count, a resuming one
    /// does). Returns the status left, or `None` if it is in neither.
    async fn begin_resume(
        &self,
        mut current: Sandbox,
    ) -> Result<Option<(SandboxStatus, Sandbox)>, LifecycleError> {
        let store = &self.inner.store;
        for _ in 0..8 {
            let moved = match current.status {
                Paused => store.status_if(current.id, Paused, Resuming).await?,
                Hibernated => {
                    let limit = self.team_max_capsules();
                    match store
                        .status_if_within_quota(current.id, Hibernated, Resuming, limit)
                        .await?
                    {
                        Quota::Done(moved) => moved,
                        Quota::Exceeded { live } => {
                            return Err(LifecycleError::QuotaExceeded { limit, live });
                        }
                    }
                }
                _ => return Ok(None),
            };
            if let Some(sb) = moved {
                return Ok(Some((current.status, sb)));
            }
            current = store.get_sandbox(current.id).await?;
        }
        Ok(None)
    }

    /// Destroys a sandbox: `→ stopping` now, `stopped` when the agent is done. The
    /// row is kept. Destroying a stopped or errored sandbox changes nothing.
    pub async fn destroy(
        &self,
        team: TeamId,
        id: SandboxId,
        actor: &Actor,
    ) -> Result<Sandbox, LifecycleError> {
        self.destroy_waiting(team, id, actor, Duration::ZERO).await
    }

    /// [`destroy`](Self::destroy), then waits up to `wait` for the host: returns the
    /// row as it is then (`stopped` when the agent answered in time, else
    /// `stopping`).
    pub async fn destroy_waiting(
        &self,
        team: TeamId,
        id: SandboxId,
        actor: &Actor,
        wait: Duration,
    ) -> Result<Sandbox, LifecycleError> {
        let store = &self.inner.store;
        let current = store.get_team_sandbox(team, id).await?;
        if current.status.is_terminal() || current.status == Stopping {
            return Ok(current);
        }
        let live: Vec<SandboxStatus> = SandboxStatus::ALL
            .into_iter()
            .filter(|s| s.can_transition_to(Stopping))
            .collect();
        let Some((_, sb)) = self.transition_from_any(&current, &live, Stopping).await? else {
            // Lost to a concurrent destroy (or it ended meanwhile): report where it is.
            return Ok(store.get_team_sandbox(team, id).await?);
        };
        let finished = self.spawn_destroy(sb.clone(), actor.clone());
        Ok(self.settle(sb, finished, wait).await)
    }

    /// Takes the samples the agent holds for `sb` and stores them. Best effort: if
    /// this fails the agent still holds them and hands them over with its next
    /// hibernation, destruction or failure event.
    async fn keep_metric_history(&self, sb: &Sandbox) {
        let taken = with_timeout(
            self.inner.timeouts.ping,
            "take metric history",
            self.inner.agents.take_metric_history(sb.host_id, sb.id),
        )
        .await;
        match taken {
            Ok(history) => {
                if let Err(e) = self
                    .inner
                    .store
                    .insert_metric_history(sb.id, &history)
                    .await
                {
                    warn!(error = %e, "could not store the sandbox's metric history");
                }
            }
            Err(HostCallError::NotFound(_)) => {}
            Err(e) => debug!(error = %e, "could not take the sandbox's metric history"),
        }
    }

    fn spawn_destroy(&self, sb: Sandbox, actor: Actor) -> Finished {
        let span = info_span!("sandbox.destroy", sandbox_id = %sb.id, team_id = %sb.team_id, host_id = %sb.host_id);
        let this = self.clone();
        self.spawn(span, async move {
            this.keep_metric_history(&sb).await;
            let mut last_err = None;
            for attempt in 0..3u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
                }
                match with_timeout(
                    this.inner.timeouts.destroy,
                    "destroy",
                    this.inner.agents.destroy_sandbox(sb.host_id, sb.id),
                )
                .await
                {
                    Ok(()) | Err(HostCallError::NotFound(_)) => {
                        last_err = None;
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            if let Some(e) = last_err {
                // Leave it `stopping`: the host monitor finishes the job when the
                // host answers again, or resolves it after the grace period.
                warn!(error = %e, "could not destroy sandbox; left stopping");
                return;
            }
            match this.inner.store.status_if(sb.id, Stopping, Stopped).await {
                Ok(Some(row)) => {
                    this.publish_sandbox(this.outcome(SandboxEventKind::Stopped, &row))
                        .await;
                    this.publish_platform(PlatformEventKind::CapsuleDestroyed, &row, &actor)
                        .await;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "could not record stopped sandbox"),
            }
        })
    }

    /// Checks that a running sandbox answers and marks it active.
    pub async fn ping(&self, team: TeamId, id: SandboxId) -> Result<(), LifecycleError> {
        let store = &self.inner.store;
        let sb = store.get_team_sandbox(team, id).await?;
        if sb.status != Running {
            return Err(LifecycleError::InvalidState {
                id,
                status: sb.status,
                action: "ping",
            });
        }
        with_timeout(
            self.inner.timeouts.ping,
            "ping",
            self.inner.agents.ping_sandbox(sb.host_id, id),
        )
        .await?;
        store.touch_sandbox(id, chrono::Utc::now()).await?;
        Ok(())
    }
}
