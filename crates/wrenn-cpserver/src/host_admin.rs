//! Managing hosts: creation (with a one-time registration token), listing and
//! visibility, deletion (destroying their capsules with `force`), tags and token
//! regeneration — the domain behind the user-facing routes of `api::hosts`. The
//! agent's own identity (registration, refresh, heartbeat) is
//! [`crate::host_identity`]'s.
//!
//! **Who may do what.** A `regular` (platform) host is created and managed by a
//! platform admin only. A `byoc` host belongs to a team that has BYOC enabled; it is
//! created and managed by a platform admin or by that team's owner or admin (roles
//! re-read from the database), and it is visible to every member of that team. A
//! host the caller may not see is [`HostError::HostNotFound`], one they may see but
//! not manage [`HostError::NotManager`].

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use wrenn_core::audit::{AuditEntry, AuditScope, AuditStatus};
use wrenn_core::auth::{OpaqueToken, Role};
use wrenn_core::id::{HostId, SandboxId, TeamId};
use wrenn_core::lifecycle::{HostStatus, SandboxStatus};
use wrenn_core::model::{Host, HostKind, Sandbox};
use wrenn_core::repo::{NewHost, RepoError};
use wrenn_extension::{ApiError, ServerContext, UserAuth};

use crate::host_identity::{host_team, issue_registration_token};

/// Sandbox statuses that keep a host from being deleted without `force`.
pub const ACTIVE_SANDBOX_STATUSES: [SandboxStatus; 9] = [
    SandboxStatus::Pending,
    SandboxStatus::Starting,
    SandboxStatus::Running,
    SandboxStatus::Pausing,
    SandboxStatus::Paused,
    SandboxStatus::Resuming,
    SandboxStatus::Snapshotting,
    SandboxStatus::Hibernated,
    SandboxStatus::Missing,
];

/// Longest host tag.
pub const MAX_TAG_LEN: usize = 64;
/// Longest provider / availability-zone label.
pub const MAX_LABEL_LEN: usize = 128;
/// Longest agent address.
pub const MAX_ADDRESS_LEN: usize = 255;
/// Longest architecture label.
pub const MAX_ARCH_LEN: usize = 32;
/// How long a forced delete waits for its sandboxes' destroys before it marks the
/// stragglers `stopped` itself.
pub const FORCE_DELETE_WAIT: Duration = Duration::from_secs(10);

/// Why a host operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A tag is empty or longer than [`MAX_TAG_LEN`].
    #[error("tag must be 1-{MAX_TAG_LEN} characters")]
    TagLength,
    /// A tag has a character outside `[a-zA-Z0-9._:-]`.
    #[error("tag may only contain letters, digits, '.', '_', ':' and '-'")]
    TagCharacters,
    /// A label is too long.
    #[error("{field} must be at most {max} characters")]
    LabelTooLong {
        /// The field.
        field: &'static str,
        /// Its longest length.
        max: usize,
    },
    /// A label has control characters.
    #[error("{field} must not contain control characters")]
    LabelControl {
        /// The field.
        field: &'static str,
    },
    /// The agent address is not `host:port`.
    #[error("address must be host:port (or http://host:port) with a port between 1 and 65535")]
    BadAddress,
    /// A resource count is negative.
    #[error("{field} must not be negative")]
    Negative {
        /// The field.
        field: &'static str,
    },
    /// A `regular` host was given a team.
    #[error("team_id is only accepted for byoc hosts")]
    TeamIdNotAccepted,
    /// A `byoc` host was given no team.
    #[error("team_id is required for byoc hosts")]
    TeamIdRequired,
    /// Only platform admins create `regular` hosts.
    #[error("only a platform admin may create regular hosts")]
    RegularNeedsAdmin,
    /// The caller may not create hosts for the team.
    #[error("only a platform admin or an owner/admin of the team may create its hosts")]
    NotTeamManager,
    /// The team does not have BYOC enabled.
    #[error("BYOC is not enabled for this team")]
    ByocDisabled,
    /// The caller may see the host but not do `action` to it.
    #[error("only a platform admin or an owner/admin of the host's team may {action}")]
    NotManager {
        /// What they tried, e.g. `"delete it"`.
        action: &'static str,
    },
    /// No such host, or the caller may not see it.
    #[error("host not found")]
    HostNotFound,
    /// No such team, or it is deleted.
    #[error("team not found")]
    TeamNotFound,
    /// The host has active capsules and `force` was not given.
    #[error("the host has {} active capsule(s); destroy them or delete with force=true", sandbox_ids.len())]
    HasSandboxes {
        /// The active capsules.
        sandbox_ids: Vec<SandboxId>,
    },
    /// Registration tokens are only issued for `pending` hosts.
    #[error("the host is {}; registration tokens are only issued for pending hosts", status.as_str())]
    NotPending {
        /// The host's status.
        status: HostStatus,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] RepoError),
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        use HostError as E;
        match e {
            E::Store(e) => e.into(),
            E::HostNotFound => ApiError::not_found("host"),
            E::TeamNotFound => ApiError::not_found("team"),
            E::RegularNeedsAdmin | E::NotTeamManager | E::ByocDisabled | E::NotManager { .. } => {
                ApiError::forbidden(e.to_string())
            }
            E::HasSandboxes { ref sandbox_ids } => {
                let ids = json!(sandbox_ids);
                ApiError::conflict("host_has_sandboxes", e.to_string())
                    .with_detail("sandbox_ids", ids)
            }
            E::NotPending { .. } => ApiError::conflict("invalid_state", e.to_string()),
            E::TagLength
            | E::TagCharacters
            | E::LabelTooLong { .. }
            | E::LabelControl { .. }
            | E::BadAddress
            | E::Negative { .. }
            | E::TeamIdNotAccepted
            | E::TeamIdRequired => ApiError::bad_request(e.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Checks a host tag: 1–64 characters of `[a-zA-Z0-9._:-]`.
pub fn validate_tag(tag: &str) -> Result<(), HostError> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return Err(HostError::TagLength);
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(HostError::TagCharacters);
    }
    Ok(())
}

/// Checks a free-text label (`provider`, `arch`, …): trimmed, at most `max`
/// characters, no control characters; absent is empty.
pub fn label(field: &'static str, value: Option<String>, max: usize) -> Result<String, HostError> {
    let value = value.as_deref().map(str::trim).unwrap_or_default();
    if value.chars().count() > max {
        return Err(HostError::LabelTooLong { field, max });
    }
    if value.chars().any(char::is_control) {
        return Err(HostError::LabelControl { field });
    }
    Ok(value.to_owned())
}

fn hostname_ok(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Checks an agent address: `host:port` or `http://host:port`, where host is an IP
/// address (IPv6 in brackets) or a DNS name and port is 1–65535. Returns it trimmed.
pub fn validate_address(address: &str) -> Result<String, HostError> {
    let address = address.trim();
    if address.is_empty() || address.len() > MAX_ADDRESS_LEN {
        return Err(HostError::BadAddress);
    }
    let authority = address.strip_prefix("http://").unwrap_or(address);
    if let Ok(sa) = authority.parse::<std::net::SocketAddr>() {
        return if sa.port() == 0 {
            Err(HostError::BadAddress)
        } else {
            Ok(address.to_owned())
        };
    }
    let (host, port) = authority.rsplit_once(':').ok_or(HostError::BadAddress)?;
    let port: u16 = port.parse().map_err(|_| HostError::BadAddress)?;
    if port == 0 || !hostname_ok(host) {
        return Err(HostError::BadAddress);
    }
    Ok(address.to_owned())
}

/// Checks a reported resource count: absent, zero or positive.
pub fn resource(field: &'static str, value: Option<i32>) -> Result<Option<i32>, HostError> {
    match value {
        Some(v) if v < 0 => Err(HostError::Negative { field }),
        other => Ok(other),
    }
}

// ---------------------------------------------------------------------------
// Access rules
// ---------------------------------------------------------------------------

/// Whether the caller may see the host: admins see all, team members their team's
/// BYOC hosts.
pub fn can_see(caller: &UserAuth, host: &Host) -> bool {
    caller.user.is_admin || (host.kind == HostKind::Byoc && host.team_id == Some(caller.team_id))
}

/// Whether the caller may change the host: admins, or an owner/admin of the BYOC
/// host's team (role from the database).
pub fn can_manage(caller: &UserAuth, host: &Host) -> bool {
    caller.user.is_admin
        || (host.kind == HostKind::Byoc
            && host.team_id == Some(caller.team_id)
            && matches!(caller.user.role, Role::Owner | Role::Admin))
}

/// The host, if the caller may see it.
async fn visible_host(
    ctx: &ServerContext,
    caller: &UserAuth,
    id: HostId,
) -> Result<Host, HostError> {
    match ctx.store.get_host(id).await {
        Ok(h) if can_see(caller, &h) => Ok(h),
        Ok(_) | Err(RepoError::NotFound { .. }) => Err(HostError::HostNotFound),
        Err(e) => Err(e.into()),
    }
}

/// The host, if the caller may see it and do `action` to it.
async fn managed_host(
    ctx: &ServerContext,
    caller: &UserAuth,
    id: HostId,
    action: &'static str,
) -> Result<Host, HostError> {
    let host = visible_host(ctx, caller, id).await?;
    if !can_manage(caller, &host) {
        return Err(HostError::NotManager { action });
    }
    Ok(host)
}

fn host_audit(caller: &UserAuth, host: &Host, action: &str) -> AuditEntry {
    AuditEntry::new(
        host_team(host),
        caller.actor(),
        "host",
        Some(host.id.to_string()),
        action,
    )
    .scope(AuditScope::Admin)
}

/// Hosts with their team's name, looked up once per team (admin views).
async fn with_team_names(
    ctx: &ServerContext,
    hosts: Vec<Host>,
) -> Result<Vec<(Host, Option<String>)>, HostError> {
    let mut names: HashMap<TeamId, Option<String>> = HashMap::new();
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts {
        let name = match h.team_id {
            None => None,
            Some(team) => match names.get(&team) {
                Some(n) => n.clone(),
                None => {
                    let n = match ctx.store.get_team(team).await {
                        Ok(t) => Some(t.name),
                        Err(RepoError::NotFound { .. }) => None,
                        Err(e) => return Err(e.into()),
                    };
                    names.insert(team, n.clone());
                    n
                }
            },
        };
        out.push((h, name));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// A host to create.
#[derive(Debug)]
pub struct HostRequest {
    /// `regular` or `byoc`.
    pub kind: HostKind,
    /// The owning team; required for `byoc`, refused for `regular`.
    pub team_id: Option<TeamId>,
    /// Cloud provider label.
    pub provider: Option<String>,
    /// Availability zone label.
    pub availability_zone: Option<String>,
}

/// Creates a `pending` host and a one-time registration token for it (valid for one
/// hour). A `regular` host needs a platform admin; a `byoc` host a live team with
/// BYOC enabled, and a caller who is a platform admin or that team's owner or admin.
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id))]
pub async fn create(
    ctx: &ServerContext,
    caller: &UserAuth,
    req: HostRequest,
) -> Result<(Host, OpaqueToken), HostError> {
    let provider = label("provider", req.provider, MAX_LABEL_LEN)?;
    let availability_zone = label("availability_zone", req.availability_zone, MAX_LABEL_LEN)?;
    let team_id = match req.kind {
        HostKind::Regular => {
            if req.team_id.is_some() {
                return Err(HostError::TeamIdNotAccepted);
            }
            if !caller.user.is_admin {
                return Err(HostError::RegularNeedsAdmin);
            }
            None
        }
        HostKind::Byoc => {
            let team_id = req.team_id.ok_or(HostError::TeamIdRequired)?;
            let team = match ctx.store.get_team(team_id).await {
                Ok(t) if t.deleted_at.is_none() => t,
                Ok(_) | Err(RepoError::NotFound { .. }) => return Err(HostError::TeamNotFound),
                Err(e) => return Err(e.into()),
            };
            if !caller.user.is_admin {
                let role = ctx
                    .store
                    .get_membership(team.id, caller.user.id)
                    .await?
                    .map(|m| m.role);
                if !matches!(role, Some(Role::Owner | Role::Admin)) {
                    return Err(HostError::NotTeamManager);
                }
            }
            if !team.is_byoc {
                return Err(HostError::ByocDisabled);
            }
            Some(team.id)
        }
    };
    let host = ctx
        .store
        .create_host(NewHost {
            id: HostId::new(),
            kind: req.kind,
            team_id,
            provider,
            availability_zone,
            created_by: Some(caller.user.id),
        })
        .await?;
    let token = issue_registration_token(ctx.store.as_ref(), host.id, caller.user.id).await?;
    tracing::info!(host_id = %host.id, kind = host.kind.as_str(), "host created");
    ctx.audit(host_audit(caller, &host, "create").metadata(json!({
        "type": host.kind.as_str(),
        "team_id": host.team_id.map(|t| t.to_string()),
    })))
    .await;
    Ok((host, token))
}

/// Hosts the caller may see, with their team's name for platform admins (who see
/// every host); everyone else sees the BYOC hosts of the team their token acts in.
pub async fn list(
    ctx: &ServerContext,
    caller: &UserAuth,
) -> Result<Vec<(Host, Option<String>)>, HostError> {
    if caller.user.is_admin {
        let hosts = ctx.store.list_hosts(None).await?;
        return with_team_names(ctx, hosts).await;
    }
    let hosts = ctx.store.list_hosts(Some(caller.team_id)).await?;
    Ok(hosts.into_iter().map(|h| (h, None)).collect())
}

/// One host the caller may see, with its team's name for platform admins.
pub async fn get(
    ctx: &ServerContext,
    caller: &UserAuth,
    id: HostId,
) -> Result<(Host, Option<String>), HostError> {
    let host = visible_host(ctx, caller, id).await?;
    if !caller.user.is_admin {
        return Ok((host, None));
    }
    with_team_names(ctx, vec![host])
        .await?
        .pop()
        .ok_or(HostError::HostNotFound)
}

async fn active_sandboxes(ctx: &ServerContext, host: HostId) -> Result<Vec<Sandbox>, HostError> {
    Ok(ctx
        .store
        .list_sandboxes_by_host(host, &ACTIVE_SANDBOX_STATUSES)
        .await?)
}

/// What deleting the host would destroy: the host and its active capsules.
pub async fn delete_preview(
    ctx: &ServerContext,
    caller: &UserAuth,
    id: HostId,
) -> Result<(Host, Vec<SandboxId>), HostError> {
    let host = managed_host(ctx, caller, id, "delete it").await?;
    let ids = active_sandboxes(ctx, host.id)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    Ok((host, ids))
}

/// Deletes a host. With active capsules it is refused
/// ([`HostError::HasSandboxes`]) unless `force`, which destroys them first (best
/// effort; any the agent does not confirm within [`FORCE_DELETE_WAIT`] are marked
/// `stopped`). The host's refresh tokens are revoked and its connection dropped, so
/// its agent is locked out at once.
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id, host_id = %id))]
pub async fn delete(
    ctx: &ServerContext,
    caller: &UserAuth,
    id: HostId,
    force: bool,
) -> Result<(), HostError> {
    let host = managed_host(ctx, caller, id, "delete it").await?;
    let active = active_sandboxes(ctx, host.id).await?;
    let sandbox_ids: Vec<SandboxId> = active.iter().map(|s| s.id).collect();
    if !active.is_empty() && !force {
        return Err(HostError::HasSandboxes { sandbox_ids });
    }
    if !active.is_empty() {
        destroy_all(ctx, caller, &active).await?;
    }
    let revoked = ctx.store.revoke_host_refresh_tokens(host.id).await?;
    ctx.hosts.evict(host.id);
    ctx.store.delete_host(host.id).await?;
    tracing::warn!(
        revoked,
        sandboxes = sandbox_ids.len(),
        force,
        "host deleted"
    );
    ctx.audit(
        host_audit(caller, &host, "delete")
            .status(AuditStatus::Warning)
            .metadata(json!({ "force": force, "sandbox_ids": sandbox_ids })),
    )
    .await;
    Ok(())
}

/// Destroys the sandboxes through the lifecycle (best effort), waits a bounded time
/// for the agent to confirm, then marks whatever is still live `stopped` (the host is
/// going away, so nothing will settle them later).
async fn destroy_all(
    ctx: &ServerContext,
    caller: &UserAuth,
    sandboxes: &[Sandbox],
) -> Result<(), HostError> {
    let actor = caller.actor();
    for sb in sandboxes {
        if let Err(e) = ctx.lifecycle.destroy(sb.team_id, sb.id, &actor).await {
            tracing::warn!(sandbox_id = %sb.id, error = %e, "could not destroy sandbox of a deleted host");
        }
    }
    let ids: Vec<SandboxId> = sandboxes.iter().map(|s| s.id).collect();
    let deadline = tokio::time::Instant::now() + FORCE_DELETE_WAIT;
    loop {
        let mut live: Vec<(SandboxId, SandboxStatus)> = Vec::new();
        for id in &ids {
            match ctx.store.get_sandbox(*id).await {
                Ok(sb) if !sb.status.is_terminal() => live.push((sb.id, sb.status)),
                Ok(_) | Err(RepoError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if live.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let mut by_status: HashMap<SandboxStatus, Vec<SandboxId>> = HashMap::new();
            for (id, status) in live {
                by_status.entry(status).or_default().push(id);
            }
            for (status, ids) in by_status {
                let moved = ctx
                    .store
                    .bulk_status_if(&ids, status, SandboxStatus::Stopped)
                    .await?;
                tracing::warn!(from = %status, count = moved.len(), "marked sandboxes of a deleted host stopped");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issues a new registration token for a host that has not registered yet.
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id, host_id = %id))]
pub async fn regenerate_token(
    ctx: &ServerContext,
    caller: &UserAuth,
    id: HostId,
) -> Result<(Host, OpaqueToken), HostError> {
    let host = managed_host(ctx, caller, id, "issue registration tokens for it").await?;
    if host.status != HostStatus::Pending {
        return Err(HostError::NotPending {
            status: host.status,
        });
    }
    let token = issue_registration_token(ctx.store.as_ref(), host.id, caller.user.id).await?;
    ctx.audit(host_audit(caller, &host, "regenerate_token").status(AuditStatus::Info))
        .await;
    Ok((host, token))
}

/// The tags of a host the caller may see, sorted.
pub async fn list_tags(
    ctx: &ServerContext,
    caller: &UserAuth,
    id: HostId,
) -> Result<Vec<String>, HostError> {
    let host = visible_host(ctx, caller, id).await?;
    Ok(ctx.store.list_host_tags(host.id).await?)
}

/// Adds a tag (idempotent).
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id, host_id = %id))]
pub async fn add_tag(
    ctx: &ServerContext,
    caller: &UserAuth,
    id: HostId,
    tag: &str,
) -> Result<(), HostError> {
    validate_tag(tag)?;
    let host = managed_host(ctx, caller, id, "tag it").await?;
    ctx.store.add_host_tag(host.id, tag).await?;
    ctx.audit(
        host_audit(caller, &host, "tag_add")
            .status(AuditStatus::Info)
            .metadata(json!({ "tag": tag })),
    )
    .await;
    Ok(())
}

/// Removes a tag (removing an absent tag changes nothing and is not audited).
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id, host_id = %id))]
pub async fn remove_tag(
    ctx: &ServerContext,
    caller: &UserAuth,
    id: HostId,
    tag: &str,
) -> Result<(), HostError> {
    validate_tag(tag)?;
    let host = managed_host(ctx, caller, id, "untag it").await?;
    if ctx.store.remove_host_tag(host.id, tag).await? {
        ctx.audit(
            host_audit(caller, &host, "tag_remove")
                .status(AuditStatus::Info)
                .metadata(json!({ "tag": tag })),
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
