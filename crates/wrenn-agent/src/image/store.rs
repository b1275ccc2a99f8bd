//! The build cache: lookup, the per-recipe lock, staging and publication (layout in
//! the [module docs](super)).

use crate::runtime::error_chain;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use super::build::{self, BuildOptions};
use super::manifest::{MANIFEST_FILE, Manifest};
use super::progress::{Clock, Progress};
use super::recipe::Recipe;
use super::{ImageError, ImageRef};

/// The directory of complete builds inside a store.
pub const BUILDS_DIR: &str = "builds";
/// Name prefix of builds in progress inside [`BUILDS_DIR`].
pub const STAGING_PREFIX: &str = ".staging-";

/// An image store directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    dir: PathBuf,
}

/// One complete build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltImage {
    /// The build directory (`<store>/builds/<id>`).
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl BuiltImage {
    /// Reads and checks the build in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let raw = fs::read(&path).map_err(ImageError::io(format!("read {}", path.display())))?;
        let manifest: Manifest =
            serde_json::from_slice(&raw).map_err(|source| ImageError::Manifest { path, source })?;
        let image = Self {
            dir: dir.to_path_buf(),
            manifest,
        };
        for needed in [image.rootfs(), image.ext4()] {
            if !needed.exists() {
                return Err(ImageError::Invalid {
                    path: dir.to_path_buf(),
                    reason: format!("{} is missing", needed.display()),
                });
            }
        }
        Ok(image)
    }

    /// The recipe hash.
    pub fn hash(&self) -> &str {
        &self.manifest.hash
    }

    /// `rootfs/`: the tree the process runtime mounts as its lowest layer.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(build::ROOTFS_DIR)
    }

    /// `rootfs.ext4`.
    pub fn ext4(&self) -> PathBuf {
        self.dir.join(&self.manifest.ext4.path)
    }

    /// `kernel/vmlinux` (uncompressed ELF), when the build has a kernel.
    pub fn vmlinux(&self) -> Option<PathBuf> {
        self.manifest
            .kernel
            .as_ref()
            .map(|k| self.dir.join(&k.vmlinux.path))
    }

    /// `kernel/vmlinuz` (bzImage), when the build has a kernel.
    pub fn vmlinuz(&self) -> Option<PathBuf> {
        self.manifest
            .kernel
            .as_ref()
            .map(|k| self.dir.join(&k.vmlinuz.path))
    }

    /// `kernel/modules/<release>/`, when the build has a kernel.
    pub fn modules(&self) -> Option<PathBuf> {
        self.manifest
            .kernel
            .as_ref()
            .map(|k| self.dir.join(&k.modules))
    }

    /// `kernel/busybox` (static, for the VM initramfs), when the build has one.
    pub fn busybox(&self) -> Option<PathBuf> {
        self.manifest
            .kernel
            .as_ref()
            .and_then(|k| k.busybox.as_ref())
            .map(|b| self.dir.join(&b.path))
    }

    /// What a template or the process runtime records of this build.
    pub fn reference(&self) -> ImageRef {
        ImageRef {
            hash: self.manifest.hash.clone(),
            rootfs: self.rootfs(),
        }
    }
}

impl Store {
    /// The store in `dir` (nothing is touched on disk).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The link naming the current build of `recipe`.
    pub fn current_link(&self, recipe: &Recipe) -> PathBuf {
        self.dir.join(recipe.short_hash())
    }

    /// The lock file of `recipe`'s builds.
    fn lock_path(&self, recipe: &Recipe) -> PathBuf {
        self.dir.join(format!(".{}.lock", recipe.short_hash()))
    }

    /// The current complete build of `recipe`, if any. A link to a missing or
    /// mismatching build counts as none.
    pub fn current(&self, recipe: &Recipe) -> Result<Option<BuiltImage>, ImageError> {
        let link = self.current_link(recipe);
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(format!("read {}", link.display()))(e)),
        };
        let dir = self.dir.join(target);
        match BuiltImage::open(&dir) {
            Ok(image) if image.manifest.hash == recipe.hash() => {
                let dir = dir.canonicalize().unwrap_or(dir);
                Ok(Some(BuiltImage { dir, ..image }))
            }
            Ok(_) => {
                tracing::warn!(link = %link.display(), "image build has another recipe hash: rebuilding");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(link = %link.display(), error = %error_chain(&e), "image build unusable: rebuilding");
                Ok(None)
            }
        }
    }

    /// The current build of `recipe`, building it when there is none (or always, with
    /// `options.force`). Concurrent callers (threads or processes) of the same recipe
    /// build once: the others wait on the recipe's lock and reuse the result.
    pub fn ensure(
        &self,
        recipe: &Recipe,
        options: &BuildOptions,
        progress: &dyn Progress,
    ) -> Result<BuiltImage, ImageError> {
        recipe.validate().map_err(ImageError::Recipe)?;
        if !options.force {
            if let Some(image) = self.current(recipe)? {
                return Ok(image);
            }
        }
        let builds = self.dir.join(BUILDS_DIR);
        fs::create_dir_all(&builds)
            .map_err(ImageError::io(format!("create {}", builds.display())))?;
        let lock_path = self.lock_path(recipe);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ImageError::io(format!("open {}", lock_path.display())))?;
        if rustix::fs::flock(lock.as_fd(), FlockOperation::NonBlockingLockExclusive).is_err() {
            tracing::info!(
                lock = %lock_path.display(),
                "another process is building image {}: waiting for it",
                recipe.short_hash()
            );
            rustix::fs::flock(lock.as_fd(), FlockOperation::LockExclusive)
                .map_err(|e| ImageError::io(format!("lock {}", lock_path.display()))(e.into()))?;
            if !options.force {
                if let Some(image) = self.current(recipe)? {
                    return Ok(image);
                }
            }
        } else if !options.force {
            // Someone may have finished between the lookup and the lock.
            if let Some(image) = self.current(recipe)? {
                return Ok(image);
            }
        }
        self.remove_stale_staging(recipe);
        let result = self.build_locked(recipe, options, progress);
        drop(lock);
        result
    }

    /// Removes staging directories of `recipe` left by interrupted builds (the caller
    /// holds the recipe's lock, so none of them is in progress).
    fn remove_stale_staging(&self, recipe: &Recipe) {
        let prefix = format!("{STAGING_PREFIX}{}-", recipe.short_hash());
        let Ok(entries) = fs::read_dir(self.dir.join(BUILDS_DIR)) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                tracing::warn!(dir = %entry.path().display(), "removing an interrupted image build");
                build::cleanup(&entry.path());
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), error = %error_chain(&e), "cannot remove it");
                }
            }
        }
    }

    fn build_locked(
        &self,
        recipe: &Recipe,
        options: &BuildOptions,
        progress: &dyn Progress,
    ) -> Result<BuiltImage, ImageError> {
        let clock = Clock::start(progress);
        let id = format!(
            "{}-{}-{:08x}",
            recipe.short_hash(),
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            rand::random::<u32>()
        );
        let builds = self.dir.join(BUILDS_DIR);
        let staging = builds.join(format!("{STAGING_PREFIX}{id}"));
        clock.phase(&format!(
            "building image {} (recipe {}, Debian {}) in {}",
            recipe.name,
            recipe.short_hash(),
            recipe.suite,
            staging.display()
        ));
        let built = build::build(&staging, &id, recipe, options, &clock);
        let manifest = match built {
            Ok(m) => m,
            Err(e) => {
                build::cleanup(&staging);
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let dest = builds.join(&id);
        fs::rename(&staging, &dest).map_err(ImageError::io(format!(
            "move {} to {}",
            staging.display(),
            dest.display()
        )))?;
        // Publish: a new link renamed over the old one.
        let link = self.current_link(recipe);
        let tmp_link = self.dir.join(format!(
            ".{}.link-{:08x}",
            recipe.short_hash(),
            rand::random::<u32>()
        ));
        std::os::unix::fs::symlink(Path::new(BUILDS_DIR).join(&id), &tmp_link)
            .map_err(ImageError::io(format!("create {}", tmp_link.display())))?;
        fs::rename(&tmp_link, &link)
            .map_err(ImageError::io(format!("publish {}", link.display())))?;
        let dest = dest.canonicalize().unwrap_or(dest);
        clock.done(&format!(
            "image {} ready in {:.0}s: {} ({} packages, rootfs.ext4 {} MiB)",
            recipe.short_hash(),
            clock.elapsed().as_secs_f64(),
            dest.display(),
            manifest.packages.len(),
            manifest.ext4.bytes >> 20
        ));
        Ok(BuiltImage {
            dir: dest,
            manifest,
        })
    }
}
