//! Team deletion: [`delete_team_core`] is the one implementation behind the owner's
//! `DELETE /v1/teams/{id}`, the admin's `DELETE /v1/admin/teams/{id}` and account
//! deletion (`DELETE /v1/me`, for every team the user owns alone).
//!
//! A deleted team keeps its row (soft delete: the slug stays reserved), its
//! memberships, its sandbox rows (as `stopped`) and its audit trail. Everything else
//! goes: its sandboxes are destroyed on their hosts (running, paused and hibernated
//! alike), its metric points, metric snapshots, API keys and channels are deleted,
//! and its templates are removed from every online host and from the database.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tracing::{info, warn};
use wrenn_core::audit::{Actor, AuditEntry, AuditScope, AuditStatus};
use wrenn_core::id::{PLATFORM_TEAM_ID, TeamId};
use wrenn_core::lifecycle::{HostStatus, LifecycleError};
use wrenn_core::repo::RepoError;
use wrenn_extension::{ApiError, ServerContext};

/// How long removing one template from one host may take before it is given up
/// (template removal is best effort).
pub const TEMPLATE_REMOVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How many template removals run at once.
const TEMPLATE_REMOVAL_CONCURRENCY: usize = 8;

/// Why a team could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteTeamError {
    /// The platform team (all-zero id) holds the built-in templates and is never deleted.
    #[error("the platform team cannot be deleted")]
    PlatformTeam,
    /// No such team, or it is already deleted.
    #[error("team not found")]
    NotFound,
    /// Some of the team's capsules could not be marked for destruction, so the team
    /// was left in place (nothing was purged); retrying is safe.
    #[error("{failed} of {total} capsules could not be stopped; the team was not deleted: {first}")]
    Sandboxes {
        /// Capsules that could not be marked.
        failed: usize,
        /// Capsules the team had.
        total: usize,
        /// The first failure.
        first: LifecycleError,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] RepoError),
}

impl From<DeleteTeamError> for ApiError {
    fn from(e: DeleteTeamError) -> Self {
        match e {
            DeleteTeamError::PlatformTeam => ApiError::bad_request(e.to_string()),
            DeleteTeamError::NotFound => ApiError::not_found("team"),
            DeleteTeamError::Sandboxes { .. } => ApiError::internal(e),
            DeleteTeamError::Store(e) => e.into(),
        }
    }
}

/// What [`delete_team_core`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeamDeletion {
    /// Capsules sent to be destroyed (they finish in the background).
    pub sandboxes_destroyed: usize,
    /// Metric points, metric snapshots, API keys and channels deleted.
    pub rows_purged: u64,
    /// Team templates deleted.
    pub templates_deleted: u64,
    /// Whether this call soft-deleted the team (`false` if a concurrent call did).
    pub soft_deleted: bool,
}

/// Sends every active capsule of `team` (starting, running, paused, hibernated,
/// missing, …) to be destroyed through the lifecycle, which drives the host agents in
/// the background. Returns how many were sent; fails if any could not be marked.
#[tracing::instrument(skip_all, fields(team_id = %team))]
pub async fn destroy_team_sandboxes(
    ctx: &ServerContext,
    team: TeamId,
    actor: &Actor,
) -> Result<usize, DeleteTeamError> {
    let sandboxes = ctx.store.list_active_sandboxes_by_team(team).await?;
    let total = sandboxes.len();
    let mut failed = 0;
    let mut first = None;
    for sb in sandboxes {
        if let Err(e) = ctx.lifecycle.destroy(team, sb.id, actor).await {
            warn!(sandbox_id = %sb.id, error = %e, "could not mark capsule for destruction");
            failed += 1;
            first.get_or_insert(e);
        }
    }
    match first {
        None => Ok(total),
        Some(first) => Err(DeleteTeamError::Sandboxes {
            failed,
            total,
            first,
        }),
    }
}

/// Deletes a team: the single implementation behind every entry point. In order:
///
/// 1. refuses the platform team, and unknown or already-deleted teams;
/// 2. sends every active capsule to be destroyed (running, paused, hibernated, …)
///    through the lifecycle; if any cannot be marked, stops here and deletes nothing;
/// 3. hard-deletes the team's metric points, metric snapshots, API keys and channels,
///    and forgets its cached API keys at once;
/// 4. removes the team's template files from every online host (best effort) and
///    deletes its templates;
/// 5. soft-deletes the team (its slug stays reserved);
/// 6. sweeps once more for capsules created while this ran;
/// 7. records `team/delete` (warning) in the platform's admin-scoped audit trail,
///    where platform admins see it (the team's own trail is no longer readable).
///
/// Every step is idempotent, so a failed call can simply be retried.
#[tracing::instrument(skip_all, fields(team_id = %team))]
pub async fn delete_team_core(
    ctx: &ServerContext,
    team: TeamId,
    actor: &Actor,
) -> Result<TeamDeletion, DeleteTeamError> {
    if team == PLATFORM_TEAM_ID {
        return Err(DeleteTeamError::PlatformTeam);
    }
    let record = match ctx.store.get_team(team).await {
        Ok(t) if t.deleted_at.is_none() => t,
        Ok(_) | Err(RepoError::NotFound { .. }) => return Err(DeleteTeamError::NotFound),
        Err(e) => return Err(e.into()),
    };

    let mut done = TeamDeletion {
        sandboxes_destroyed: destroy_team_sandboxes(ctx, team, actor).await?,
        ..TeamDeletion::default()
    };

    let purged = ctx.store.purge_team_data(team).await;
    // Forget cached keys whatever happened: a purged key must stop working now.
    ctx.auth.evict_team(team);
    done.rows_purged = purged?;

    remove_template_files(ctx, team).await?;
    done.templates_deleted = ctx.store.delete_team_templates(team).await?;

    done.soft_deleted = ctx.store.soft_delete_team(team).await?;

    // A capsule created between the listing above and the soft delete would survive
    // (the team accepted requests until then): catch it now. Best effort.
    match destroy_team_sandboxes(ctx, team, actor).await {
        Ok(n) => done.sandboxes_destroyed += n,
        Err(e) => warn!(error = %e, "could not destroy capsules created during team deletion"),
    }

    if !done.soft_deleted {
        // A concurrent call finished first and recorded the deletion.
        return Ok(done);
    }
    ctx.audit(
        AuditEntry::new(
            PLATFORM_TEAM_ID,
            actor.clone(),
            "team",
            Some(team.to_string()),
            "delete",
        )
        .scope(AuditScope::Admin)
        .status(AuditStatus::Warning)
        .metadata(json!({ "name": record.name, "slug": record.slug })),
    )
    .await;
    info!(
        sandboxes = done.sandboxes_destroyed,
        rows_purged = done.rows_purged,
        templates = done.templates_deleted,
        "team deleted"
    );
    Ok(done)
}

/// Asks every online host to delete the files of every template the team owns.
/// Failures are logged: a host that misses this keeps orphaned files, nothing more.
async fn remove_template_files(ctx: &ServerContext, team: TeamId) -> Result<(), RepoError> {
    let templates = ctx.store.list_team_owned_templates(team).await?;
    if templates.is_empty() {
        return Ok(());
    }
    let hosts: Vec<_> = ctx
        .store
        .list_active_hosts()
        .await?
        .into_iter()
        .filter(|h| h.status == HostStatus::Online)
        .map(|h| h.id)
        .collect();
    let mut pairs = Vec::with_capacity(hosts.len() * templates.len());
    for host in &hosts {
        pairs.extend(templates.iter().map(|t| (*host, t.id)));
    }
    let agents = ctx.agents.clone();
    let calls = pairs.into_iter().map(move |(host, template)| {
        let agents = agents.clone();
        async move {
            let call = agents.delete_snapshot(host, team, template);
            match tokio::time::timeout(TEMPLATE_REMOVAL_TIMEOUT, call).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(host_id = %host, template_id = %template, error = %e, "could not remove template files"),
                Err(_) => warn!(host_id = %host, template_id = %template, "removing template files timed out"),
            }
        }
    });
    futures::stream::iter(calls)
        .buffer_unordered(TEMPLATE_REMOVAL_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    Ok(())
}
