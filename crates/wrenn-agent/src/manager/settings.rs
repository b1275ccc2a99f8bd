//! [`ManagerSettings`] (the timings of the state machine) and [`HostCapacity`] (what
//! creates and restores are admitted against).

use crate::runtime::error_chain;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wrenn_core::config::Overcommit;
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;

use super::Sandbox;
use crate::error::{AgentError, AgentResult};

/// Timings of the state machine. The defaults are the production values; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// How long a pause waits for in-flight proxy connections (2 s).
    pub drain_grace: Duration,
    /// Budget of envd's `PrepareSnapshot` before a pause (3 s, best effort).
    pub prepare_timeout: Duration,
    /// How long to wait for envd after create, resume and restore (30 s).
    pub envd_ready_timeout: Duration,
    /// Per-sandbox budget of PauseAll (2 min). A pause still running then keeps going
    /// in the background and is reported as failed.
    pub pause_all_timeout: Duration,
    /// A paused sandbox is hibernated after this long (`AgentConfig::hibernate_after`,
    /// default 10 min).
    pub hibernate_after: Duration,
    /// Smallest effective inactivity timeout: a `timeout_sec` below it is raised to it
    /// (60 s).
    pub min_timeout: Duration,
    /// Overall bound of [`SandboxManager::shutdown`] (60 s).
    ///
    /// [`SandboxManager::shutdown`]: crate::manager::SandboxManager::shutdown
    pub shutdown_timeout: Duration,
    /// How often every running sandbox's envd is asked for its health
    /// (`WRENN_HEALTH_INTERVAL_SECS`, 10 s).
    pub health_interval: Duration,
    /// Budget of one health call (`WRENN_HEALTH_TIMEOUT_SECS`, 5 s).
    pub health_timeout: Duration,
    /// Consecutive failed health calls after which a sandbox is declared dead (2).
    pub health_failures: u32,
    /// What this host admits (memory and vCPUs with their overcommit ratios); `None`
    /// admits everything.
    pub capacity: Option<HostCapacity>,
}

/// The capacity admission works against: the host's memory and CPUs, with the
/// deployment's overcommit ratios and memory reserve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostCapacity {
    /// Host memory (MiB).
    pub memory_mb: u64,
    /// Host CPUs.
    pub cpus: u32,
    /// Ratios and reserve (`WRENN_MEMORY_OVERCOMMIT`, `WRENN_CPU_OVERCOMMIT`,
    /// `WRENN_MEMORY_RESERVE_MB`).
    pub overcommit: Overcommit,
}

impl HostCapacity {
    /// This host's memory (`/proc/meminfo`) and CPUs, with `overcommit`.
    pub fn of_this_host(overcommit: Overcommit) -> std::io::Result<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or_else(|| std::io::Error::other("/proc/meminfo has no MemTotal"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Ok(Self {
            memory_mb: kib / 1024,
            cpus,
            overcommit,
        })
    }

    /// Refuses `vcpus`/`memory_mb` more on top of `committed` (vCPUs, MiB) beyond the
    /// host's limits, naming the resource, what is asked and what is left.
    pub fn admit(&self, committed: (u64, u64), vcpus: u32, memory_mb: u32) -> AgentResult<()> {
        let (used_vcpus, used_mb) = committed;
        let o = &self.overcommit;
        let mem_limit = o.memory_limit_mb(self.memory_mb);
        let cpu_limit = o.vcpu_limit(u64::from(self.cpus));
        if used_mb + u64::from(memory_mb) > mem_limit {
            return Err(AgentError::ResourceExhausted(format!(
                "host memory exhausted: the capsule needs {memory_mb} MiB but {} of the host's \
                 {mem_limit} MiB for capsules are free ({} MiB × {} overcommit − {} MiB reserve)",
                mem_limit.saturating_sub(used_mb),
                self.memory_mb,
                o.memory,
                o.memory_reserve_mb
            )));
        }
        if used_vcpus + u64::from(vcpus) > cpu_limit {
            return Err(AgentError::ResourceExhausted(format!(
                "host vCPUs exhausted: the capsule needs {vcpus} vCPUs but {} of the host's \
                 {cpu_limit} are free ({} CPUs × {} overcommit)",
                cpu_limit.saturating_sub(used_vcpus),
                self.cpus,
                o.cpu
            )));
        }
        Ok(())
    }
}

impl ManagerSettings {
    /// Takes the tunables of the agent's configuration: `hibernate_after`, the health
    /// checks, and admission against this host's memory and CPUs with the configured
    /// overcommit (left off, with a warning, if `/proc/meminfo` cannot be read).
    pub fn apply_config(&mut self, config: &wrenn_core::config::AgentConfig) {
        self.hibernate_after = config.hibernate_after;
        self.health_interval = config.health_interval;
        self.health_timeout = config.health_timeout;
        match HostCapacity::of_this_host(config.overcommit) {
            Ok(c) => self.capacity = Some(c),
            Err(e) => tracing::warn!(
                "admission is off: cannot read the host's memory: {}",
                error_chain(&e)
            ),
        }
    }
}

impl Default for ManagerSettings {
    fn default() -> Self {
        Self {
            drain_grace: Duration::from_secs(2),
            prepare_timeout: Duration::from_secs(3),
            envd_ready_timeout: Duration::from_secs(30),
            pause_all_timeout: Duration::from_secs(120),
            hibernate_after: wrenn_core::config::DEFAULT_HIBERNATE_AFTER,
            min_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(5),
            health_failures: 2,
            capacity: None,
        }
    }
}

/// vCPUs and MiB held by the sandboxes of `map` that have (or are getting) processes
/// on this host.
pub(super) fn committed(map: &HashMap<SandboxId, Arc<Sandbox>>) -> (u64, u64) {
    map.values().fold((0, 0), |(vcpus, mb), sb| {
        sb.with(|s| {
            if matches!(
                s.status,
                SandboxStatus::Starting
                    | SandboxStatus::Running
                    | SandboxStatus::Pausing
                    | SandboxStatus::Paused
                    | SandboxStatus::Resuming
                    | SandboxStatus::Snapshotting
                    | SandboxStatus::Stopping
            ) {
                (
                    vcpus + u64::from(s.config.vcpus),
                    mb + u64::from(s.config.memory_mb),
                )
            } else {
                (vcpus, mb)
            }
        })
    })
}
