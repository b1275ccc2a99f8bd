//! A controllable host-agent double and fixtures for lifecycle tests.
//!
//! The double keeps a real map of the sandboxes "on the host" so tests can check
//! that the database never contradicts it. Each operation can be made to fail once,
//! to take a while, or to wait at a gate until the test releases it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use wrenn_core::agents::{AgentError, AgentInventory, AgentSandbox, HostAgents, SandboxSpec, StartedSandbox};
use wrenn_core::id::{HostId, SandboxId, TeamId, TemplateId, UserId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::UserStatus;
use wrenn_core::repo::{HostSpec, NewHost, NewTeam, NewUser, Store};

/// Agent operations the double can script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Pause,
    Resume,
    Destroy,
    Ping,
    Snapshot,
}

#[derive(Default)]
struct Script {
    fail: HashMap<Op, AgentError>,
    delay: HashMap<Op, Duration>,
    gate: HashMap<Op, Arc<Semaphore>>,
}

/// The double.
#[derive(Default)]
pub struct FakeAgents {
    /// What the host holds.
    pub sandboxes: Mutex<HashMap<SandboxId, SandboxStatus>>,
    script: Mutex<Script>,
    /// Every call, in order.
    pub calls: Mutex<Vec<(Op, SandboxId)>>,
}

impl FakeAgents {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The next call of `op` fails with `err`.
    pub fn fail_next(&self, op: Op, err: AgentError) {
        self.script.lock().unwrap().fail.insert(op, err);
    }

    /// Every call of `op` takes `d`.
    pub fn delay(&self, op: Op, d: Duration) {
        self.script.lock().unwrap().delay.insert(op, d);
    }

    /// Calls of `op` wait until [`FakeAgents::release`].
    pub fn hold(&self, op: Op) {
        self.script.lock().unwrap().gate.insert(op, Arc::new(Semaphore::new(0)));
    }

    /// Lets held calls of `op` proceed (and future ones too).
    pub fn release(&self, op: Op) {
        if let Some(g) = self.script.lock().unwrap().gate.remove(&op) {
            g.add_permits(1 << 20);
        }
    }

    pub fn status_on_host(&self, id: SandboxId) -> Option<SandboxStatus> {
        self.sandboxes.lock().unwrap().get(&id).copied()
    }

    /// The sandbox vanishes from the host (crash, reboot).
    pub fn lose(&self, id: SandboxId) {
        self.sandboxes.lock().unwrap().remove(&id);
    }

    pub fn count(&self, op: Op) -> usize {
        self.calls.lock().unwrap().iter().filter(|(o, _)| *o == op).count()
    }

    async fn enter(&self, op: Op, id: SandboxId) -> Result<(), AgentError> {
        self.calls.lock().unwrap().push((op, id));
        let (gate, delay) = {
            let s = self.script.lock().unwrap();
            (s.gate.get(&op).cloned(), s.delay.get(&op).copied())
        };
        if let Some(g) = gate {
            let _permit = g.acquire().await;
        }
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match self.script.lock().unwrap().fail.remove(&op) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn set(&self, id: SandboxId, from: &[SandboxStatus], to: SandboxStatus) -> Result<(), AgentError> {
        let mut map = self.sandboxes.lock().unwrap();
        match map.get_mut(&id) {
            None => Err(AgentError::NotFound(id.to_string())),
            Some(s) if from.contains(s) => {
                *s = to;
                Ok(())
            }
            Some(s) => Err(AgentError::FailedPrecondition(format!("{id} is {s}"))),
        }
    }
}

#[async_trait::async_trait]
impl HostAgents for FakeAgents {
    async fn create_sandbox(&self, _host: HostId, spec: &SandboxSpec) -> Result<StartedSandbox, AgentError> {
        self.enter(Op::Create, spec.sandbox_id).await?;
        self.sandboxes.lock().unwrap().insert(spec.sandbox_id, SandboxStatus::Running);
        Ok(StartedSandbox {
            host_ip: "10.11.0.2".into(),
            metadata: [("agent_version".to_string(), "test".to_string())].into(),
        })
    }

    async fn pause_sandbox(&self, _host: HostId, id: SandboxId) -> Result<(), AgentError> {
        self.enter(Op::Pause, id).await?;
        self.set(id, &[SandboxStatus::Running], SandboxStatus::Paused)
    }

    async fn resume_sandbox(&self, _host: HostId, spec: &SandboxSpec) -> Result<StartedSandbox, AgentError> {
        self.enter(Op::Resume, spec.sandbox_id).await?;
        self.set(spec.sandbox_id, &[SandboxStatus::Paused, SandboxStatus::Hibernated], SandboxStatus::Running)?;
        Ok(StartedSandbox {
            host_ip: "10.11.0.2".into(),
            metadata: Default::default(),
        })
    }

    async fn destroy_sandbox(&self, _host: HostId, id: SandboxId) -> Result<(), AgentError> {
        self.enter(Op::Destroy, id).await?;
        match self.sandboxes.lock().unwrap().remove(&id) {
            Some(_) => Ok(()),
            None => Err(AgentError::NotFound(id.to_string())),
        }
    }

    async fn ping_sandbox(&self, _host: HostId, id: SandboxId) -> Result<(), AgentError> {
        self.enter(Op::Ping, id).await?;
        match self.status_on_host(id) {
            Some(SandboxStatus::Running) => Ok(()),
            Some(s) => Err(AgentError::FailedPrecondition(format!("{id} is {s}"))),
            None => Err(AgentError::NotFound(id.to_string())),
        }
    }

    async fn create_snapshot(&self, _host: HostId, id: SandboxId, _team: TeamId, _t: TemplateId) -> Result<u64, AgentError> {
        self.enter(Op::Snapshot, id).await?;
        match self.status_on_host(id) {
            Some(SandboxStatus::Running | SandboxStatus::Paused) => Ok(4096),
            Some(s) => Err(AgentError::FailedPrecondition(format!("{id} is {s}"))),
            None => Err(AgentError::NotFound(id.to_string())),
        }
    }

    async fn delete_snapshot(&self, _host: HostId, _team: TeamId, _t: TemplateId) -> Result<(), AgentError> {
        Ok(())
    }

    async fn list_sandboxes(&self, _host: HostId) -> Result<AgentInventory, AgentError> {
        Ok(AgentInventory {
            sandboxes: self
                .sandboxes
                .lock()
                .unwrap()
                .iter()
                .map(|(id, s)| AgentSandbox { sandbox_id: *id, status: *s })
                .collect(),
            auto_paused: vec![],
        })
    }
}

/// An online regular host in `store`.
pub async fn online_host(store: &Arc<dyn Store>) -> HostId {
    let id = HostId::new();
    store
        .create_host(NewHost {
            id,
            kind: wrenn_core::model::HostKind::Regular,
            team_id: None,
            provider: "test".into(),
            availability_zone: "local".into(),
            created_by: None,
        })
        .await
        .expect("create host");
    let spec = HostSpec {
        address: "127.0.0.1:50051".into(),
        arch: "x86_64".into(),
        cpu_cores: 64,
        memory_mb: 262_144,
        disk_gb: 4_000,
    };
    assert!(store.register_host(id, &spec).await.expect("register"));
    id
}

/// A user owning a fresh team.
pub async fn team(store: &Arc<dyn Store>) -> (UserId, TeamId) {
    let user = UserId::new();
    store
        .create_user(NewUser {
            id: user,
            email: format!("{}@example.com", user.uuid().simple()),
            password_hash: None,
            name: "Test".into(),
            status: UserStatus::Active,
            is_admin: false,
        })
        .await
        .expect("user");
    let team = TeamId::new();
    store
        .create_team(
            NewTeam {
                id: team,
                name: "Test team".into(),
                slug: wrenn_core::id::new_team_slug(),
                is_byoc: false,
            },
            user,
            true,
        )
        .await
        .expect("team");
    (user, team)
}
