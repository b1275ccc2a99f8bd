//! A runtime over real envd processes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::artifacts::envd_binary;
use tokio::process::{Child, Command};
use wrenn_agent::runtime::{
    Capabilities, EnvdEndpoint, Instance, Runtime, RuntimeError, SandboxConfig, Stats,
};
use wrenn_core::id::{SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;

/// Runs each sandbox as a plain `wrenn-envd --socket sandboxes/{id}/envd.sock` process.
/// Pause = SIGSTOP, resume = SIGCONT, hibernate = kill + `snapshots/{id}/sandbox.json`,
/// restore = a fresh envd. Files live on the host (no isolation): tests use temporary
/// directories.
pub struct EnvdRuntime {
    layout: Layout,
    envd: PathBuf,
    live: Mutex<HashMap<SandboxId, Child>>,
    /// Make the next pause fail.
    pub fail_next_pause: AtomicBool,
    /// Make the next create panic once its envd runs and its directory is made.
    pub panic_next_create: AtomicBool,
    /// Calls of `sweep`.
    pub sweeps: AtomicUsize,
}

impl EnvdRuntime {
    /// A runtime over `layout`.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            envd: envd_binary(),
            live: Mutex::new(HashMap::new()),
            fail_next_pause: AtomicBool::new(false),
            panic_next_create: AtomicBool::new(false),
            sweeps: AtomicUsize::new(0),
        }
    }

    fn pid(&self, id: SandboxId) -> Result<u32, RuntimeError> {
        self.live
            .lock()
            .unwrap()
            .get(&id)
            .and_then(|c| c.id())
            .ok_or(RuntimeError::NotFound(id))
    }

    async fn spawn(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        let id = config.id;
        let dir = self.layout.sandbox_dir(id);
        std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io {
            context: "sandbox dir".into(),
            source,
        })?;
        let socket = dir.join("envd.sock");
        let _ = std::fs::remove_file(&socket);
        let log =
            std::fs::File::create(dir.join("envd.log")).map_err(|source| RuntimeError::Io {
                context: "envd log".into(),
                source,
            })?;
        let child = Command::new(&self.envd)
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RuntimeError::Io {
                context: "spawn envd".into(),
                source,
            })?;
        self.live.lock().unwrap().insert(id, child);
        // Wait for the socket to answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RuntimeError::Other("envd did not start".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut metadata = BTreeMap::new();
        metadata.insert("runtime_version".into(), "test".into());
        Ok(Instance {
            id,
            envd: EnvdEndpoint::Unix(socket),
            host_ip: "127.0.0.1".into(),
            metadata,
        })
    }

    fn kill(&self, id: SandboxId) {
        if let Some(mut child) = self.live.lock().unwrap().remove(&id) {
            if let Some(pid) = child.id() {
                signal(pid, "-CONT");
            }
            let _ = child.start_kill();
        }
    }
}

fn signal(pid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn config_json(c: &SandboxConfig) -> serde_json::Value {
    serde_json::json!({
        "id": c.id.to_string(),
        "team_id": c.team_id.to_string(),
        "template_team_id": c.template_team_id.to_string(),
        "template_id": c.template_id.to_string(),
        "vcpus": c.vcpus,
        "memory_mb": c.memory_mb,
        "disk_size_mb": c.disk_size_mb,
        "default_user": c.default_user,
        "default_env": c.default_env,
    })
}

fn config_from_json(v: &serde_json::Value) -> Option<SandboxConfig> {
    Some(SandboxConfig {
        id: v["id"].as_str()?.parse().ok()?,
        team_id: v["team_id"].as_str()?.parse().ok()?,
        template_team_id: v["template_team_id"].as_str()?.parse().ok()?,
        template_id: TemplateId(v["template_id"].as_str()?.parse().ok()?),
        vcpus: v["vcpus"].as_u64()? as u32,
        memory_mb: v["memory_mb"].as_u64()? as u32,
        disk_size_mb: v["disk_size_mb"].as_u64()? as u32,
        default_user: v["default_user"].as_str()?.to_owned(),
        default_env: serde_json::from_value(v["default_env"].clone()).ok()?,
    })
}

#[async_trait::async_trait]
impl Runtime for EnvdRuntime {
    fn name(&self) -> &'static str {
        "envd-test"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            memory_snapshots: true,
            hibernate: true,
            templates_keep_processes: false,
        }
    }

    async fn create(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        if !config.template_id.uuid().is_nil()
            && !self
                .layout
                .template_dir(config.template_team_id, config.template_id)
                .is_dir()
        {
            return Err(RuntimeError::TemplateNotFound(config.template_id));
        }
        let instance = self.spawn(config).await?;
        if self.panic_next_create.swap(false, Ordering::SeqCst) {
            panic!("injected create panic");
        }
        // Kept for hibernate (the instance does not carry the config).
        let _ = std::fs::write(
            self.layout.sandbox_dir(config.id).join("config.json"),
            config_json(config).to_string(),
        );
        Ok(instance)
    }

    async fn pause(&self, instance: &Instance) -> Result<(), RuntimeError> {
        if self.fail_next_pause.swap(false, Ordering::SeqCst) {
            return Err(RuntimeError::Other("injected pause failure".into()));
        }
        let pid = self.pid(instance.id)?;
        if signal(pid, "-STOP") {
            Ok(())
        } else {
            Err(RuntimeError::Other("SIGSTOP failed".into()))
        }
    }

    async fn resume(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let pid = self.pid(instance.id)?;
        if signal(pid, "-CONT") {
            Ok(())
        } else {
            Err(RuntimeError::Other("SIGCONT failed".into()))
        }
    }

    async fn hibernate(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let id = instance.id;
        self.pid(id)?;
        let record = self.layout.sandbox_dir(id).join("config.json");
        let config = std::fs::read(&record).map_err(|source| RuntimeError::Io {
            context: "read config".into(),
            source,
        })?;
        self.kill(id);
        let snap = self.layout.snapshot_dir(id);
        std::fs::create_dir_all(&snap).map_err(|source| RuntimeError::Io {
            context: "snapshot dir".into(),
            source,
        })?;
        std::fs::write(snap.join("sandbox.json"), config).map_err(|source| RuntimeError::Io {
            context: "write record".into(),
            source,
        })?;
        std::fs::write(snap.join("memory"), vec![7u8; 64 * 1024]).map_err(|source| {
            RuntimeError::Io {
                context: "write state".into(),
                source,
            }
        })?;
        let _ = std::fs::remove_dir_all(self.layout.sandbox_dir(id));
        Ok(())
    }

    async fn restore(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        let snap = self.layout.snapshot_dir(config.id);
        if !snap.join("sandbox.json").is_file() {
            return Err(RuntimeError::NotFound(config.id));
        }
        let instance = self.spawn(config).await?;
        let _ = std::fs::write(
            self.layout.sandbox_dir(config.id).join("config.json"),
            config_json(config).to_string(),
        );
        let _ = std::fs::remove_dir_all(snap);
        Ok(instance)
    }

    async fn destroy(&self, id: SandboxId) -> Result<(), RuntimeError> {
        self.kill(id);
        let _ = std::fs::remove_dir_all(self.layout.sandbox_dir(id));
        let _ = std::fs::remove_dir_all(self.layout.snapshot_dir(id));
        Ok(())
    }

    async fn snapshot(
        &self,
        instance: &Instance,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, RuntimeError> {
        let dest = self.layout.template_dir(team, template);
        std::fs::create_dir_all(&dest).map_err(|source| RuntimeError::Io {
            context: "template dir".into(),
            source,
        })?;
        std::fs::write(dest.join("template.json"), instance.id.to_string()).map_err(|source| {
            RuntimeError::Io {
                context: "template".into(),
                source,
            }
        })?;
        Ok(4096)
    }

    async fn stats(&self, instance: &Instance) -> Result<Stats, RuntimeError> {
        let pid = self.pid(instance.id)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Stats {
            cpu_pct: 1.0,
            mem_bytes: rss_kb * 1024,
            disk_bytes: 0,
        })
    }

    async fn hibernated(&self) -> Result<Vec<SandboxConfig>, RuntimeError> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.layout.snapshots_dir()) {
            for e in entries.flatten() {
                let Ok(raw) = std::fs::read(e.path().join("sandbox.json")) else {
                    continue;
                };
                if let Some(c) = serde_json::from_slice(&raw)
                    .ok()
                    .and_then(|v: serde_json::Value| config_from_json(&v))
                {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    async fn sweep(&self, keep: &[SandboxId]) -> Result<Vec<SandboxId>, RuntimeError> {
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        let mut swept = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.layout.sandboxes_dir()) {
            for e in entries.flatten() {
                if let Some(id) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<SandboxId>().ok())
                {
                    if !keep.contains(&id) {
                        self.kill(id);
                        let _ = std::fs::remove_dir_all(e.path());
                        swept.push(id);
                    }
                }
            }
        }
        Ok(swept)
    }
}
