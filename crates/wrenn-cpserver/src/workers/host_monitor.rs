//! The host monitor: the safety net that reconciles what the control plane believes
//! with what the hosts actually run (DESIGN §4).
//!
//! Each pass:
//! 1. **Passive** — a host whose last heartbeat is older than
//!    [`MonitorSettings::unreachable_after`] becomes `unreachable`, and its live
//!    sandboxes `missing` (audited and published as `host.down`).
//! 2. **Active** — for every online host, the agent's inventory is compared with the
//!    rows: missing-but-alive rows come back with the agent's status; running rows the
//!    agent no longer has become `paused` (when its idle reaper paused them) or
//!    `stopped`; rows the agent reports paused, hibernated or (dead) in error follow
//!    it, and paused or hibernated rows it runs are running (a lost resume outcome);
//!    transient rows
//!    stuck past the grace period are resolved (`starting`/`resuming` → `running` when
//!    alive, else `error`; `pausing` → the agent's status or `error`; `stopping` →
//!    `stopped` once gone; `snapshotting` → the agent's status after its longer grace);
//!    and sandboxes the host runs that the control plane destroyed, never knew or
//!    placed on another host are destroyed on the host.
//!
//! Every write is a conditional update, so a lifecycle task or an event that gets
//! there first wins and the monitor changes nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};
use wrenn_core::agents::AgentInventory;
use wrenn_core::audit::Actor;
use wrenn_core::audit::AuditStatus;
use wrenn_core::config::{
    Config, DEFAULT_HOST_UNREACHABLE_AFTER, DEFAULT_SNAPSHOT_GRACE, DEFAULT_TRANSIENT_GRACE,
};
use wrenn_core::events::{Event, PLATFORM_STREAM, PlatformEvent, PlatformEventKind};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::{HostStatus, SandboxStatus};
use wrenn_core::model::{Host, Sandbox};
use wrenn_extension::{ServerContext, Worker, WorkerError};

use crate::host_identity::{host_health_audit, publish_host_event};

use SandboxStatus::*;

/// Tunables of the monitor (the control plane's [`Config`]; the default is the
/// configuration's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorSettings {
    /// Heartbeat age after which a host is unreachable
    /// (`WRENN_HOST_UNREACHABLE_AFTER_SECS`, default 90 s).
    pub unreachable_after: Duration,
    /// How long a transient status may last before the monitor resolves it
    /// (`WRENN_TRANSIENT_GRACE_SECS`, default 120 s).
    pub transient_grace: Duration,
    /// The same for `snapshotting`, which copies whole disks
    /// (`WRENN_SNAPSHOT_GRACE_SECS`, default 900 s).
    pub snapshot_grace: Duration,
}

impl MonitorSettings {
    /// The settings `config` gives.
    pub fn from_config(config: &Config) -> Self {
        Self {
            unreachable_after: config.host_unreachable_after,
            transient_grace: config.transient_grace,
            snapshot_grace: config.snapshot_grace,
        }
    }
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            unreachable_after: DEFAULT_HOST_UNREACHABLE_AFTER,
            transient_grace: DEFAULT_TRANSIENT_GRACE,
            snapshot_grace: DEFAULT_SNAPSHOT_GRACE,
        }
    }
}

/// The worker, running a pass with `settings` every
/// `WRENN_HOST_MONITOR_INTERVAL_SECS` (default 60 s). The first pass comes one
/// interval after start, so hosts get the chance to heartbeat and report before
/// anything is judged.
pub fn worker(interval: Duration, settings: MonitorSettings) -> Worker {
    Worker::new("host-monitor", move |ctx, cancel| async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            if let Err(e) = run_pass(&ctx, &settings).await {
                warn!(error = %e, "host monitor pass failed");
            }
        }
    })
}

/// What one pass changed (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Hosts marked unreachable.
    pub hosts_down: usize,
    /// Rows whose status the pass changed.
    pub sandboxes_changed: usize,
    /// Sandboxes destroyed on hosts because the control plane no longer wants them.
    pub orphans_destroyed: usize,
}

/// One monitor pass over every active host.
pub async fn run_pass(ctx: &ServerContext, settings: &MonitorSettings) -> Result<(), WorkerError> {
    let report = pass(ctx, settings).await?;
    if report != PassReport::default() {
        info!(?report, "host monitor pass");
    }
    Ok(())
}

/// One pass, returning what changed.
pub async fn pass(
    ctx: &ServerContext,
    settings: &MonitorSettings,
) -> Result<PassReport, WorkerError> {
    let mut report = PassReport::default();
    let now = Utc::now();
    let stale_before = now - chrono::Duration::from_std(settings.unreachable_after)?;
    for host in ctx.store.list_active_hosts().await? {
        let stale = host.last_heartbeat_at.is_none_or(|t| t < stale_before);
        if stale {
            if host.status != HostStatus::Unreachable && mark_down(ctx, &host).await? {
                report.hosts_down += 1;
            }
            continue;
        }
        if host.status != HostStatus::Online {
            continue;
        }
        let inventory = match ctx.agents.list_sandboxes(host.id).await {
            Ok(inv) => inv,
            Err(e) => {
                warn!(host_id = %host.id, error = %e, "cannot list the host's sandboxes; skipping it this pass");
                continue;
            }
        };
        reconcile(ctx, &host, &inventory, settings, &mut report).await?;
    }
    Ok(report)
}

async fn mark_down(ctx: &ServerContext, host: &Host) -> Result<bool, WorkerError> {
    if !ctx
        .store
        .set_host_status_if(host.id, host.status, HostStatus::Unreachable)
        .await?
    {
        return Ok(false);
    }
    let missing = ctx.store.mark_host_sandboxes_missing(host.id).await?;
    warn!(host_id = %host.id, missing, "host stopped heartbeating; marked unreachable");
    ctx.audit(
        host_health_audit(host, "marked_down")
            .status(AuditStatus::Error)
            .metadata(serde_json::json!({ "missing_sandboxes": missing })),
    )
    .await;
    publish_host_event(ctx, host, PlatformEventKind::HostDown).await;
    Ok(true)
}

/// Moves `sb` from its current status to `to`, conditionally; counts a win.
async fn settle(
    ctx: &ServerContext,
    sb: &Sandbox,
    to: SandboxStatus,
    report: &mut PassReport,
) -> Result<(), WorkerError> {
    let changed = if to == Running {
        ctx.store
            .running_if(sb.id, sb.status, &sb.host_ip, &Default::default())
            .await?
    } else {
        ctx.store.status_if(sb.id, sb.status, to).await?
    };
    if let Some(row) = changed {
        info!(sandbox_id = %sb.id, from = %sb.status, to = %to, "reconciled");
        report.sandboxes_changed += 1;
        // Subscribers hear of a change the monitor made like of any other.
        if let Some(kind) = PlatformEventKind::of_capsule_status(to) {
            let ev = PlatformEvent::capsule(kind, row.team_id, Actor::system(), row.id);
            ctx.lifecycle
                .events()
                .publish(PLATFORM_STREAM, Event::Platform(ev))
                .await;
        }
    }
    Ok(())
}

/// The stable status a sandbox the agent reports should have in the database.
fn stable(agent: SandboxStatus) -> Option<SandboxStatus> {
    match agent {
        Running | Paused | Hibernated => Some(agent),
        _ => None,
    }
}

async fn reconcile(
    ctx: &ServerContext,
    host: &Host,
    inventory: &AgentInventory,
    settings: &MonitorSettings,
    report: &mut PassReport,
) -> Result<(), WorkerError> {
    let on_host: HashMap<SandboxId, SandboxStatus> = inventory
        .sandboxes
        .iter()
        .map(|s| (s.sandbox_id, s.status))
        .collect();
    let auto_paused: HashSet<SandboxId> = inventory.auto_paused.iter().copied().collect();
    let now = Utc::now();
    let rows = ctx
        .store
        .list_sandboxes_by_host(
            host.id,
            &SandboxStatus::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .collect::<Vec<_>>(),
        )
        .await?;
    let known: HashSet<SandboxId> = rows.iter().map(|s| s.id).collect();
    for sb in &rows {
        let agent = on_host.get(&sb.id).copied();
        let age = now
            .signed_duration_since(sb.last_updated)
            .to_std()
            .unwrap_or_default();
        match (sb.status, agent) {
            (Missing, Some(a)) => {
                if let Some(to) = stable(a) {
                    settle(ctx, sb, to, report).await?;
                }
            }
            (Missing, None) => settle(ctx, sb, Stopped, report).await?,
            (Running, None) => {
                let to = if auto_paused.contains(&sb.id) {
                    Paused
                } else {
                    Stopped
                };
                settle(ctx, sb, to, report).await?;
            }
            (Running, Some(a @ (Paused | Hibernated))) => settle(ctx, sb, a, report).await?,
            (Paused, Some(Hibernated)) => settle(ctx, sb, Hibernated, report).await?,
            // A resume whose outcome was lost (its host went away while answering):
            // the host runs it, so it is running.
            (Paused | Hibernated, Some(Running)) => settle(ctx, sb, Running, report).await?,
            // The agent noticed the sandbox died (its `failed` event carries the
            // reason; this is the fallback when that event was lost).
            (Running | Paused, Some(Error)) => settle(ctx, sb, Error, report).await?,
            (Paused | Hibernated, None) => settle(ctx, sb, Error, report).await?,
            (Starting | Resuming | Pausing | Stopping, _) if age >= settings.transient_grace => {
                let to = match (sb.status, agent) {
                    (Stopping, None) => Stopped,
                    (Stopping, Some(_)) => {
                        // The destroy never reached the host: do it now.
                        destroy_on_host(ctx, host, sb.id, report).await;
                        Stopped
                    }
                    (_, Some(a)) => stable(a).unwrap_or(Error),
                    (_, None) => Error,
                };
                settle(ctx, sb, to, report).await?;
            }
            (Snapshotting, a) if age >= settings.snapshot_grace => {
                settle(ctx, sb, a.and_then(stable).unwrap_or(Error), report).await?;
            }
            _ => {}
        }
    }
    // Sandboxes the host runs that the control plane does not want.
    for (&id, _) in on_host.iter().filter(|(id, _)| !known.contains(id)) {
        match ctx.store.get_sandbox(id).await {
            // A row created after our listing: leave it to the next pass. A live row
            // on another host (a create placed again after this one was unreachable)
            // makes this copy an orphan.
            Ok(sb) if !sb.status.is_terminal() && sb.host_id == host.id => {}
            Ok(_) | Err(wrenn_core::repo::RepoError::NotFound { .. }) => {
                destroy_on_host(ctx, host, id, report).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn destroy_on_host(ctx: &ServerContext, host: &Host, id: SandboxId, report: &mut PassReport) {
    match ctx.agents.destroy_sandbox(host.id, id).await {
        Ok(()) | Err(wrenn_core::agents::HostCallError::NotFound(_)) => {
            info!(host_id = %host.id, sandbox_id = %id, "destroyed an orphaned sandbox on its host");
            report.orphans_destroyed += 1;
        }
        Err(e) => {
            warn!(host_id = %host.id, sandbox_id = %id, error = %e, "could not destroy orphaned sandbox")
        }
    }
}
