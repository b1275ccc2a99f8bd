//! Booting a capsule: a spare init program gets its go-ahead into fresh cgroups and a
//! ready network, envd answers on its socket, and the capsule is registered live
//! ([`ProcessRuntime::start`] = boot + register).

use crate::runtime::error_chain;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::process::Child;
use tonic::transport::{Endpoint, Uri};
use wrenn_core::id::SandboxId;
use wrenn_proto::envd::v1::HealthRequest;
use wrenn_proto::envd::v1::system_client::SystemClient;

use super::cgroup::{Limits, SandboxCgroup};
use super::inits::Waiting;
use super::template::Lowers;
use crate::disk::{self, DeviceId};
use crate::init::{self, InitSpec};
use crate::network::{self};
use crate::runtime::{EnvdEndpoint, Instance, RuntimeError, SandboxConfig, blocking, io_err};

use super::{
    Booted, LOG_TAIL_BYTES, Live, ProcessRuntime, RUNTIME_NAME, idrange, inits, network_err,
};

impl ProcessRuntime {
    /// Starts a sandbox whose directory and disk are ready ([`boot`](Self::boot), then
    /// [`register`](Self::register)); on failure everything but the directory and disk
    /// is torn down.
    pub(super) async fn start(
        &self,
        config: &SandboxConfig,
        lowers: Lowers,
        disk: DeviceId,
    ) -> Result<Instance, RuntimeError> {
        let booted = self.boot(config, &lowers, disk, false).await?;
        self.register(config, lowers, disk, booted).await
    }

    /// Boots sandbox `config.id`, whose directory and disk are ready, until its envd
    /// answers; on failure everything but the directory and disk is torn down.
    ///
    /// A waiting init program (a spare, [`inits`]) and a ready network (a spare,
    /// named) are taken and the cgroups made; then the init program gets its go-ahead
    /// ([`crate::init`]: the spec and the capsule's `resolv.conf`). The network's DNS
    /// is not served yet ([`register`](Self::register) does it). A capsule booted
    /// `ahead_of_time` ([`warm`]) stays at idle priority.
    pub(super) async fn boot(
        &self,
        config: &SandboxConfig,
        lowers: &Lowers,
        disk: DeviceId,
        ahead_of_time: bool,
    ) -> Result<Booted, RuntimeError> {
        let id = config.id;
        let dir = self.layout.sandbox_dir(id);
        let cgroup = self.sandbox_cgroup(id);
        let limits = self.limits(config);
        let netns = Self::netns_name(id);
        let spec = match self.init_spec(config, lowers, &cgroup, &netns, &dir) {
            Ok(spec) => InitSpec {
                ahead_of_time,
                ..spec
            },
            Err(e) => {
                self.teardown(id, None).await;
                return Err(e);
            }
        };
        let cg = cgroup.clone();
        let io = self.options.io;
        let t0 = Instant::now();
        let us = move || t0.elapsed().as_micros() as u64;
        let (waiting, cgroups, claimed) = tokio::join!(
            async {
                let waiting = self.inits.take(&spec.log).await;
                tracing::debug!(elapsed_us = us(), "init program ready");
                waiting
            },
            blocking(move || {
                cg.create(limits)?;
                cg.set_io_limits(disk.major, disk.minor, &io)
            }),
            async {
                let prepared = self.network.prepare(&netns).await;
                tracing::debug!(elapsed_us = us(), "network prepared");
                prepared
            }
        );
        let waiting = waiting.map_err(io_err("start the sandbox's init program"));
        let (child, mut go, early_output) = match waiting {
            Ok(Waiting {
                child,
                go,
                early_output,
            }) => (tokio::sync::Mutex::new(child), go, early_output),
            Err(e) => {
                drop(claimed);
                self.teardown(id, None).await;
                return Err(e);
            }
        };
        let prepared = cgroups
            .and_then(|r| r.map_err(io_err(format!("set up the cgroups of {id}"))))
            .and_then(|()| claimed.map_err(network_err(id)))
            .and_then(|claimed| {
                // Closing the pipe without a go-ahead (dropping it on failure) is the
                // signal to give up; a warm capsule keeps it as its lease.
                match init::go(&mut go, &spec, &claimed.net().resolv_conf()) {
                    // The init step is gone: waiting for envd reports its exit and log.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(claimed),
                    Err(e) => Err(io_err(format!("start the init step of {id}"))(e)),
                    Ok(()) => Ok(claimed),
                }
            });
        let lease = ahead_of_time.then_some(go);
        tracing::debug!(elapsed_us = us(), "init program told to go on");
        let booted = match prepared {
            Ok(claimed) => self
                .wait_for_envd(id, &child, &dir, early_output)
                .await
                .and_then(|version| Ok((claimed, version, self.find_pid1(&cgroup)?))),
            Err(e) => Err(e),
        };
        tracing::debug!(elapsed_us = us(), "envd answered");
        match booted {
            Ok((claimed, version, pid1)) => Ok(Booted {
                child,
                claimed,
                version,
                pid1,
                lease,
            }),
            Err(e) => {
                self.teardown(id, Some(&child)).await;
                Err(e)
            }
        }
    }

    /// The cgroup limits of a sandbox.
    pub(super) fn limits(&self, config: &SandboxConfig) -> Limits {
        Limits {
            vcpus: config.vcpus,
            memory_bytes: u64::from(config.memory_mb) * 1024 * 1024,
            pids_max: self.options.pids_max,
        }
    }

    /// Makes a booted sandbox live: serves its DNS, tracks it and records it
    /// ([`state`]) for an agent that restarts. On failure it is torn down (not its
    /// directory and disk).
    pub(super) async fn register(
        &self,
        config: &SandboxConfig,
        lowers: Lowers,
        disk: DeviceId,
        booted: Booted,
    ) -> Result<Instance, RuntimeError> {
        let id = config.id;
        let Booted {
            child,
            claimed,
            version,
            pid1,
            lease,
        } = booted;
        if let Some(lease) = lease
            && let Err(e) = init::claim(lease)
        {
            self.teardown(id, Some(&child)).await;
            return Err(io_err(format!("claim the warm capsule {id}"))(e));
        }
        let net = match self.network.serve(claimed, &id.to_string()).await {
            Ok(net) => net,
            Err(e) => {
                self.teardown(id, Some(&child)).await;
                return Err(network_err(id)(e));
            }
        };
        let cgroup = self.sandbox_cgroup(id);
        let usage = cgroup.cpu_usage_ns().unwrap_or(0);
        let live = Arc::new(Live {
            config: config.clone(),
            lowers,
            cgroup,
            net: net.clone(),
            disk,
            child: Some(child),
            pid1,
            cpu: Mutex::new((usage, Instant::now())),
        });
        self.record_live(&live, &version);
        self.lock_live().insert(id, live);
        let mut metadata = BTreeMap::new();
        metadata.insert("runtime".to_owned(), RUNTIME_NAME.to_owned());
        metadata.insert("envd_version".to_owned(), version);
        metadata.insert("cgroup".to_owned(), self.cgroups.version().to_owned());
        metadata.insert("netns".to_owned(), net.netns.clone());
        metadata.insert("veth".to_owned(), net.veth.clone());
        metadata.insert(
            "disk_device".to_owned(),
            format!("{}:{}", disk.major, disk.minor),
        );
        Ok(Instance {
            id,
            envd: EnvdEndpoint::Unix(self.envd_socket(id)),
            host_ip: net.sandbox_addr.to_string(),
            metadata,
        })
    }

    /// What the init program of sandbox `config.id` sets up ([`init::go`]).
    pub(super) fn init_spec(
        &self,
        config: &SandboxConfig,
        lowers: &Lowers,
        cgroup: &SandboxCgroup,
        netns: &str,
        dir: &Path,
    ) -> Result<InitSpec, RuntimeError> {
        let id = config.id;
        let id_map = self
            .ids
            .allocate(id)
            .map_err(|e| RuntimeError::Other(format!("sandbox {id}: {}", error_chain(&e))))?;
        idrange::write_record(dir, id_map)
            .map_err(io_err(format!("record the id range of {id}")))?;
        let (lower_base, lower_list) = lowers.overlay();
        let mut envd_args = Vec::new();
        if !config.default_user.is_empty() {
            envd_args.push("--default-user".to_owned());
            envd_args.push(config.default_user.clone());
        }
        let memory_bytes = u64::from(config.memory_mb) * 1024 * 1024;
        let shm_size = match self.options.shm_size_mb {
            Some(mb) => u64::from(mb) * 1024 * 1024,
            None => (memory_bytes / 2).min(1 << 30),
        };
        let spec = InitSpec {
            hostname: id.to_string(),
            netns: network::netns_path(netns),
            cgroup_procs: cgroup.procs_files(),
            id_map,
            lower_base,
            lowers: lower_list,
            upper: dir.join(disk::MOUNT_DIR).join(disk::UPPER_DIR),
            work: dir.join(disk::MOUNT_DIR).join(disk::WORK_DIR),
            root: dir.join("rootfs"),
            socket: self.envd_socket(id),
            envd: self.envd.clone(),
            envd_args,
            env: vec![
                (
                    "PATH".to_owned(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                ),
                ("HOME".to_owned(), "/root".to_owned()),
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
            ],
            shm_size,
            log: dir.join("envd.log"),
            ahead_of_time: false,
        };
        Ok(spec)
    }

    /// Waits until envd of sandbox `id` answers; returns its version.
    pub(super) async fn wait_for_envd(
        &self,
        id: SandboxId,
        child: &tokio::sync::Mutex<Child>,
        dir: &Path,
        early_output: Option<std::fs::File>,
    ) -> Result<String, RuntimeError> {
        let log_path = dir.join("envd.log");
        let socket = self.envd_socket(id);
        let deadline = Instant::now() + self.options.envd_timeout;
        let mut last = String::from("its socket never appeared");
        let mut pause = Duration::from_millis(1);
        loop {
            match child.lock().await.try_wait() {
                Ok(Some(status)) => {
                    inits::save_early_output(early_output, &log_path);
                    let tail = tail(&log_path, LOG_TAIL_BYTES);
                    return Err(RuntimeError::Other(format!(
                        "sandbox {id} exited during start ({status}); envd log: {tail}"
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(io_err("wait for the sandbox process")(e)),
            }
            if socket.exists() {
                match health(&socket).await {
                    Ok(version) => return Ok(version),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                let tail = tail(&log_path, LOG_TAIL_BYTES);
                return Err(RuntimeError::Other(format!(
                    "envd of {id} did not answer within {:?} ({last}); envd log: {tail}",
                    self.options.envd_timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}

/// Asks envd for its health over the unix socket; returns its version.
pub(super) async fn health(socket: &Path) -> Result<String, String> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://envd.local")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("connect: {}", error_chain(&e)))?;
    SystemClient::new(channel)
        .health(HealthRequest {})
        .await
        .map(|r| r.into_inner().version)
        .map_err(|e| format!("health: {}", error_chain(&e)))
}

/// The last `max` bytes of a log file.
pub(super) fn tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
        }
        Err(e) => format!("(cannot read {}: {})", path.display(), error_chain(&e)),
    }
}
