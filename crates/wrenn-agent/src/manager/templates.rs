//! Templates: turning a sandbox into a template (CreateSnapshot) and deleting one.

use crate::runtime::error_chain;
use std::time::Instant;

use wrenn_core::events::SandboxEventKind;
use wrenn_core::id::{SandboxId, TeamId, TemplateId};
use wrenn_core::lifecycle::SandboxStatus;

use super::disk::{path_exists, remove_dir_all_async};
use super::lifecycle::set_envd_token;
use super::{SandboxManager, offline_instance};
use crate::error::{AgentError, AgentResult};
use crate::runtime::RuntimeError;

impl SandboxManager {
    /// Turns a sandbox into a template at `template_dir(team, template)`. A running
    /// sandbox is paused first and stays paused; on failure the template directory is
    /// removed and the sandbox keeps its state.
    pub async fn snapshot(
        &self,
        id: SandboxId,
        team: TeamId,
        template: TemplateId,
    ) -> AgentResult<u64> {
        let sb = self.get(id)?;
        let dir = self.layout.template_dir(team, template);
        if path_exists(dir.clone()).await {
            return Err(AgentError::AlreadyExists(format!(
                "template {template} of {team} already exists on this host"
            )));
        }
        let _op = sb.op.lock().await;
        sb.check_alive()?;
        let prev = sb.status();
        if !matches!(
            prev,
            SandboxStatus::Running | SandboxStatus::Paused | SandboxStatus::Hibernated
        ) {
            return Err(sb.wrong_state(
                prev,
                "snapshot needs a running, paused or hibernated sandbox",
            ));
        }
        let team_of_sandbox = sb.team_id();
        // A template of this runtime is the sandbox's memory: envd's access token must
        // not be in it (each sandbox made from it gets its own through Init).
        let keeps_memory = self.runtime.capabilities().templates_keep_processes;
        if keeps_memory && prev == SandboxStatus::Hibernated {
            return Err(AgentError::FailedPrecondition(format!(
                "the {} runtime snapshots running or paused sandboxes: resume it first",
                self.runtime.name()
            )));
        }
        let instance = sb
            .with(|s| s.instance.clone())
            .unwrap_or_else(|| offline_instance(id));
        sb.with(|s| s.status = SandboxStatus::Snapshotting);
        if keeps_memory && prev == SandboxStatus::Paused {
            // Thawed for a moment to take the token out of its memory.
            let cleared = async {
                self.runtime.resume(&instance).await?;
                sb.with(|s| s.envd = None);
                let envd = sb.envd_client()?;
                envd.wait_ready(self.settings.envd_ready_timeout).await?;
                set_envd_token(&envd, "").await?;
                self.prepare_snapshot(&sb).await;
                self.runtime.pause(&instance).await?;
                sb.with(|s| s.envd = None);
                Ok::<_, AgentError>(())
            }
            .await;
            if let Err(e) = cleared {
                tracing::warn!(sandbox_id = %id, "preparing a paused sandbox's memory for a template: {}", error_chain(&e));
                if let Err(pe) = self.runtime.pause(&instance).await {
                    tracing::warn!(sandbox_id = %id, "pausing again: {}", error_chain(&pe));
                }
                sb.with(|s| s.status = prev);
                return Err(e);
            }
        }
        if prev == SandboxStatus::Running {
            sb.conns.drain(self.settings.drain_grace).await;
            self.prepare_snapshot(&sb).await;
            if keeps_memory {
                let cleared = match sb.envd_client() {
                    Ok(envd) => set_envd_token(&envd, "").await,
                    Err(e) => Err(e),
                };
                if let Err(e) = cleared {
                    sb.conns.reset();
                    sb.with(|s| s.status = SandboxStatus::Running);
                    return Err(e);
                }
            }
            if let Err(e) = self.runtime.pause(&instance).await {
                sb.conns.reset();
                self.recover_running(&sb, &instance).await;
                if keeps_memory {
                    self.restore_envd_token(&sb).await;
                }
                return Err(e.into());
            }
            sb.with(|s| s.envd = None);
        }
        match self.runtime.snapshot(&instance, team, template).await {
            Ok(size) => {
                // A running sandbox carries on after the copy; it was only frozen for
                // a consistent snapshot.
                let resumed = prev == SandboxStatus::Running
                    && match self.runtime.resume(&instance).await {
                        Ok(()) => true,
                        Err(re) => {
                            tracing::warn!(sandbox_id = %id, "resume after a snapshot: {}", error_chain(&re));
                            false
                        }
                    };
                sb.with(|s| {
                    if resumed {
                        s.status = SandboxStatus::Running;
                    } else if prev == SandboxStatus::Running {
                        s.status = SandboxStatus::Paused;
                        s.paused_at = Some(Instant::now());
                        s.auto_paused = false;
                    } else {
                        s.status = prev;
                    }
                });
                if resumed {
                    sb.conns.reset();
                    if keeps_memory {
                        self.restore_envd_token(&sb).await;
                    }
                }
                self.events.emit(
                    SandboxEventKind::Snapshotted,
                    id,
                    Some(team_of_sandbox),
                    None,
                );
                Ok(size)
            }
            Err(e) => {
                let _ = remove_dir_all_async(dir).await;
                let e: AgentError = match e {
                    RuntimeError::NotFound(_) if prev == SandboxStatus::Hibernated => {
                        AgentError::FailedPrecondition(format!(
                            "the {} runtime cannot snapshot a hibernated sandbox: resume it first",
                            self.runtime.name()
                        ))
                    }
                    e => e.into(),
                };
                if prev == SandboxStatus::Running {
                    match self.runtime.resume(&instance).await {
                        Ok(()) => {
                            sb.with(|s| {
                                s.status = SandboxStatus::Running;
                                s.envd = None;
                            });
                            sb.conns.reset();
                            if keeps_memory {
                                self.restore_envd_token(&sb).await;
                            }
                        }
                        Err(re) => {
                            tracing::warn!(sandbox_id = %id, "resume after a failed snapshot: {}", error_chain(&re));
                            sb.with(|s| {
                                s.status = SandboxStatus::Paused;
                                s.paused_at = Some(Instant::now());
                            });
                        }
                    }
                } else {
                    sb.with(|s| s.status = prev);
                }
                Err(e)
            }
        }
    }

    /// Deletes a template directory; refused while any sandbox here uses it. Returns
    /// whether there was one.
    pub async fn delete_template(&self, team: TeamId, template: TemplateId) -> AgentResult<bool> {
        if let Some(user) = self.all().iter().find(|s| {
            s.with(|st| st.config.template_team_id == team && st.config.template_id == template)
        }) {
            return Err(AgentError::FailedPrecondition(format!(
                "template {template} is still used by sandbox {}",
                user.id
            )));
        }
        let dir = self.layout.template_dir(team, template);
        if !path_exists(dir.clone()).await {
            return Ok(false);
        }
        remove_dir_all_async(dir).await.map_err(|e| {
            AgentError::internal(format!("delete template {template}: {}", error_chain(&e)))
        })?;
        Ok(true)
    }
}
