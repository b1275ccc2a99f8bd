//! What the VM runtimes do alike with a capsule's files: templates (a paused VM's
//! memory, state and disk with a manifest), hibernation (the files moved to
//! `snapshots/{id}/` with a record) and usage (the VMM process's CPU and memory).

use crate::runtime::error_chain;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wrenn_core::id::{SandboxId, TemplateId};

use super::guest::{GuestFiles, allocated, process_usage};
use crate::runtime::process::template::{HibernationRecord, write_record};
use crate::runtime::{RuntimeError, SandboxConfig, Stats, blocking, io_err};

/// A template's description, next to its files.
pub const TEMPLATE_FILE: &str = "template.json";
/// The [`GuestFiles`] of a hibernated capsule, next to its files.
pub const GUEST_FILE: &str = "guest.json";

/// What a template made by a VM runtime holds besides its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateManifest {
    /// Which runtime's template this is (e.g. `wrenn-qemu-template/1`).
    pub format: String,
    /// The machine its memory belongs to: vCPUs.
    pub vcpus: u32,
    /// Memory (MiB).
    pub memory_mb: u32,
    /// Disk (MiB).
    pub disk_size_mb: u32,
    /// The guest files its memory was running.
    pub guest: GuestFiles,
    /// The capsule it was taken from.
    pub source: SandboxId,
    /// When (RFC 3339).
    pub created_at: String,
}

impl TemplateManifest {
    /// The manifest of a template of `config`'s machine, running `guest`, now.
    pub fn of(format: &str, config: &SandboxConfig, guest: &GuestFiles) -> Self {
        Self {
            format: format.to_owned(),
            vcpus: config.vcpus,
            memory_mb: config.memory_mb,
            disk_size_mb: config.disk_size_mb,
            guest: guest.clone(),
            source: config.id,
            created_at: chrono::Utc::now().to_rfc3339(),
        }
    }
}

/// Reads the manifest of the template in `dir`; `Ok(None)` when it holds none, a
/// refusal when another runtime (`format` differs) made it.
pub fn read_template(dir: &Path, format: &str) -> Result<Option<TemplateManifest>, RuntimeError> {
    let path = dir.join(TEMPLATE_FILE);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let manifest: TemplateManifest = serde_json::from_slice(&raw).map_err(|e| {
        RuntimeError::Other(format!("invalid template manifest: {}", error_chain(&e)))
    })?;
    if manifest.format != format {
        return Err(RuntimeError::FailedPrecondition(format!(
            "the template was made by another runtime ({}), not by this one ({format})",
            manifest.format
        )));
    }
    Ok(Some(manifest))
}

/// Writes template `template` to `dest`: copies of `files` from `from` and
/// `manifest`, through a `.partial` directory renamed into place. Returns the bytes
/// copied.
pub async fn write_template(
    from: PathBuf,
    files: &'static [&'static str],
    manifest: TemplateManifest,
    dest: PathBuf,
    template: TemplateId,
) -> Result<u64, RuntimeError> {
    if dest.exists() {
        return Err(RuntimeError::FailedPrecondition(format!(
            "template {template} already exists on this host"
        )));
    }
    let partial = dest.with_extension("partial");
    let to = partial.clone();
    blocking(move || {
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir_all(&to)?;
        let mut size = 0;
        for file in files {
            size += std::fs::copy(from.join(file), to.join(file))?;
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        std::fs::write(to.join(TEMPLATE_FILE), json)?;
        std::fs::rename(&to, &dest)?;
        Ok::<_, std::io::Error>(size)
    })
    .await?
    .map_err(|e| {
        let _ = std::fs::remove_dir_all(&partial);
        io_err(format!("write template {template}"))(e)
    })
}

/// Moves a saved capsule's `files` (those present; `required` ones must be) from
/// `from` to the snapshot directory `to`, with its guest files and `record`.
pub async fn persist_hibernated(
    id: SandboxId,
    (from, to): (PathBuf, PathBuf),
    (files, required): (&'static [&'static str], &'static [&'static str]),
    guest: &GuestFiles,
    record: HibernationRecord,
) -> Result<(), RuntimeError> {
    let guest = serde_json::to_vec_pretty(guest).map_err(std::io::Error::other);
    blocking(move || {
        std::fs::create_dir_all(&to)?;
        for file in files {
            match std::fs::rename(from.join(file), to.join(file)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound || required.contains(file) => {
                    return Err(e);
                }
                _ => {}
            }
        }
        std::fs::write(to.join(GUEST_FILE), guest?)?;
        write_record(&to, &record)
    })
    .await?
    .map_err(io_err(format!("persist {id}")))
}

/// The guest files a hibernated capsule in `snapshot` ran with, if this host still
/// has them.
pub fn hibernated_guest(id: SandboxId, snapshot: &Path) -> Result<GuestFiles, RuntimeError> {
    std::fs::read(snapshot.join(GUEST_FILE))
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .filter(GuestFiles::present)
        .ok_or_else(|| {
            RuntimeError::Other(format!(
                "hibernated sandbox {id} names guest files this host no longer has"
            ))
        })
}

/// Usage of a VM whose VMM is `pid` (`None`: paused, holding no memory) and whose
/// root disk is `disk`; `cpu` keeps the last CPU reading, for the rate.
pub fn usage(
    id: SandboxId,
    pid: Option<u32>,
    disk: &Path,
    cpu: &Mutex<(u64, Instant)>,
) -> Result<Stats, RuntimeError> {
    let disk_bytes = allocated(disk);
    let Some(pid) = pid else {
        return Ok(Stats {
            cpu_pct: 0.0,
            mem_bytes: 0,
            disk_bytes,
        });
    };
    let (cpu_ns, mem_bytes) =
        process_usage(pid).map_err(io_err(format!("read the usage of {id}")))?;
    let now = Instant::now();
    let cpu_pct = {
        let mut last = cpu.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.duration_since(last.1).as_nanos() as f64;
        let used = cpu_ns.saturating_sub(last.0) as f64;
        *last = (cpu_ns, now);
        if elapsed > 0.0 {
            used / elapsed * 100.0
        } else {
            0.0
        }
    };
    Ok(Stats {
        cpu_pct,
        mem_bytes,
        disk_bytes,
    })
}
