//! The image pipeline: builds the default template — a Debian environment of its own —
//! from Debian packages, and caches it.
//!
//! [`ensure_default`] returns the build of [`Recipe::default_for_host`], building it
//! first when the cache has none. A build ([`build`]) runs `mmdebstrap` (when on
//! `PATH`) or `debootstrap` — when neither is installed and the host has `apt-get` and
//! we are root, `debootstrap` is installed with `apt-get` first, with a warning saying
//! so; `WRENN_IMAGE_NO_INSTALL=1` ([`BuildOptions::from_env`]) turns that into an error
//! naming the package. It then configures the tree in a `chroot` (user `wrenn-user`
//! with passwordless sudo, apt sources with the security suite, a `policy-rc.d` that
//! keeps services from starting, `apt-get update` last so `sudo apt-get install -y X`
//! works at once), records the installed packages, makes `rootfs.ext4` without
//! mounting ([`ext4`]) and extracts the kernel for the VM runtimes ([`kernel`]).
//!
//! # The store
//!
//! ```text
//! <store>/                       $WRENN_DIR/images/base, or $WRENN_IMAGE_CACHE
//!   <hash16> -> builds/<id>      the current build of a recipe (a symlink: made last)
//!   .<hash16>.lock               flock: one builder per recipe, the others wait
//!   builds/<hash16>-<time>-<rand>/
//!     manifest.json              recipe, hash, packages, sizes, sha256s, build time
//!     rootfs/                    the tree (the process runtime's lowest layer; never
//!                                written after the build)
//!     rootfs.ext4                the same tree as a sparse ext4 image
//!     kernel/vmlinuz vmlinux modules/<release>/ busybox (static, for the VM initramfs)
//!   builds/.staging-<hash16>-…   a build in progress (or interrupted: removed by the
//!                                next builder of that recipe)
//! ```
//!
//! `<hash16>` is the start of [`Recipe::hash`]; the manifest holds the whole hash and a
//! lookup checks it. A build is only visible once complete: it is made in a staging
//! directory, renamed into `builds/`, and only then does the `<hash16>` link point to it.
//! Builds are never deleted by Wrenn: templates made from sandboxes record the build
//! directory they sit on ([`ImageRef`]), so `wrenn image build --force` or a changed
//! recipe adds a build and repoints the link while older builds stay for the templates
//! (and running sandboxes) that use them. Remove unused `builds/` entries by hand.
//!
//! `WRENN_IMAGE_CACHE=/dir` ([`store_dir`]) shares one store between `$WRENN_DIR`s
//! (tests and CI build the image once per machine).

pub mod build;
pub mod ext4;
pub mod kernel;
pub mod lz4;
pub mod manifest;
pub mod progress;
pub mod recipe;
pub mod store;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wrenn_core::layout::Layout;

pub use self::build::BuildOptions;
pub use self::manifest::Manifest;
pub use self::progress::{LogProgress, NoProgress, Progress};
pub use self::recipe::Recipe;
pub use self::store::{BuiltImage, Store};

/// The store's directory under [`Layout::images_dir`].
pub const BASE_DIR: &str = "base";
/// Environment variable naming a shared image store (see [`store_dir`]).
pub const CACHE_ENV: &str = "WRENN_IMAGE_CACHE";
/// Environment variable that forbids installing a missing bootstrap tool.
pub const NO_INSTALL_ENV: &str = "WRENN_IMAGE_NO_INSTALL";

/// Errors of the image pipeline.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file-system operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A program failed.
    #[error("`{command}` failed ({status}); its last output:\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// The last lines it printed.
        output: String,
    },
    /// A tool the build needs is missing and may not (or cannot) be installed.
    #[error("{tool} is missing: install the Debian package `{package}` ({why})")]
    MissingTool {
        /// The program.
        tool: String,
        /// The Debian package holding it.
        package: String,
        /// Why it was not installed automatically.
        why: String,
    },
    /// The recipe is invalid.
    #[error("invalid image recipe: {0}")]
    Recipe(String),
    /// A build directory or its manifest is not what it should be.
    #[error("invalid image build {path}: {reason}")]
    Invalid {
        /// The build directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A manifest could not be read or written.
    #[error("image manifest {path}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// The kernel artefacts could not be made.
    #[error("kernel: {0}")]
    Kernel(String),
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// A reference to one image build, as recorded by templates and given to the process
/// runtime: the build's recipe hash and its root filesystem directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// [`Recipe::hash`] of the build.
    pub hash: String,
    /// The build's `rootfs/` directory (absolute).
    pub rootfs: PathBuf,
}

/// The image store to use: `$WRENN_IMAGE_CACHE` when set and non-empty, else
/// `$WRENN_DIR/images/base` ([`base_dir`]).
pub fn store_dir(layout: &Layout) -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => base_dir(layout),
    }
}

/// `$WRENN_DIR/images/base`: the image store of a `$WRENN_DIR`.
pub fn base_dir(layout: &Layout) -> PathBuf {
    layout.images_dir().join(BASE_DIR)
}

/// The build of the default recipe in `store`, built first when there is none (or
/// when `options.force`). Blocking: call it from a blocking thread.
pub fn ensure_default(
    store: &Path,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuiltImage, ImageError> {
    Store::new(store).ensure(&Recipe::default_for_host(), options, progress)
}

/// The existing build of the default recipe in `store`, without building.
pub fn find_default(store: &Path) -> Result<Option<BuiltImage>, ImageError> {
    Store::new(store).current(&Recipe::default_for_host())
}

/// Where test suites share the default image when `$WRENN_IMAGE_CACHE` is unset.
pub const TEST_CACHE_DEFAULT: &str = "/var/cache/wrenn/test-images";

/// The default image for test suites and CI: built once per machine into
/// `$WRENN_IMAGE_CACHE` (default [`TEST_CACHE_DEFAULT`]), reused by every test binary
/// after that (concurrent callers wait for one build). Progress is logged.
pub fn ensure_shared_for_tests() -> Result<BuiltImage, ImageError> {
    ensure_default(&test_store_dir(), &BuildOptions::from_env(), &LogProgress)
}

/// The store of [`ensure_shared_for_tests`]: `$WRENN_IMAGE_CACHE`, else
/// [`TEST_CACHE_DEFAULT`]. Tests pass it on as `WRENN_IMAGE_CACHE` to the binaries they
/// start.
pub fn test_store_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(TEST_CACHE_DEFAULT),
    }
}
