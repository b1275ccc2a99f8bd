//! Templates, snapshots and hibernation records of the process runtime.
//!
//! Every sandbox's root filesystem stands on an **image build** ([`crate::image`]):
//! the built-in template (all-zero id) is the runtime's image alone; never the host's
//! `/`. A process-runtime template is a directory `images/teams/{team}/{template}/`:
//!
//! ```text
//! template.json      {"format":"wrenn-process-template/1",
//!                     "base":{"image":{"hash":"…","rootfs":"/…/builds/<id>/rootfs"}}|"none",
//!                     "layers":["layers/0","layers/1",…], …}
//! layers/0/          the newest layer: a copy of the sandbox's overlay upper directory
//! layers/1/ …        the layers of the template that sandbox was created from
//! ```
//!
//! A sandbox from it mounts `lowerdir=layers/0:layers/1:…[:<image rootfs>]` (relative
//! to the template directory; the image's `rootfs/` last when `base` names one).
//! Overlay whiteouts and opaque directories in the copied upper layers keep deletions
//! visible. Each template records the exact image build it sits on (its directory),
//! not "the current image": builds are immutable and never removed by Wrenn, so a
//! template keeps working — on the tree it was made on — after the image is rebuilt.
//! Where that build's directory does not exist (a template imported from another
//! host), this host's build of the same recipe (same hash) stands in for it.
//! The parent's layers are hard-linked (they are immutable), not referenced, so
//! deleting a parent template never breaks a child; only the sandbox's own upper layer
//! is really copied (`cp -a`, reflinks where the filesystem has them). A snapshot costs
//! what the sandbox wrote, not a full tree.
//!
//! A manifest with `"base":"host"` (templates of older versions, which stood on the
//! host's `/`) is refused with an error saying to recreate the template.
//!
//! A directory with only a `rootfs/` tree (an unpacked image, no `template.json`) is a
//! template too: one lower layer, no image base.
//!
//! Hibernated sandboxes live in `snapshots/{id}/`: `upper/` (the overlay upper
//! directory, moved there with a rename) and `sandbox.json` (a [`HibernationRecord`],
//! written last, so a half-written directory is never listed), which also records the
//! image build the sandbox stood on.

use crate::runtime::error_chain;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;

use crate::image::ImageRef;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    /// An image build's `rootfs/`, read-only.
    Image(ImageRef),
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
    /// The built-in template: an image build's `rootfs/` alone.
    Image(ImageRef),
    /// A template directory.
    Template {
        /// The template directory (layer paths are relative to it).
        dir: PathBuf,
        /// Layers, topmost first, relative to `dir`.
        layers: Vec<String>,
        /// What the layers sit on.
        base: Base,
    },
}

impl Lowers {
    /// The overlay `lowerdir` entries and the directory they are relative to.
    pub fn overlay(&self) -> (Option<PathBuf>, Vec<String>) {
        match self {
            Self::Image(image) => (None, vec![image.rootfs.display().to_string()]),
            Self::Template { dir, layers, base } => {
                let mut all = layers.clone();
                if let Base::Image(image) = base {
                    all.push(image.rootfs.display().to_string());
                }
                (Some(dir.clone()), all)
            }
        }
    }

    /// The image build at the bottom, if any.
    pub fn image(&self) -> Option<&ImageRef> {
        match self {
            Self::Image(image)
            | Self::Template {
                base: Base::Image(image),
                ..
            } => Some(image),
            Self::Template { .. } => None,
        }
    }
}

/// Checks that an image build's `rootfs/` can be an overlay lower layer: an absolute
/// path without overlay option separators, present on disk.
pub fn check_image(image: &ImageRef) -> Result<(), String> {
    let text = image.rootfs.to_string_lossy();
    if !image.rootfs.is_absolute() || text.contains([':', ',', '\\']) {
        return Err(format!(
            "image root {text:?} must be an absolute path without ':', ',' or '\\'"
        ));
    }
    if !image.rootfs.is_dir() {
        return Err(format!(
            "image build {} is gone ({text} does not exist)",
            image.hash.get(..16).unwrap_or(&image.hash)
        ));
    }
    Ok(())
}

/// Finds the layers of template `(team, template)`; the built-in template is `image`.
pub fn resolve(
    layout: &Layout,
    image: &ImageRef,
    team: TeamId,
    template: TemplateId,
) -> Result<Lowers, RuntimeError> {
    if template == BUILTIN_TEMPLATE_ID {
        return Ok(Lowers::Image(image.clone()));
    }
    let dir = layout.template_dir(team, template);
    let manifest_path = dir.join(MANIFEST_FILE);
    match fs::read(&manifest_path) {
        Ok(raw) => {
            let value: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| {
                RuntimeError::Other(format!(
                    "template {template}: invalid {}: {}",
                    manifest_path.display(),
                    error_chain(&e)
                ))
            })?;
            if value.get("base").and_then(|b| b.as_str()) == Some("host") {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "template {template} was made by an older Wrenn on the host's root \
                     filesystem, which sandboxes no longer see; recreate it from a sandbox \
                     of the built-in template"
                )));
            }
            let mut manifest: Manifest = serde_json::from_value(value).map_err(|e| {
                RuntimeError::Other(format!(
                    "template {template}: invalid {}: {}",
                    manifest_path.display(),
                    error_chain(&e)
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
            // A template made on another host (or before WRENN_DIR moved) names that
            // host's copy of the image build: this host's build of the same recipe
            // stands in for it.
            if let Base::Image(made_on) = &mut manifest.base
                && !made_on.rootfs.is_dir()
                && made_on.hash == image.hash
            {
                made_on.rootfs = image.rootfs.clone();
            }
            if let Base::Image(image) = &manifest.base {
                check_image(image).map_err(|e| {
                    RuntimeError::FailedPrecondition(format!("template {template}: {e}"))
                })?;
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
        .map_err(|e| format!("cannot run cp: {}", error_chain(&e)))?;
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
        Lowers::Image(image) => (Vec::new(), Base::Image(image.clone())),
        Lowers::Template { dir, layers, base } => {
            (layers.iter().map(|l| dir.join(l)).collect(), base.clone())
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
            .map_err(|e| format!("create {}: {}", layers_dir.display(), error_chain(&e)))?;
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
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| error_chain(&e))?;
        fs::write(tmp.join(MANIFEST_FILE), json)
            .map_err(|e| format!("write manifest: {}", error_chain(&e)))?;
        fs::rename(&tmp, dest)
            .map_err(|e| format!("move template into {}: {}", dest.display(), error_chain(&e)))?;
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
        .map_err(|e| RuntimeError::Other(format!("size task failed: {}", error_chain(&e))))
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
    /// The image build it stood on (restore uses it while it exists, so an image
    /// rebuilt meanwhile does not slide under the saved upper layer).
    #[serde(default)]
    pub image: Option<ImageRef>,
}

/// Reads `snapshots/{id}/sandbox.json`; `Ok(None)` when there is none.
pub fn read_record(dir: &Path) -> Result<Option<HibernationRecord>, RuntimeError> {
    let path = dir.join(RECORD_FILE);
    match fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw).map(Some).map_err(|e| {
            RuntimeError::Other(format!(
                "invalid hibernation record {}: {}",
                path.display(),
                error_chain(&e)
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
