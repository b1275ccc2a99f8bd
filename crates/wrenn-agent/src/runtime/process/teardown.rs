//! Taking a capsule down: its processes killed (the whole network namespace too),
//! network and cgroups removed, its directory handed to the background [`removal`](super::removal).

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use wrenn_core::id::SandboxId;

use super::cgroup::SandboxCgroup;
use super::idrange::IdRanges;
use crate::network::{self, Network};
use crate::runtime::{RuntimeError, blocking, error_chain, io_err};

use super::{ProcessRuntime, TEARDOWN_TIMEOUT, cgroup};

/// What tears a sandbox down, owning what it needs so that it can run after a destroy
/// has answered ([`ProcessRuntime::remove_sandbox`]).
#[derive(Debug)]
pub(super) struct Teardown {
    id: SandboxId,
    cgroup: SandboxCgroup,
    netns: String,
    network: Arc<Network>,
    ids: Arc<IdRanges>,
}

impl Teardown {
    /// Kills every process of the sandbox (reaping `child`, the init program's outer
    /// process) and removes its network namespace and cgroups (not its directories).
    /// Best effort; problems are logged.
    pub(super) async fn run(self, child: Option<&tokio::sync::Mutex<Child>>) {
        let Self {
            id,
            cgroup,
            netns,
            network,
            ids,
        } = self;
        // Killing the sandbox's processes (PID 1 included) ends its pid namespace; the
        // `unshare` parent then reaps PID 1 and exits by itself, and we reap it.
        let cg = cgroup.clone();
        let killed = blocking(move || cg.kill_all(TEARDOWN_TIMEOUT)).await;
        if let Err(e) = killed.and_then(|r| r.map_err(io_err("kill"))) {
            tracing::warn!(sandbox_id = %id, "killing the sandbox's processes: {}", error_chain(&e));
        }
        if let Some(child) = child {
            let mut child = child.lock().await;
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                if tokio::time::timeout(TEARDOWN_TIMEOUT, child.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(sandbox_id = %id, "sandbox process did not exit");
                }
            }
        }
        // Anything still in the namespace but outside the cgroups (the `unshare` parent
        // after an agent crash, an init step that never joined).
        let ns = netns.clone();
        let killed = blocking(move || kill_netns_processes(&ns, TEARDOWN_TIMEOUT)).await;
        if let Err(e) = killed.and_then(|r| r.map_err(io_err("kill"))) {
            tracing::warn!(sandbox_id = %id, "killing processes in {netns}: {}", error_chain(&e));
        }
        if let Err(e) = network.remove(&netns).await {
            tracing::warn!(sandbox_id = %id, "removing the network: {}", error_chain(&e));
        }
        let removed = blocking(move || cgroup.remove(TEARDOWN_TIMEOUT)).await;
        if let Err(e) = removed.and_then(|r| r.map_err(io_err("remove cgroups"))) {
            tracing::warn!(sandbox_id = %id, "{}", error_chain(&e));
        }
        // Its processes are gone: the id range can go to another capsule.
        ids.release(id);
    }
}

impl ProcessRuntime {
    /// Kills every process of sandbox `id` and removes its network namespace and
    /// cgroups (not its directories). Best effort; problems are logged.
    pub(super) async fn teardown(&self, id: SandboxId, child: Option<&tokio::sync::Mutex<Child>>) {
        self.teardown_of(id).run(child).await;
    }

    /// What tears sandbox `id` down ([`Teardown`]).
    pub(super) fn teardown_of(&self, id: SandboxId) -> Teardown {
        Teardown {
            id,
            cgroup: self.sandbox_cgroup(id),
            netns: Self::netns_name(id),
            network: Arc::clone(&self.network),
            ids: Arc::clone(&self.ids),
        }
    }

    /// Stops sandbox `id` and removes it with `sandboxes/{id}/` (disk included).
    ///
    /// Every process of the sandbox gets `SIGKILL` before this returns (a process
    /// cannot run again once it is sent, and PID 1 dying ends the pid namespace), so
    /// nothing of the sandbox runs afterwards; the directory is moved out of the way
    /// at once ([`Removals`]). Waiting for the processes to be gone, removing the
    /// network, the cgroups and the directory happen after answering (measured here:
    /// 4.5–7.5 ms that a delete no longer waits for); [`removals_settled`] waits for
    /// them.
    ///
    /// [`removals_settled`]: Self::removals_settled
    pub(super) async fn remove_sandbox(&self, id: SandboxId) -> Result<(), RuntimeError> {
        let live = self.lock_live().remove(&id);
        let cgroup = self.sandbox_cgroup(id);
        if let Err(e) = blocking(move || cgroup.kill_now()).await {
            tracing::warn!(sandbox_id = %id, "killing the sandbox's processes: {}", error_chain(&e));
        }
        let teardown = self.teardown_of(id);
        self.removals
            .remove_after(&self.layout.sandbox_dir(id), async move {
                teardown
                    .run(live.as_ref().and_then(|l| l.child.as_ref()))
                    .await;
            })
    }

    /// Waits until the directories of destroyed sandboxes are gone (they are removed
    /// in the background after [`destroy`](crate::runtime::Runtime::destroy) answers).
    pub async fn removals_settled(&self) {
        self.removals.settled().await;
    }
}

/// SIGKILLs every process whose network namespace is `/run/netns/{netns}` until none
/// is left (catches processes outside the cgroups, such as the `unshare` parent).
pub(super) fn kill_netns_processes(netns: &str, timeout: Duration) -> std::io::Result<()> {
    let Ok(target) = std::fs::metadata(network::netns_path(netns)) else {
        return Ok(());
    };
    let deadline = Instant::now() + timeout;
    loop {
        let mut found = false;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(ns) = std::fs::metadata(entry.path().join("ns/net")) else {
                continue;
            };
            if ns.dev() == target.dev() && ns.ino() == target.ino() {
                // Zombies keep their entry until reaped but no namespace link.
                found = true;
                cgroup::kill_pid(pid);
            }
        }
        if !found {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("processes in network namespace {netns} did not exit within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
