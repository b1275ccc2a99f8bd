//! Deleting templates of any team (platform admins): `DELETE /v1/admin/templates/{name}`
//! and the clean-up of a template a cancelled build registered.
//!
//! A template is deleted only when no capsule that still holds resources (starting,
//! running, paused, hibernated, …) was made from it, since those capsules' disks and
//! snapshots are layered on its files: such a delete is refused (409, naming the
//! capsules). The row goes first, so no new capsule can start from it, then its files
//! on every online host. The built-in template cannot be deleted.

use wrenn_core::audit::{Actor, AuditEntry, AuditScope, AuditStatus};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId};
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::model::Template;
use wrenn_core::repo::RepoError;
use wrenn_extension::{ApiError, ServerContext};

/// Why a template could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteTemplateError {
    /// No platform template of that name.
    #[error("template not found")]
    NotFound,
    /// The built-in template.
    #[error("template {0:?} is built in and cannot be deleted")]
    BuiltIn(String),
    /// Capsules made from it still exist.
    #[error("template {name:?} is used by capsules that still exist: {}", ids_list(.capsules))]
    InUse {
        /// The template.
        name: String,
        /// The capsules.
        capsules: Vec<SandboxId>,
    },
    /// Storage failed.
    #[error("storage failed")]
    Store(#[source] RepoError),
}

fn ids_list(ids: &[SandboxId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<RepoError> for DeleteTemplateError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound { .. } => Self::NotFound,
            other => Self::Store(other),
        }
    }
}

impl From<DeleteTemplateError> for ApiError {
    fn from(e: DeleteTemplateError) -> Self {
        match e {
            DeleteTemplateError::NotFound => ApiError::not_found("template"),
            e @ DeleteTemplateError::BuiltIn(_) => ApiError::forbidden(e.to_string()),
            DeleteTemplateError::InUse { ref capsules, .. } => {
                let ids: Vec<String> = capsules.iter().map(ToString::to_string).collect();
                ApiError::conflict("template_in_use", e.to_string())
                    .with_detail("sandbox_ids", serde_json::json!(ids))
            }
            DeleteTemplateError::Store(e) => e.into(),
        }
    }
}

/// Deletes the platform template `name` (see the [module docs](self)).
pub async fn delete_platform_template(
    ctx: &ServerContext,
    name: &str,
    actor: &Actor,
) -> Result<(), DeleteTemplateError> {
    wrenn_core::validate::safe_name("name", name).map_err(|_| DeleteTemplateError::NotFound)?;
    let template = ctx
        .store
        .get_template_for_team(PLATFORM_TEAM_ID, name)
        .await?;
    if template.id == BUILTIN_TEMPLATE_ID || template.protected {
        return Err(DeleteTemplateError::BuiltIn(name.to_owned()));
    }
    let users = ctx
        .store
        .list_active_sandboxes_from_template(template.id)
        .await?;
    if !users.is_empty() {
        return Err(DeleteTemplateError::InUse {
            name: name.to_owned(),
            capsules: users.into_iter().map(|s| s.id).collect(),
        });
    }
    if !remove_files_and_row(ctx, &template).await {
        return Err(DeleteTemplateError::NotFound);
    }
    tracing::info!(template = %name, template_id = %template.id, "platform template deleted");
    ctx.audit(
        AuditEntry::new(
            PLATFORM_TEAM_ID,
            actor.clone(),
            "template",
            Some(name.to_owned()),
            "delete",
        )
        .scope(AuditScope::Admin)
        .status(AuditStatus::Warning),
    )
    .await;
    Ok(())
}

/// Deletes `template`'s row, then its files on every online host (a host that cannot
/// delete now keeps an orphaned directory, logged). `false` if the row was gone.
pub async fn remove_files_and_row(ctx: &ServerContext, template: &Template) -> bool {
    let deleted = match ctx
        .store
        .delete_template(template.team_id, template.id)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(template_id = %template.id, error = %e, "could not delete template row");
            return false;
        }
    };
    let hosts = match ctx.store.list_hosts(None).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "could not list hosts to delete template files");
            return deleted;
        }
    };
    for host in hosts.iter().filter(|h| h.status == HostStatus::Online) {
        if let Err(e) = ctx
            .agents
            .delete_snapshot(host.id, template.team_id, template.id)
            .await
        {
            tracing::warn!(host_id = %host.id, template_id = %template.id, error = %e, "could not delete template files on host");
        }
    }
    deleted
}
