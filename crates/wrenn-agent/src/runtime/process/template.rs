//! Templates, snapshots and hibernation records of the process runtime.
//!
//! A process-runtime template is a directory `images/teams/{team}/{template}/`:
//!
//! ```text
//! template.json      {"format":"wrenn-process-template/1","base":"host"|"none",
//!                     "layers":["layers/0","layers/1",…], …}
//! layers/0/          the newest layer: a copy of the sandbox's overlay upper directory
//! layers/1/ …        the layers of the template that sandbox was created from
//! ```
//!
//! A sandbox from it mounts `lowerdir=layers/0:layers/1:…[:/]` (relative to the template
//! directory, `/` when `base` is `host`). Overlay whiteouts and opaque directories in the
//! copied upper layers keep deletions visible. Each template is **self-contained**: the
//! parent's layers are hard-linked (they are immutable), not referenced, so deleting a
//! parent template never breaks a child; only the sandbox's own upper layer is really
//! copied (`cp -a`, reflinks where the filesystem has them). Nothing is flattened onto
//! the host root, so a snapshot costs what the sandbox wrote, not a full tree.
//!
//! A directory with only a `rootfs/` tree (an unpacked image, no `template.json`) is a
//! template too: one lower layer, no host base. The built-in template (all-zero id) is
//! the host's root filesystem.
//!
//! Hibernated sandboxes live in `snapshots/{id}/`: `upper/` (the overlay upper
//! directory, moved there with a rename) and `sandbox.json` (a [`HibernationRecord`],
//! written last, so a half-written directory is never listed).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;

use crate::runtime::{RuntimeError, SandboxConfig};

/// The manifest file of a template directory.
pub const MANIFEST_FILE: &str = "template.json";
/// The manifest format tag.
pub const MANIFEST_FORMAT: &str = "wrenn-process-template/1";
/// The layer directory of a template.
pub const LAYERS_DIR: &str = "layers";
/// A plain full-tree template.
pub const ROOTFS_DIR: &str = "rootfs";
/// The record of a hibernated sandbox in `snapshots/{id}/`.
pub const RECORD_FILE: &str = "sandbox.json";
/// The persisted upper layer in `snapshots/{id}/`.
pub const UPPER_DIR: &str = "upper";

/// Most layers a template may stack (the overlay limit is 500; mount options must fit
/// in a page).
pub const MAX_LAYERS: usize = 128;

/// What a template's layers sit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    /// The host's root filesystem (`/`), read-only.
    Host,
    /// Nothing: the layers are a complete tree.
    None,
}

/// `template.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The bottom of the stack.
    pub base: Base,
    /// Layer directories relative to the template directory, topmost first.
    pub layers: Vec<String>,
    /// The sandbox the newest layer came from.
    #[serde(default)]
    pub created_from: Option<String>,
    /// When the template was written (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// The read-only layers of a sandbox's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lowers {
    /// The built-in template: the host's `/`.
    HostRoot,
    /// A template directory.
    Template {
        /// The template directory (layer paths are relative to it).
        dir: PathBuf,
        /// Layers, topmost first, relative to `dir`.
        layers: Vec<String>,
        /// Whether the host's `/` is the bottom layer.
        base: Base,
    },
}

impl Lowers {
    /// The overlay `lowerdir` entries and the directory they are relative to.
    pub fn overlay(&self) -> (Option<PathBuf>, Vec<String>) {
        match self {
            Self::HostRoot => (None, vec!["/".to_owned()]),
            Self::Template { dir, layers, base } => {
                let mut all = layers.clone();
                if *base == Base::Host {
                    all.push("/".to_owned());
                }
                (Some(dir.clone()), all)
            }
        }
    }
}

/// Finds the layers of template `(team, template)`.
pub fn resolve(
    layout: &Layout,
    team: TeamId,
    template: TemplateId,
) -> Result<Lowers, RuntimeError> {
    if template == BUILTIN_TEMPLATE_ID {
        return Ok(Lowers::HostRoot);
    }
    let dir = layout.template_dir(team, template);
    let manifest_path = dir.join(MANIFEST_FILE);
    match fs::read(&manifest_path) {
        Ok(raw) => {
            let manifest: Manifest = serde_json::from_slice(&raw).map_err(|e| {
                RuntimeError::Other(format!(
                    "template {template}: invalid {}: {e}",
                    manifest_path.display()
                ))
            })?;
            if manifest.format != MANIFEST_FORMAT {
                return Err(RuntimeError::Other(format!(
                    "template {template}: unsupported format {:?}",
                    manifest.format
                )));
            }
            for layer in &manifest.layers {
                let valid = !layer.is_empty()
                    && !layer.starts_with('/')
                    && !layer.split('/').any(|c| c == ".." || c.is_empty())
                    && !layer.contains([':', ',', '\\']);
                if !valid || !dir.join(layer).is_dir() {
                    return Err(RuntimeError::Other(format!(
                        "template {template}: layer {layer:?} is missing or invalid"
                    )));
                }
            }
            if manifest.layers.is_empty() && manifest.base == Base::None {
                return Err(RuntimeError::Other(format!(
                    "template {template} has no layers"
                )));
            }
            Ok(Lowers::Template {
                dir,
                layers: manifest.layers,
                base: manifest.base,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dir.join(ROOTFS_DIR).is_dir() {
                Ok(Lowers::Template {
                    dir,
                    layers: vec![ROOTFS_DIR.to_owned()],
                    base: Base::None,
                })
            } else {
                Err(RuntimeError::TemplateNotFound(template))
            }
        }
        Err(source) => Err(RuntimeError::Io {
            context: format!("read {}", manifest_path.display()),
            source,
        }),
    }
}

async fn cp(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = tokio::process::Command::new("cp")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cp {:?} failed ({}): {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes a new template at `dest` from a sandbox's `upper` directory on top of
/// `lowers`; returns its size in bytes. `dest` must not exist. On failure nothing is
/// left behind.
pub async fn write_template(
    upper: &Path,
    lowers: &Lowers,
    dest: &Path,
    source: SandboxId,
) -> Result<u64, RuntimeError> {
    if dest.exists() {
        return Err(RuntimeError::FailedPrecondition(format!(
            "template directory {} already exists",
            dest.display()
        )));
    }
    let (parent_layers, base): (Vec<PathBuf>, Base) = match lowers {
        Lowers::HostRoot => (Vec::new(), Base::Host),
        Lowers::Template { dir, layers, base } => {
            (layers.iter().map(|l| dir.join(l)).collect(), *base)
        }
    };
    if parent_layers.len() + 1 > MAX_LAYERS {
        return Err(RuntimeError::FailedPrecondition(format!(
            "a template may stack at most {MAX_LAYERS} layers"
        )));
    }
    let parent = dest
        .parent()
        .ok_or_else(|| RuntimeError::Other("template path has no parent".into()))?;
    fs::create_dir_all(parent).map_err(|source| RuntimeError::Io {
        context: format!("create {}", parent.display()),
        source,
    })?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let result = async {
        let layers_dir = tmp.join(LAYERS_DIR);
        fs::create_dir_all(&layers_dir)
            .map_err(|e| format!("create {}: {e}", layers_dir.display()))?;
        let mut names = Vec::new();
        let top = layers_dir.join("0");
        cp(&[
            "-a".as_ref(),
            "--reflink=auto".as_ref(),
            upper.as_os_str(),
            top.as_os_str(),
        ])
        .await?;
        names.push(format!("{LAYERS_DIR}/0"));
        for (i, layer) in parent_layers.iter().enumerate() {
            let target = layers_dir.join((i + 1).to_string());
            // Layers are immutable: hard links share them; fall back to a copy across
            // filesystems.
            if cp(&["-al".as_ref(), layer.as_os_str(), target.as_os_str()])
                .await
                .is_err()
            {
                let _ = fs::remove_dir_all(&target);
                cp(&[
                    "-a".as_ref(),
                    "--reflink=auto".as_ref(),
                    layer.as_os_str(),
                    target.as_os_str(),
                ])
                .await?;
            }
            names.push(format!("{LAYERS_DIR}/{}", i + 1));
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            base,
            layers: names,
            created_from: Some(source.to_string()),
            created_at: Some(chrono::Utc::now().to_rfc3339()),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        fs::write(tmp.join(MANIFEST_FILE), json).map_err(|e| format!("write manifest: {e}"))?;
        fs::rename(&tmp, dest)
            .map_err(|e| format!("move template into {}: {e}", dest.display()))?;
        Ok::<_, String>(())
    }
    .await;
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(RuntimeError::Other(format!("snapshot of {source}: {e}")));
    }
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || dir_size(&dest))
        .await
        .map_err(|e| RuntimeError::Other(format!("size task failed: {e}")))
}

/// Bytes allocated to the files under `path` (hard-linked files counted once); 0 when
/// it does not exist.
pub fn dir_size(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// A [`SandboxConfig`] as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// [`SandboxConfig::id`].
    pub id: SandboxId,
    /// [`SandboxConfig::team_id`].
    pub team_id: TeamId,
    /// [`SandboxConfig::template_team_id`].
    pub template_team_id: TeamId,
    /// [`SandboxConfig::template_id`].
    pub template_id: TemplateId,
    /// [`SandboxConfig::vcpus`].
    pub vcpus: u32,
    /// [`SandboxConfig::memory_mb`].
    pub memory_mb: u32,
    /// [`SandboxConfig::disk_size_mb`].
    pub disk_size_mb: u32,
    /// [`SandboxConfig::default_user`].
    pub default_user: String,
    /// [`SandboxConfig::default_env`].
    pub default_env: std::collections::BTreeMap<String, String>,
}

impl From<&SandboxConfig> for ConfigRecord {
    fn from(c: &SandboxConfig) -> Self {
        Self {
            id: c.id,
            team_id: c.team_id,
            template_team_id: c.template_team_id,
            template_id: c.template_id,
            vcpus: c.vcpus,
            memory_mb: c.memory_mb,
            disk_size_mb: c.disk_size_mb,
            default_user: c.default_user.clone(),
            default_env: c.default_env.clone(),
        }
    }
}

impl From<ConfigRecord> for SandboxConfig {
    fn from(c: ConfigRecord) -> Self {
        Self {
            id: c.id,
            team_id: c.team_id,
            template_team_id: c.template_team_id,
            template_id: c.template_id,
            vcpus: c.vcpus,
            memory_mb: c.memory_mb,
            disk_size_mb: c.disk_size_mb,
            default_user: c.default_user,
            default_env: c.default_env,
        }
    }
}

/// `snapshots/{id}/sandbox.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HibernationRecord {
    /// The sandbox's configuration (its template decides the lower layers on restore).
    pub config: ConfigRecord,
    /// When it was hibernated (RFC 3339).
    pub hibernated_at: String,
}

/// Reads `snapshots/{id}/sandbox.json`; `Ok(None)` when there is none.
pub fn read_record(dir: &Path) -> Result<Option<HibernationRecord>, RuntimeError> {
    let path = dir.join(RECORD_FILE);
    match fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw).map(Some).map_err(|e| {
            RuntimeError::Other(format!(
                "invalid hibernation record {}: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RuntimeError::Io {
            context: format!("read {}", path.display()),
            source,
        }),
    }
}

/// Writes `snapshots/{id}/sandbox.json` atomically.
pub fn write_record(dir: &Path, record: &HibernationRecord) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{RECORD_FILE}.tmp"));
    fs::write(&tmp, json)?;
    fs::rename(&tmp, dir.join(RECORD_FILE))
}
