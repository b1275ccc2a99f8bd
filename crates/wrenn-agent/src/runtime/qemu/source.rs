//! Where a new capsule VM's state comes from: a boot of the image, a template's
//! memory, or the warm snapshot of its shape (made once per guest software and shape,
//! see the [runtime's docs](super)).

use crate::runtime::error_chain;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use wrenn_core::id::{BUILTIN_TEMPLATE_ID, SandboxId};

use super::{DISK_FILE, MEMORY_FILE, QemuRuntime, TEMPLATE_FORMAT};
use crate::runtime::vm::capsule::read_template;
use crate::runtime::vm::guest::{GuestFiles, remove_tree, vm_dir};
use crate::runtime::{RuntimeError, SandboxConfig, io_err};

/// Where a new VM's state comes from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// Boot the kernel; the disk is a new overlay of `backing` (format
    /// `backing_format`) grown to the capsule's size.
    Boot {
        backing: PathBuf,
        backing_format: &'static str,
    },
    /// Restore `memory` (made running `guest`); the disk is a new overlay of `disk`
    /// (a template's or warm snapshot's), or the capsule's own when `disk` is `None`.
    Restore {
        disk: Option<PathBuf>,
        memory: PathBuf,
        guest: GuestFiles,
    },
}

/// A machine's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) vcpus: u32,
    pub(super) memory_mb: u32,
    pub(super) disk_size_mb: u32,
}

impl Shape {
    pub(super) fn of(config: &SandboxConfig) -> Self {
        Self {
            vcpus: config.vcpus,
            memory_mb: config.memory_mb,
            disk_size_mb: config.disk_size_mb,
        }
    }
}

impl QemuRuntime {
    /// Where a create of `config` starts from, and the machine's shape (a template's
    /// memory fixes it).
    pub(super) async fn source_for(
        &self,
        config: &SandboxConfig,
    ) -> Result<(Source, Shape), RuntimeError> {
        let asked = Shape::of(config);
        if config.template_id != BUILTIN_TEMPLATE_ID {
            let dir = self
                .layout
                .template_dir(config.template_team_id, config.template_id);
            let manifest = read_template(&dir, TEMPLATE_FORMAT)?
                .ok_or(RuntimeError::TemplateNotFound(config.template_id))?;
            let shape = Shape {
                vcpus: manifest.vcpus,
                memory_mb: manifest.memory_mb,
                disk_size_mb: manifest.disk_size_mb,
            };
            if !manifest.guest.present() {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "template {} was made with guest files this host no longer has",
                    config.template_id
                )));
            }
            return Ok((
                Source::Restore {
                    disk: Some(dir.join(DISK_FILE)),
                    memory: dir.join(MEMORY_FILE),
                    guest: manifest.guest,
                },
                shape,
            ));
        }
        if self.options.warm_snapshots {
            match self.warm_snapshot(asked).await {
                Ok(warm) => {
                    return Ok((
                        Source::Restore {
                            disk: Some(warm.join(DISK_FILE)),
                            memory: warm.join(MEMORY_FILE),
                            guest: self.guest.clone(),
                        },
                        asked,
                    ));
                }
                Err(e) => tracing::warn!("no warm snapshot, booting: {}", error_chain(&e)),
            }
        }
        Ok((self.boot_source(), asked))
    }

    pub(super) fn boot_source(&self) -> Source {
        Source::Boot {
            backing: self.image.ext4(),
            backing_format: "raw",
        }
    }

    /// The warm snapshot of `shape`, made now if there is none (see the
    /// [module docs](self)).
    pub(super) async fn warm_snapshot(&self, shape: Shape) -> Result<PathBuf, RuntimeError> {
        let dir = vm_dir(&self.layout).join("warm").join(format!(
            "{}-{}c-{}m-{}d",
            self.guest_key, shape.vcpus, shape.memory_mb, shape.disk_size_mb
        ));
        if dir.join(MEMORY_FILE).is_file() {
            return Ok(dir);
        }
        let _one = self.warming.lock().await;
        if dir.join(MEMORY_FILE).is_file() {
            return Ok(dir);
        }
        let started = Instant::now();
        let id = SandboxId::new();
        let config = SandboxConfig {
            id,
            team_id: wrenn_core::id::PLATFORM_TEAM_ID,
            template_team_id: wrenn_core::id::PLATFORM_TEAM_ID,
            template_id: BUILTIN_TEMPLATE_ID,
            vcpus: shape.vcpus,
            memory_mb: shape.memory_mb,
            disk_size_mb: shape.disk_size_mb,
            default_user: String::new(),
            default_env: BTreeMap::new(),
        };
        let sandbox_dir = self.make_dir(id)?;
        let made = async {
            let (vm, _) = self.start_vm(&config, self.boot_source(), shape).await?;
            let saved = self.save_and_quit(&vm, &sandbox_dir).await;
            self.live().remove(&id);
            self.remove_network(&Self::netns_name(id)).await;
            saved?;
            let partial = dir.with_extension("partial");
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).map_err(io_err("create the warm snapshot"))?;
            for file in [DISK_FILE, MEMORY_FILE] {
                std::fs::rename(sandbox_dir.join(file), partial.join(file))
                    .map_err(io_err(format!("keep the warm snapshot's {file}")))?;
            }
            std::fs::rename(&partial, &dir).map_err(io_err("keep the warm snapshot"))
        }
        .await;
        let _ = remove_tree(&sandbox_dir).await;
        made?;
        tracing::info!(
            vcpus = shape.vcpus,
            memory_mb = shape.memory_mb,
            disk_size_mb = shape.disk_size_mb,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "made a warm snapshot"
        );
        Ok(dir)
    }
}
