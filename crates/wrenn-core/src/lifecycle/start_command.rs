//! Template start commands: what a capsule made from a template runs in the
//! background once it is `running`.
//!
//! A template built with a `START` step records a command ([`Template::start_command`]).
//! The build starts it in the build capsule before the healthcheck, so the template is
//! snapshotted with it running. What that snapshot holds depends on the runtime:
//! - **process** runtime: files only. The control plane starts the command again in
//!   every capsule made from the template, right after the capsule is `running`
//!   (before a waiting create returns), through the data plane, as the template's
//!   default user with its environment, in [`Template::start_cwd`].
//! - **VM runtimes** (`qemu`, `firecracker`): the template is a memory snapshot and
//!   capsules made from it resume its processes, the started command included; it is
//!   not started a second time.
//!
//! The runtime is the one the agent reported for the new capsule (metadata key
//! `runtime`). A command that cannot be started is logged; the capsule stays running.

use std::sync::Arc;

use tracing::{info, warn};

use crate::data_plane::{Command, DataPlane};
use crate::id::SandboxId;
use crate::lifecycle::SandboxStatus;
use crate::model::{Metadata, Template, TemplateKind};

use super::service::Lifecycle;

/// Tag of the start command's process inside the capsule.
pub const START_COMMAND_TAG: &str = "template-start";

/// Sandbox metadata key under which the agent reports its runtime.
const RUNTIME_KEY: &str = "runtime";

/// Whether a capsule made from `template` on the runtime named in its agent-reported
/// `metadata` already runs the template's start command: snapshot templates of VM
/// runtimes hold the build capsule's memory, processes included.
pub fn template_keeps_processes(template: &Template, metadata: &Metadata) -> bool {
    template.kind == TemplateKind::Snapshot
        && matches!(
            metadata.get(RUNTIME_KEY).map(String::as_str),
            Some("qemu" | "firecracker")
        )
}

/// The command that runs `start` with `/bin/sh` in `cwd` (empty: the user's home).
pub fn shell_command(start: &str, cwd: &str) -> Command {
    Command {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), start.to_owned()],
        envs: Default::default(),
        cwd: (!cwd.is_empty()).then(|| cwd.to_owned()),
    }
}

impl Lifecycle {
    /// Gives the service the data plane it starts template start commands through
    /// (without one, templates' start commands are not run). Set once; later calls
    /// are ignored.
    pub fn set_data_plane(&self, data_plane: Arc<dyn DataPlane>) {
        let _ = self.inner.data_plane.set(data_plane);
    }

    /// Starts `template`'s start command in the new capsule `id` if it has one, the
    /// capsule is running and its runtime did not restore it from the template.
    pub(super) async fn run_start_command(&self, id: SandboxId, template: &Template) {
        if template.start_command.is_empty() {
            return;
        }
        let Some(data_plane) = self.inner.data_plane.get() else {
            warn!(template = %template.name, "no data plane: the template's start command is not run");
            return;
        };
        let sb = match self.inner.store.get_sandbox(id).await {
            Ok(sb) if sb.status == SandboxStatus::Running => sb,
            Ok(_) => return,
            Err(e) => {
                warn!(error = %e, "could not read the new capsule to run its start command");
                return;
            }
        };
        if template_keeps_processes(template, &sb.metadata) {
            return;
        }
        let command = shell_command(&template.start_command, &template.start_cwd);
        match data_plane
            .start_background(&sb, command, START_COMMAND_TAG.into())
            .await
        {
            Ok(p) => {
                info!(pid = p.pid, template = %template.name, "template start command started")
            }
            Err(e) => {
                warn!(error = %e, template = %template.name, "could not start the template's start command")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{TeamId, TemplateId};

    fn template(kind: TemplateKind) -> Template {
        Template {
            id: TemplateId::new(),
            team_id: TeamId::new(),
            name: "t".into(),
            kind,
            vcpus: 1,
            memory_mb: 512,
            size_bytes: 0,
            default_user: "root".into(),
            default_env: Default::default(),
            metadata: Metadata::new(),
            start_command: "python3 -m http.server".into(),
            start_cwd: String::new(),
            protected: false,
            created_at: chrono::Utc::now(),
        }
    }

    fn runtime(name: &str) -> Metadata {
        Metadata::from([(RUNTIME_KEY.to_owned(), name.to_owned())])
    }

    #[test]
    fn only_vm_snapshot_templates_keep_the_started_command() {
        let snap = template(TemplateKind::Snapshot);
        assert!(template_keeps_processes(&snap, &runtime("qemu")));
        assert!(template_keeps_processes(&snap, &runtime("firecracker")));
        assert!(!template_keeps_processes(&snap, &runtime("process")));
        assert!(!template_keeps_processes(&snap, &Metadata::new()));
        let base = template(TemplateKind::Base);
        assert!(!template_keeps_processes(&base, &runtime("qemu")));
    }

    #[test]
    fn the_command_runs_in_a_shell_in_its_directory() {
        let c = shell_command("cd x && run", "/srv");
        assert_eq!(c.cmd, "/bin/sh");
        assert_eq!(c.args, ["-c", "cd x && run"]);
        assert_eq!(c.cwd.as_deref(), Some("/srv"));
        assert_eq!(shell_command("run", "").cwd, None);
    }
}
