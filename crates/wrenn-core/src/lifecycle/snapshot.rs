//! [`Lifecycle::snapshot`]: a running or paused sandbox captured into a team template.

use tracing::{Instrument, info_span, warn};

use crate::agents::HostCallError;
use crate::audit::Actor;
use crate::events::{Event, PLATFORM_STREAM, PlatformEvent, PlatformEventKind, SandboxEventKind};
use crate::id::{PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};
use crate::lifecycle::SandboxStatus::{self, *};
use crate::model::{Metadata, Sandbox, Template, TemplateKind};
use crate::repo::{NewTemplate, RepoError};
use crate::validate;

use super::service::{Lifecycle, LifecycleError, Liveness, with_timeout};

/// What a template made by [`Lifecycle::snapshot_with`] records about the processes
/// of capsules made from it (by default, those of the captured capsule's template).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateDefaults {
    /// User processes run as.
    pub default_user: String,
    /// Environment every process gets.
    pub default_env: std::collections::BTreeMap<String, String>,
    /// Start command (empty: none); see [`super::start_command`].
    pub start_command: String,
    /// Its working directory (empty: the user's home).
    pub start_cwd: String,
}

impl Lifecycle {
    /// Captures a running or paused sandbox into a team template named `name`
    /// (default `template-xxxxxxxx`), replacing a same-named team template only when
    /// `overwrite`. The sandbox is `snapshotting` meanwhile and returns to where it
    /// was. Completes before returning; the work runs in a task of its own, so a
    /// caller that goes away does not leave the sandbox half-way.
    pub async fn snapshot(
        &self,
        team: TeamId,
        id: SandboxId,
        name: Option<String>,
        overwrite: bool,
        actor: &Actor,
    ) -> Result<Template, LifecycleError> {
        self.snapshot_with(team, id, name, overwrite, None, actor)
            .await
    }

    /// [`snapshot`](Self::snapshot), recording `defaults` in the template instead of
    /// those of the captured capsule's template.
    pub async fn snapshot_with(
        &self,
        team: TeamId,
        id: SandboxId,
        name: Option<String>,
        overwrite: bool,
        defaults: Option<TemplateDefaults>,
        actor: &Actor,
    ) -> Result<Template, LifecycleError> {
        let store = &self.inner.store;
        let name = name.unwrap_or_else(crate::id::new_snapshot_name);
        validate::safe_name("name", &name)?;
        let current = store.get_team_sandbox(team, id).await?;
        let template_id = match store.get_template_for_team(team, &name).await {
            Ok(t) if t.team_id == PLATFORM_TEAM_ID && team != PLATFORM_TEAM_ID => {
                return Err(LifecycleError::NameReserved(name));
            }
            Ok(_) if !overwrite => return Err(LifecycleError::NameTaken(name)),
            Ok(t) => t.id,
            Err(RepoError::NotFound { .. }) => TemplateId::new(),
            Err(e) => return Err(e.into()),
        };
        let Some((from, sb)) = self
            .transition_from_any(&current, &[Running, Paused], Snapshotting)
            .await?
        else {
            return Err(self.invalid_state(team, id, "snapshot").await);
        };
        let span = info_span!("sandbox.snapshot", sandbox_id = %id, team_id = %team, host_id = %sb.host_id);
        let this = self.clone();
        let actor = actor.clone();
        let task = self.inner.tasks.spawn(
            async move {
                this.run_snapshot(sb, from, template_id, name, defaults, &actor)
                    .await
            }
            .instrument(span),
        );
        task.await.unwrap_or_else(|e| {
            Err(LifecycleError::Agent(HostCallError::Internal(format!(
                "snapshot task failed: {e}"
            ))))
        })
    }

    async fn run_snapshot(
        &self,
        sb: Sandbox,
        from: SandboxStatus,
        template_id: TemplateId,
        name: String,
        defaults: Option<TemplateDefaults>,
        actor: &Actor,
    ) -> Result<Template, LifecycleError> {
        let store = &self.inner.store;
        let res = with_timeout(
            self.inner.timeouts.snapshot,
            "snapshot",
            self.inner
                .agents
                .create_snapshot(sb.host_id, sb.id, sb.team_id, template_id),
        )
        .await;
        let size = match res {
            Ok(size) => size,
            Err(err) => {
                // An unreachable host says nothing about the sandbox: it goes back to
                // where it was, and the host monitor follows the host once it answers.
                let gone = self.after_failure(&sb).await == Liveness::Gone;
                let back = if gone && from != Paused { Error } else { from };
                let _ = store.status_if(sb.id, Snapshotting, back).await;
                return Err(err.into());
            }
        };
        let defaults = match defaults {
            Some(d) => d,
            None => match store.get_template(sb.template_id).await {
                Ok(t) => TemplateDefaults {
                    default_user: t.default_user,
                    default_env: t.default_env,
                    start_command: t.start_command,
                    start_cwd: t.start_cwd,
                },
                Err(_) => TemplateDefaults {
                    default_user: "root".into(),
                    ..TemplateDefaults::default()
                },
            },
        };
        let upserted = store
            .upsert_template(NewTemplate {
                id: template_id,
                team_id: sb.team_id,
                name,
                kind: TemplateKind::Snapshot,
                vcpus: sb.vcpus,
                memory_mb: sb.memory_mb,
                size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
                default_user: defaults.default_user,
                default_env: defaults.default_env,
                metadata: Metadata::new(),
                start_command: defaults.start_command,
                start_cwd: defaults.start_cwd,
            })
            .await;
        if let Ok(Some(row)) = store.status_if(sb.id, Snapshotting, from).await {
            self.publish_sandbox(self.outcome(SandboxEventKind::Snapshotted, &row))
                .await;
        }
        let template = upserted?;
        // Only this host holds the files now (copies elsewhere are of what was
        // overwritten); capsules on other hosts get a copy first.
        if let Err(e) = store.set_template_origin(template.id, sb.host_id).await {
            warn!(error = %e, template_id = %template.id, "could not record where the template's files are");
        }
        let ev = PlatformEvent {
            event: PlatformEventKind::SnapshotCreated,
            timestamp: chrono::Utc::now(),
            team_id: sb.team_id,
            actor: actor.clone(),
            resource: crate::events::EventResource {
                id: template.name.clone(),
                kind: "template".into(),
            },
        };
        self.inner
            .events
            .publish(PLATFORM_STREAM, Event::Platform(ev))
            .await;
        Ok(template)
    }
}
