//! Test helpers for crates that build on wrenn-core (feature `testing`).
//!
//! [`FakeAgents`] is a controllable [`HostAgents`] double for control-plane tests
//! that must not depend on a real host: it keeps a real map of the sandboxes "on
//! the host", so tests can check the database never contradicts it, and each
//! operation can be made to fail once, to take a while, or to wait at a gate until
//! the test releases it. End-to-end tests use the real agent instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::agents::{
    AgentInventory, AgentSandbox, HostAgents, HostCallError, SandboxSpec, StartedSandbox,
};
use crate::id::{HostId, SandboxId, TeamId, TemplateId};
use crate::lifecycle::SandboxStatus;
use crate::model::MetricHistory;
use tokio::sync::Semaphore;

/// Agent operations the double can script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `create_sandbox`.
    Create,
    /// `pause_sandbox`.
    Pause,
    /// `resume_sandbox`.
    Resume,
    /// `destroy_sandbox`.
    Destroy,
    /// `ping_sandbox`.
    Ping,
    /// `create_snapshot`.
    Snapshot,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default, Debug)]
struct Script {
    fail: HashMap<Op, HostCallError>,
    delay: HashMap<Op, Duration>,
    gate: HashMap<Op, Arc<Semaphore>>,
}

/// The double.
#[derive(Default, Debug)]
pub struct FakeAgents {
    /// What the host holds.
    pub sandboxes: Mutex<HashMap<SandboxId, SandboxStatus>>,
    script: Mutex<Script>,
    /// Every call, in order.
    pub calls: Mutex<Vec<(Op, SandboxId)>>,
    /// Samples "the agent holds" per sandbox, handed over (and cleared) by
    /// `take_metric_history`.
    pub metric_history: Mutex<HashMap<SandboxId, MetricHistory>>,
    /// Every template copy (from, to, template), in order.
    pub copies: Mutex<Vec<(HostId, HostId, TemplateId)>>,
}

impl FakeAgents {
    /// A double with an empty host.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The next call of `op` fails with `err`.
    pub fn fail_next(&self, op: Op, err: HostCallError) {
        lock(&self.script).fail.insert(op, err);
    }

    /// Every call of `op` takes `d`.
    pub fn delay(&self, op: Op, d: Duration) {
        lock(&self.script).delay.insert(op, d);
    }

    /// Calls of `op` wait until [`FakeAgents::release`].
    pub fn hold(&self, op: Op) {
        lock(&self.script)
            .gate
            .insert(op, Arc::new(Semaphore::new(0)));
    }

    /// Lets held calls of `op` proceed (and future ones too).
    pub fn release(&self, op: Op) {
        if let Some(g) = lock(&self.script).gate.remove(&op) {
            g.add_permits(1 << 20);
        }
    }

    /// The sandbox's status on the host, if it is there.
    pub fn status_on_host(&self, id: SandboxId) -> Option<SandboxStatus> {
        lock(&self.sandboxes).get(&id).copied()
    }

    /// The sandbox vanishes from the host (crash, reboot).
    pub fn lose(&self, id: SandboxId) {
        lock(&self.sandboxes).remove(&id);
    }

    /// How many calls of `op` were made.
    pub fn count(&self, op: Op) -> usize {
        lock(&self.calls).iter().filter(|(o, _)| *o == op).count()
    }

    async fn enter(&self, op: Op, id: SandboxId) -> Result<(), HostCallError> {
        lock(&self.calls).push((op, id));
        let (gate, delay) = {
            let s = lock(&self.script);
            (s.gate.get(&op).cloned(), s.delay.get(&op).copied())
        };
        if let Some(g) = gate {
            let _permit = g.acquire().await;
        }
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match lock(&self.script).fail.remove(&op) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn set(
        &self,
        id: SandboxId,
        from: &[SandboxStatus],
        to: SandboxStatus,
    ) -> Result<(), HostCallError> {
        let mut map = lock(&self.sandboxes);
        match map.get_mut(&id) {
            None => Err(HostCallError::NotFound(id.to_string())),
            Some(s) if from.contains(s) => {
                *s = to;
                Ok(())
            }
            Some(s) => Err(HostCallError::FailedPrecondition(format!("{id} is {s}"))),
        }
    }
}

#[async_trait::async_trait]
impl HostAgents for FakeAgents {
    async fn create_sandbox(
        &self,
        _host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError> {
        self.enter(Op::Create, spec.sandbox_id).await?;
        lock(&self.sandboxes).insert(spec.sandbox_id, SandboxStatus::Running);
        Ok(StartedSandbox {
            host_ip: "10.11.0.2".into(),
            metadata: [("agent_version".to_string(), "test".to_string())].into(),
        })
    }

    async fn pause_sandbox(&self, _host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        self.enter(Op::Pause, id).await?;
        self.set(id, &[SandboxStatus::Running], SandboxStatus::Paused)
    }

    async fn resume_sandbox(
        &self,
        _host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError> {
        self.enter(Op::Resume, spec.sandbox_id).await?;
        self.set(
            spec.sandbox_id,
            &[SandboxStatus::Paused, SandboxStatus::Hibernated],
            SandboxStatus::Running,
        )?;
        Ok(StartedSandbox {
            host_ip: "10.11.0.2".into(),
            metadata: Default::default(),
        })
    }

    async fn destroy_sandbox(&self, _host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        self.enter(Op::Destroy, id).await?;
        match lock(&self.sandboxes).remove(&id) {
            Some(_) => Ok(()),
            None => Err(HostCallError::NotFound(id.to_string())),
        }
    }

    async fn ping_sandbox(&self, _host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        self.enter(Op::Ping, id).await?;
        match self.status_on_host(id) {
            Some(SandboxStatus::Running) => Ok(()),
            Some(s) => Err(HostCallError::FailedPrecondition(format!("{id} is {s}"))),
            None => Err(HostCallError::NotFound(id.to_string())),
        }
    }

    async fn create_snapshot(
        &self,
        _host: HostId,
        id: SandboxId,
        _team: TeamId,
        _t: TemplateId,
    ) -> Result<u64, HostCallError> {
        self.enter(Op::Snapshot, id).await?;
        match self.status_on_host(id) {
            Some(SandboxStatus::Running | SandboxStatus::Paused) => Ok(4096),
            Some(s) => Err(HostCallError::FailedPrecondition(format!("{id} is {s}"))),
            None => Err(HostCallError::NotFound(id.to_string())),
        }
    }

    async fn delete_snapshot(
        &self,
        _host: HostId,
        _team: TeamId,
        _t: TemplateId,
    ) -> Result<(), HostCallError> {
        Ok(())
    }

    async fn copy_template(
        &self,
        from: HostId,
        to: HostId,
        _team: TeamId,
        template: TemplateId,
    ) -> Result<u64, HostCallError> {
        lock(&self.copies).push((from, to, template));
        Ok(4096)
    }

    async fn list_sandboxes(&self, _host: HostId) -> Result<AgentInventory, HostCallError> {
        Ok(AgentInventory {
            sandboxes: lock(&self.sandboxes)
                .iter()
                .map(|(id, s)| AgentSandbox {
                    sandbox_id: *id,
                    status: *s,
                })
                .collect(),
            auto_paused: vec![],
        })
    }

    async fn take_metric_history(
        &self,
        _host: HostId,
        id: SandboxId,
    ) -> Result<MetricHistory, HostCallError> {
        if !lock(&self.sandboxes).contains_key(&id) {
            return Err(HostCallError::NotFound(format!("sandbox {id}")));
        }
        Ok(lock(&self.metric_history).remove(&id).unwrap_or_default())
    }
}

/// Registers an online regular host in `hosts` (address `127.0.0.1:50051`, a large
/// machine) and returns its id.
///
/// # Panics
/// If the store refuses (a broken test setup).
pub async fn online_host(hosts: &dyn crate::repo::HostRepo) -> HostId {
    let id = HostId::new();
    hosts
        .create_host(crate::repo::NewHost {
            id,
            kind: crate::model::HostKind::Regular,
            team_id: None,
            provider: "test".into(),
            availability_zone: "local".into(),
            created_by: None,
        })
        .await
        .expect("create host");
    let spec = crate::repo::HostSpec {
        address: "127.0.0.1:50051".into(),
        arch: "x86_64".into(),
        cpu_cores: 64,
        memory_mb: 262_144,
        disk_gb: 4_000,
    };
    assert!(hosts.register_host(id, &spec).await.expect("register host"));
    id
}

/// A loopback TCP port that is free now, for a server a test starts (and perhaps
/// restarts) as a separate process on a port it names.
///
/// The port lies below the kernel's ephemeral range: a port `bind(0)` hands out is
/// free again the moment its listener closes, and any outgoing connection of any
/// process may then take it as its local end, so a server started on it later can
/// meet `EADDRINUSE`. Outside that range only another explicit bind can take it.
///
/// # Panics
/// If no port in the range is free (a broken machine).
pub fn unused_listen_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(11_000, 65_535);
    let (first, span) = (10_000_u32, low - 10_000);
    // Different test binaries start at different places; one binary walks on.
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..span {
        let offset = seed.wrapping_add(NEXT.fetch_add(7_919, Ordering::Relaxed)) % span;
        let port = u16::try_from(first + offset).expect("below 65536");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {first} and {low}");
}
