//! Warm capsules ([`ProcessRuntimeOptions::warm_capsules`]): capsules of the built-in
//! template with the pooled disk size, booted ahead of time under a provisional id —
//! init step done, envd answering, nothing of any team's code ever run in them. A create
//! that fits (built-in template, pooled disk size) takes one and gives it its identity:
//! its network namespace, directory and cgroups are renamed to the real id, its id range
//! is re-keyed, its cgroup limits are set to the request's, its hostname becomes the id
//! (from the host, in its UTS namespace, which the capsule cannot change), its DNS is
//! served, and it is recorded as any capsule. The manager then sends envd the team's
//! defaults and access token as for every create. A create that does not fit, or finds
//! none warm, boots a capsule as usual.
//!
//! Renaming a cgroup needs cgroup v1 (the unified hierarchy refuses renames): on v2 a
//! claim fails once, the capsule is discarded and warm capsules are turned off with a
//! warning.
//!
//! Warm capsules are refilled in the background ([`ProcessRuntime::start_warm_refill`],
//! started by [`Runtime::start_background`](crate::runtime::Runtime::start_background)
//! after the start-up sweep): one is booted as soon as one is taken, at normal priority.
//! They are never recorded. Until claimed, a warm capsule holds a *lease* on its agent
//! (the init step's stdin, [`crate::init::claim`]): when the agent process ends, even
//! by `SIGKILL`, the pipe closes and the capsule's processes die with it; an agent that
//! restarts sweeps the namespace, cgroups and directory left. A runtime that is dropped
//! discards them entirely.
//!
//! [`ProcessRuntimeOptions::warm_capsules`]: super::ProcessRuntimeOptions::warm_capsules

use crate::runtime::error_chain;
use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId};

use super::cgroup::SandboxCgroup;
use super::template::Lowers;
use super::{
    Booted, ProcessRuntime, TEARDOWN_TIMEOUT, blocking, idrange, kill_netns_processes,
    unmount_all_under,
};
use crate::disk::{self, DeviceId};
use crate::network;
use crate::runtime::{Instance, RuntimeError, SandboxConfig};

/// A capsule booted ahead of time under a provisional id.
#[derive(Debug)]
pub(super) struct WarmCapsule {
    id: SandboxId,
    lowers: Lowers,
    disk: DeviceId,
    booted: Booted,
}

/// The warm capsules of a runtime. See the [module docs](self).
#[derive(Debug, Default)]
pub(super) struct WarmCapsules {
    ready: Mutex<VecDeque<WarmCapsule>>,
    /// Notified on every take.
    taken: Notify,
    refill: Mutex<Option<JoinHandle<()>>>,
    /// Set when a claim found that this host cannot rename cgroups.
    off: AtomicBool,
    /// Cancelled when the refill is to end after the boot in flight.
    stop: CancellationToken,
}

impl WarmCapsules {
    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<WarmCapsule>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many are ready now.
    pub fn len(&self) -> usize {
        self.ready().len()
    }

    fn take(&self) -> Option<WarmCapsule> {
        let taken = self.ready().pop_front();
        if taken.is_some() {
            self.taken.notify_one();
        }
        taken
    }

    /// Stops the refill and hands out every warm capsule (to be discarded).
    pub fn drain(&self) -> Vec<WarmCapsule> {
        if let Some(refill) = self.refill.lock().unwrap_or_else(|p| p.into_inner()).take() {
            refill.abort();
        }
        self.ready().drain(..).collect()
    }
}

impl ProcessRuntime {
    /// Starts keeping [`ProcessRuntimeOptions::warm_capsules`](super::ProcessRuntimeOptions::warm_capsules)
    /// capsules warm (once; nothing when 0). The refill holds the runtime weakly.
    pub(super) fn start_warm_refill(self: &Arc<Self>) {
        let depth = self.options.warm_capsules;
        let mut refill = self.warm.refill.lock().unwrap_or_else(|p| p.into_inner());
        if depth == 0 || refill.is_some() {
            return;
        }
        let warm = Arc::clone(&self.warm);
        let runtime = Arc::downgrade(self);
        *refill = Some(tokio::spawn(refill_warm(runtime, warm, depth)));
    }

    /// Ends the refill after the boot in flight (whose capsule then joins the ready
    /// ones), waits for it, and discards every warm capsule. A refill dropped in the
    /// middle of a boot would leave that capsule's namespace, cgroups and mounts.
    pub(super) async fn stop_warm_refill(&self) {
        self.warm.stop.cancel();
        let refill = self
            .warm
            .refill
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(refill) = refill {
            let _ = refill.await;
        }
        // Synchronous, as when the runtime is dropped: this runs once, at shutdown.
        for warm in self.warm.drain() {
            self.discard(warm);
        }
    }

    /// How many warm capsules are ready.
    pub fn warm_capsules(&self) -> usize {
        self.warm.len()
    }

    /// The configuration a warm capsule boots with.
    fn warm_config(&self, id: SandboxId) -> SandboxConfig {
        SandboxConfig {
            id,
            team_id: PLATFORM_TEAM_ID,
            template_team_id: PLATFORM_TEAM_ID,
            template_id: BUILTIN_TEMPLATE_ID,
            vcpus: 1,
            memory_mb: 512,
            disk_size_mb: self.options.disk_pool_size_mb,
            default_user: String::new(),
            default_env: Default::default(),
        }
    }

    /// Boots one warm capsule under a new provisional id; `None` while no pooled disk
    /// is ready (a warm capsule never makes a disk on demand).
    async fn boot_warm(&self) -> Result<Option<WarmCapsule>, RuntimeError> {
        if self.pool.ready() == 0 {
            return Ok(None);
        }
        let id = SandboxId::new();
        let config = self.warm_config(id);
        let lowers = Lowers::Image(self.image.clone());
        self.make_dirs(id)?;
        let booted = match self.new_disk(id, config.disk_size_mb).await {
            Ok(disk) => self
                .boot(&config, &lowers, disk, true)
                .await
                .map(|booted| (disk, booted)),
            Err(e) => Err(e),
        };
        match booted {
            Ok((disk, booted)) => Ok(Some(WarmCapsule {
                id,
                lowers,
                disk,
                booted,
            })),
            Err(e) => {
                let _ = self.remove_sandbox_dir(id).await;
                Err(e)
            }
        }
    }

    /// Gives a warm capsule the identity and limits of `config` if one is ready and
    /// `config` fits (built-in template, pooled disk size); `None` otherwise, or when
    /// the claim failed (the capsule is then discarded and nothing of it is left
    /// under either id).
    pub(super) async fn claim_warm(&self, config: &SandboxConfig) -> Option<Instance> {
        if config.template_id != BUILTIN_TEMPLATE_ID
            || config.disk_size_mb != self.options.disk_pool_size_mb
            || self.warm.off.load(Ordering::Relaxed)
        {
            return None;
        }
        let started = Instant::now();
        let mut warm = self.warm.take()?;
        let id = config.id;
        let alive = matches!(warm.booted.child.get_mut().try_wait(), Ok(None));
        if !alive {
            tracing::warn!(sandbox_id = %id, "a warm capsule had exited; booting one");
            self.discard(warm);
            return None;
        }
        if let Err(e) = self.rename_warm(&mut warm, id) {
            if let Some(libc_eperm) = e.raw_os_error()
                && libc_eperm == rustix::io::Errno::PERM.raw_os_error()
            {
                tracing::warn!(
                    "this host cannot rename cgroups (cgroup v2): warm capsules are off"
                );
                self.warm.off.store(true, Ordering::Relaxed);
                self.warm.drain().into_iter().for_each(|w| self.discard(w));
            } else {
                tracing::warn!(sandbox_id = %id, "claiming a warm capsule: {}; booting one", error_chain(&e));
            }
            self.discard(warm);
            return None;
        }
        let WarmCapsule {
            lowers,
            disk,
            booted,
            ..
        } = warm;
        let pid1 = booted.pid1.0;
        let limits = self.limits(config);
        let cgroup = self.sandbox_cgroup(id);
        let name = id.to_string();
        let named = blocking(move || {
            restore_priority(&cgroup);
            cgroup.set_limits(limits)?;
            set_hostname(pid1, &name)
        })
        .await;
        let claimed = match named.and_then(|r| r.map_err(super::io_err("give it its identity"))) {
            Ok(()) => self.register(config, lowers, disk, booted).await,
            Err(e) => {
                self.teardown(id, Some(&booted.child)).await;
                Err(e)
            }
        };
        match claimed {
            Ok(instance) => {
                tracing::debug!(
                    sandbox_id = %id,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "warm capsule claimed"
                );
                Some(instance)
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, "claiming a warm capsule: {}; booting one", error_chain(&e));
                if let Err(e) = self.remove_sandbox_dir(id).await {
                    tracing::warn!(sandbox_id = %id, "removing a failed warm capsule: {}", error_chain(&e));
                }
                None
            }
        }
    }

    /// Moves a warm capsule's namespace, directory, cgroups and id range from its
    /// provisional id to `id`. On failure everything is back under the provisional id.
    fn rename_warm(&self, warm: &mut WarmCapsule, id: SandboxId) -> std::io::Result<()> {
        let from = warm.id;
        let old_netns = Self::netns_name(from);
        let new_netns = Self::netns_name(id);
        self.network
            .rename(&mut warm.booted.claimed, &new_netns)
            .map_err(std::io::Error::other)?;
        let undo_netns = |warm: &mut WarmCapsule| {
            if let Err(e) = self.network.rename(&mut warm.booted.claimed, &old_netns) {
                tracing::warn!(
                    "renaming a warm capsule's namespace back: {}",
                    error_chain(&e)
                );
            }
        };
        let (old_dir, new_dir) = (self.layout.sandbox_dir(from), self.layout.sandbox_dir(id));
        if let Err(e) = std::fs::rename(&old_dir, &new_dir) {
            undo_netns(warm);
            return Err(e);
        }
        if let Err(e) = self
            .sandbox_cgroup(from)
            .rename_to(&self.sandbox_cgroup(id))
        {
            let _ = std::fs::rename(&new_dir, &old_dir);
            undo_netns(warm);
            return Err(e);
        }
        warm.id = id;
        if self.ids.rekey(from, id)
            && let Some(map) = self.ids.get(id)
        {
            idrange::write_record(&new_dir, map)?;
        }
        Ok(())
    }

    /// Kills a warm capsule and removes everything of it (synchronously: also used
    /// when the runtime is dropped).
    pub(super) fn discard(&self, warm: WarmCapsule) {
        let WarmCapsule { id, booted, .. } = warm;
        let cgroup = self.sandbox_cgroup(id);
        if let Err(e) = cgroup.kill_all(TEARDOWN_TIMEOUT) {
            tracing::warn!(sandbox_id = %id, "killing a warm capsule: {}", error_chain(&e));
        }
        let mut child = booted.child.into_inner();
        let _ = child.start_kill();
        let netns = booted.claimed.net().netns.clone();
        drop(booted.claimed);
        let _ = kill_netns_processes(&netns, TEARDOWN_TIMEOUT);
        if let Err(e) = network::netns::remove(&netns) {
            tracing::warn!(sandbox_id = %id, "removing a warm capsule's namespace: {}", error_chain(&e));
        }
        if let Err(e) = cgroup.remove(TEARDOWN_TIMEOUT) {
            tracing::warn!(sandbox_id = %id, "removing a warm capsule's cgroups: {}", error_chain(&e));
        }
        self.ids.release(id);
        let dir = self.layout.sandbox_dir(id);
        let removed = disk::discard(&self.disk_mount_point(id))
            .and_then(|()| unmount_all_under(&dir))
            .map_err(|e| error_chain(&e))
            .and_then(|()| std::fs::remove_dir_all(&dir).map_err(|e| error_chain(&e)));
        if let Err(e) = removed {
            tracing::warn!(sandbox_id = %id, "removing a warm capsule's directory: {e}");
        }
    }
}

/// Keeps `depth` capsules warm while the runtime lives: one is booted as soon as one
/// is taken. Unlike the other spares this does not wait for a pause between creates:
/// measured here with back-to-back creates, waiting left most creates without a warm
/// capsule (create p50 13.6 ms against 8.8 ms refilling at once, depth 4).
async fn refill_warm(runtime: Weak<ProcessRuntime>, warm: Arc<WarmCapsules>, depth: usize) {
    loop {
        while warm.len() < depth && !warm.off.load(Ordering::Relaxed) {
            if warm.stop.is_cancelled() {
                return;
            }
            let Some(rt) = runtime.upgrade() else {
                return;
            };
            match rt.boot_warm().await {
                Ok(Some(capsule)) => warm.ready().push_back(capsule),
                Ok(None) => {
                    drop(rt);
                    tokio::time::sleep(NO_DISK_RETRY).await;
                }
                Err(e) => {
                    drop(rt);
                    tracing::warn!("booting a warm capsule: {}", error_chain(&e));
                    tokio::time::sleep(FAILURE_RETRY).await;
                }
            }
        }
        tokio::select! {
            () = warm.taken.notified() => {}
            () = warm.stop.cancelled() => return,
        }
    }
}

/// How soon the refill looks again for a pooled disk.
const NO_DISK_RETRY: Duration = Duration::from_millis(20);
/// How long the refill waits after a warm capsule failed to boot.
const FAILURE_RETRY: Duration = Duration::from_secs(5);

/// Gives every thread in `cgroup` normal priority (a warm capsule booted at idle
/// priority); again while threads started meanwhile by idle ones are found.
fn restore_priority(cgroup: &SandboxCgroup) {
    let mut done = std::collections::HashSet::new();
    for _ in 0..3 {
        let new: Vec<i32> = cgroup
            .threads()
            .into_iter()
            .filter(|t| !done.contains(t))
            .collect();
        if new.is_empty() {
            return;
        }
        for tid in new {
            crate::idle::restore_thread(tid);
            done.insert(tid);
        }
    }
}

/// Sets the hostname in the UTS namespace of process `pid` (from a thread of its own:
/// joining a namespace changes only the calling thread).
fn set_hostname(pid: i32, name: &str) -> std::io::Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/uts"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::HostNameAndNISDomainName),
                )?;
                rustix::system::sethostname(name.as_bytes())?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the hostname thread panicked")))
    })
}
