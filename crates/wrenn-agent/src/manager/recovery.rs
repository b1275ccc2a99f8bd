//! Startup: adoption of what still runs after an agent restart, loading of hibernated
//! sandboxes, and the per-sandbox record (`agent.json`) that makes both possible.

use crate::runtime::error_chain;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use wrenn_core::events::SandboxEventKind;
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;

use super::sandbox::State;
use super::{Sandbox, SandboxManager, placeholder_config};
use crate::error::AgentResult;
use crate::runtime::Adoption;

impl State {
    /// Takes back what an earlier agent recorded of this sandbox ([`ManagedRecord`]).
    fn apply_record(&mut self, r: ManagedRecord) {
        self.access_token = r.access_token;
        self.template_name = r.template_name;
        self.created_at_unix = r.created_at_unix;
        self.timeout_sec = r.timeout_sec;
        self.user_metadata = r.user_metadata;
        self.config.default_user = r.default_user;
        self.config.default_env = r.default_env;
    }
}

impl SandboxManager {
    /// Loads the hibernated sandboxes the runtime finds on disk into the map, then asks
    /// the runtime to sweep leftovers of every other sandbox (after an agent crash).
    /// Returns (recovered, swept).
    ///
    /// Live sandboxes get back what the manager recorded in `sandboxes/{id}/agent.json`,
    /// hibernated ones what it recorded in `snapshots/{id}/agent.json` when it
    /// hibernated them (access token, template name, timeout, metadata, defaults); a
    /// sandbox without a record starts those afresh (timeout 0, `created_at` the
    /// agent's start, no caller metadata).
    pub async fn recover(&self) -> AgentResult<(Vec<SandboxId>, Vec<SandboxId>)> {
        let adoption = self.runtime.adopt().await?;
        let mut recovered = self.adopt(adoption);
        let hibernated = self.runtime.hibernated().await?;
        {
            let mut map = self.map_mut();
            for config in hibernated {
                let id = config.id;
                let record = read_managed(&self.layout.snapshot_dir(id));
                let sb = Sandbox::new(config, SandboxStatus::Hibernated);
                sb.with(|s| {
                    s.agent_metadata
                        .insert("runtime".into(), self.runtime.name().into());
                    if let Some(r) = record {
                        s.apply_record(r);
                    }
                });
                map.entry(id).or_insert_with(|| Arc::new(sb));
                recovered.push(id);
            }
        }
        let keep: Vec<SandboxId> = self.all().iter().map(|s| s.id).collect();
        let swept = self.runtime.sweep(&keep).await?;
        Arc::clone(&self.runtime).start_background();
        if !recovered.is_empty() || !swept.is_empty() {
            tracing::info!(
                recovered = recovered.len(),
                swept = swept.len(),
                "startup: live sandboxes adopted, hibernated ones loaded, leftovers removed"
            );
        }
        Ok((recovered, swept))
    }

    /// Tracks again what the runtime adopted (running or paused, watched) and reports
    /// what it could not adopt (`failed`, kept as `error` until destroyed). Returns
    /// the ids adopted.
    fn adopt(&self, adoption: Adoption) -> Vec<SandboxId> {
        let mut adopted = Vec::new();
        let mut entries = Vec::new();
        for a in adoption.adopted {
            let id = a.config.id;
            let record = read_managed(&self.layout.sandbox_dir(id));
            let sb = Arc::new(Sandbox::new(
                a.config.clone(),
                if a.paused {
                    SandboxStatus::Paused
                } else {
                    SandboxStatus::Running
                },
            ));
            let envd_version = a
                .instance
                .metadata
                .get("envd_version")
                .cloned()
                .unwrap_or_default();
            sb.with(|s| {
                s.agent_metadata = self.agent_metadata(&a.instance, &envd_version);
                s.instance = Some(a.instance.clone());
                if a.paused {
                    s.paused_at = Some(Instant::now());
                }
                if let Some(r) = record {
                    s.apply_record(r);
                }
            });
            entries.push((sb, a.instance));
            adopted.push(id);
        }
        for lost in adoption.lost {
            let mut config = placeholder_config(lost.id);
            if let Some(team) = lost.team_id {
                config.team_id = team;
            }
            let sb = Arc::new(Sandbox::new(config, SandboxStatus::Error));
            // The runtime logged the reason whole; the control plane gets it path-free.
            let reason = crate::error::without_host_paths(&lost.reason);
            sb.with(|s| s.failure = Some(reason.clone()));
            self.map_mut().entry(lost.id).or_insert(sb);
            self.events.emit(
                SandboxEventKind::Failed,
                lost.id,
                lost.team_id,
                Some(reason),
            );
        }
        for (sb, instance) in entries {
            self.map_mut().insert(sb.id, Arc::clone(&sb));
            self.watch(&sb, instance);
        }
        adopted
    }

    /// Writes what the manager needs to adopt `sb` after an agent restart
    /// (`sandboxes/{id}/agent.json`; a failure is logged).
    pub(super) fn persist(&self, sb: &Sandbox) {
        self.persist_in(sb, &self.layout.sandbox_dir(sb.id));
    }

    /// Writes `sb`'s record into `dir` (`agent.json`; a failure is logged): its
    /// sandbox directory while it lives, its snapshot directory once hibernated (so
    /// that its token, metadata and template name outlive an agent restart — a VM's
    /// memory keeps envd's token).
    pub(super) fn persist_in(&self, sb: &Sandbox, dir: &Path) {
        let record = sb.with(|s| ManagedRecord {
            access_token: s.access_token.clone(),
            template_name: s.template_name.clone(),
            created_at_unix: s.created_at_unix,
            timeout_sec: s.timeout_sec,
            default_user: s.config.default_user.clone(),
            default_env: s.config.default_env.clone(),
            user_metadata: s.user_metadata.clone(),
        });
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|raw| {
                let tmp = dir.join(".agent.json.tmp");
                std::fs::write(&tmp, raw)?;
                std::fs::rename(&tmp, dir.join(MANAGED_RECORD))
            });
        if let Err(e) = written {
            tracing::warn!(sandbox_id = %sb.id, "cannot persist the sandbox record: {}", error_chain(&e));
        }
    }
}

/// File in `sandboxes/{id}/` holding what the manager needs to adopt a sandbox.
const MANAGED_RECORD: &str = "agent.json";

/// What [`SandboxManager`] persists per live sandbox (its runtime persists the rest).
/// Fields added later must be `#[serde(default)]`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ManagedRecord {
    access_token: String,
    #[serde(default)]
    template_name: String,
    #[serde(default)]
    created_at_unix: i64,
    #[serde(default)]
    timeout_sec: u32,
    #[serde(default)]
    default_user: String,
    #[serde(default)]
    default_env: BTreeMap<String, String>,
    #[serde(default)]
    user_metadata: BTreeMap<String, String>,
}

fn read_managed(dir: &Path) -> Option<ManagedRecord> {
    let raw = std::fs::read(dir.join(MANAGED_RECORD)).ok()?;
    match serde_json::from_slice(&raw) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(
                "unreadable {MANAGED_RECORD} in {}: {}",
                dir.display(),
                error_chain(&e)
            );
            None
        }
    }
}
