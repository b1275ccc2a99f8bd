//! Host paths under `$WRENN_DIR`. This is the only place they are built.
//!
//! ```text
//! $WRENN_DIR/
//!   wrenn.db                                   embedded SQLite database
//!   kernels/vmlinux-<x.y.z>                    guest kernels
//!   images/teams/<team uuid>/<template uuid>/rootfs.ext4
//!                                              templates (platform: all-zero uuids)
//!   sandboxes/<cl-…>/                          per-sandbox runtime state
//!   snapshots/<cl-…>/                          paused sandboxes
//!   logs/
//!   secrets/ (0700)  jwt_secret, encryption_key, ca.pem, ca-key.pem
//!   run/     (0700)  sockets
//! ```
//!
//! Team and template directories use hyphenated UUIDs (what the agent RPCs carry);
//! sandbox directories use the wire id (`cl-…`).

use std::io;
use std::path::{Path, PathBuf};

use crate::id::{SandboxId, TeamId, TemplateId};

/// File name of a template's root filesystem image.
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// Prefix of guest kernel file names (`vmlinux-6.1.102`).
pub const KERNEL_PREFIX: &str = "vmlinux-";

/// The directory tree under `$WRENN_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root` (typically `$WRENN_DIR`). Nothing is touched on disk.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$WRENN_DIR`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `kernels/`: guest kernels named `vmlinux-<x.y.z>`.
    pub fn kernels_dir(&self) -> PathBuf {
        self.root.join("kernels")
    }

    /// The kernel in [`kernels_dir`](Self::kernels_dir) with the highest version, comparing
    /// `vmlinux-<x.y.z>` names numerically component by component. Names whose suffix is
    /// not a dotted list of numbers are ignored. `Ok(None)` if there is none or the
    /// directory does not exist.
    pub fn latest_kernel(&self) -> io::Result<Option<PathBuf>> {
        let entries = match std::fs::read_dir(self.kernels_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut best: Option<(Vec<u64>, PathBuf)> = None;
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(kernel_version) else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| version > *b) {
                best = Some((version, entry.path()));
            }
        }
        Ok(best.map(|(_, path)| path))
    }

    /// `images/`.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// `images/teams/`.
    pub fn team_images_dir(&self) -> PathBuf {
        self.images_dir().join("teams")
    }

    /// `images/teams/{team uuid}/`: every template of one team.
    pub fn team_templates_dir(&self, team: TeamId) -> PathBuf {
        self.team_images_dir()
            .join(team.uuid().hyphenated().to_string())
    }

    /// `images/teams/{team uuid}/{template uuid}/`. Platform templates live under the
    /// all-zero team id.
    pub fn template_dir(&self, team: TeamId, template: TemplateId) -> PathBuf {
        self.team_templates_dir(team)
            .join(template.uuid().hyphenated().to_string())
    }

    /// `images/teams/{team uuid}/{template uuid}/rootfs.ext4`.
    pub fn template_rootfs(&self, team: TeamId, template: TemplateId) -> PathBuf {
        self.template_dir(team, template).join(ROOTFS_FILE)
    }

    /// `sandboxes/`.
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// `sandboxes/{cl-…}/`: a running sandbox's state (disk overlay, sockets, logs).
    pub fn sandbox_dir(&self, sandbox: SandboxId) -> PathBuf {
        self.sandboxes_dir().join(sandbox.to_string())
    }

    /// `snapshots/`.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `snapshots/{cl-…}/`: a paused sandbox's memory and disk state.
    pub fn snapshot_dir(&self, sandbox: SandboxId) -> PathBuf {
        self.snapshots_dir().join(sandbox.to_string())
    }

    /// `logs/`.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// `secrets/` (mode 0700).
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// `secrets/jwt_secret`: the generated JWT secret when `JWT_SECRET` is unset.
    pub fn jwt_secret_file(&self) -> PathBuf {
        self.secrets_dir().join("jwt_secret")
    }

    /// `secrets/encryption_key`: the generated channel-config key (64 hex characters)
    /// when `WRENN_ENCRYPTION_KEY` is unset.
    pub fn encryption_key_file(&self) -> PathBuf {
        self.secrets_dir().join("encryption_key")
    }

    /// `secrets/ca.pem`: the generated mTLS CA certificate.
    pub fn ca_cert_file(&self) -> PathBuf {
        self.secrets_dir().join("ca.pem")
    }

    /// `secrets/ca-key.pem`: the generated mTLS CA private key.
    pub fn ca_key_file(&self) -> PathBuf {
        self.secrets_dir().join("ca-key.pem")
    }

    /// `secrets/host-credentials.json`: a registered agent's host id, host JWT,
    /// refresh token and TLS certificate material.
    pub fn host_credentials_file(&self) -> PathBuf {
        self.secrets_dir().join("host-credentials.json")
    }

    /// `wrenn.db`: the embedded SQLite database.
    pub fn sqlite_db_file(&self) -> PathBuf {
        self.root.join("wrenn.db")
    }

    /// `run/` (mode 0700): unix sockets.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Creates the directory tree (idempotent). `secrets/` and `run/` are created, or
    /// reset, to mode 0700; the others get the default mode.
    pub fn ensure_dirs(&self) -> io::Result<()> {
        for dir in [
            self.root.clone(),
            self.kernels_dir(),
            self.team_images_dir(),
            self.sandboxes_dir(),
            self.snapshots_dir(),
            self.logs_dir(),
        ] {
            std::fs::create_dir_all(&dir)?;
        }
        for dir in [self.secrets_dir(), self.run_dir()] {
            create_private_dir(&dir)?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// The numeric version of a kernel file name: `vmlinux-6.1.102` → `[6, 1, 102]`.
fn kernel_version(file_name: &str) -> Option<Vec<u64>> {
    let version = file_name.strip_prefix(KERNEL_PREFIX)?;
    version
        .split('.')
        .map(|part| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                part.parse().ok()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID};
    use uuid::Uuid;

    #[test]
    fn paths() {
        let l = Layout::new("/var/lib/wrenn");
        assert_eq!(l.root(), Path::new("/var/lib/wrenn"));
        assert_eq!(l.kernels_dir(), Path::new("/var/lib/wrenn/kernels"));
        assert_eq!(l.images_dir(), Path::new("/var/lib/wrenn/images"));
        let team = TeamId::from_uuid(Uuid::from_u128(1));
        let tmpl = TemplateId(Uuid::from_u128(2));
        assert_eq!(
            l.template_dir(team, tmpl),
            Path::new(
                "/var/lib/wrenn/images/teams/00000000-0000-0000-0000-000000000001/00000000-0000-0000-0000-000000000002"
            )
        );
        assert_eq!(
            l.template_rootfs(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID),
            Path::new(
                "/var/lib/wrenn/images/teams/00000000-0000-0000-0000-000000000000/00000000-0000-0000-0000-000000000000/rootfs.ext4"
            )
        );
        let sb = SandboxId::new();
        assert_eq!(
            l.sandbox_dir(sb),
            Path::new(&format!("/var/lib/wrenn/sandboxes/{sb}"))
        );
        assert_eq!(
            l.snapshot_dir(sb),
            Path::new(&format!("/var/lib/wrenn/snapshots/{sb}"))
        );
        assert_eq!(l.logs_dir(), Path::new("/var/lib/wrenn/logs"));
        assert_eq!(
            l.jwt_secret_file(),
            Path::new("/var/lib/wrenn/secrets/jwt_secret")
        );
        assert_eq!(l.ca_cert_file(), Path::new("/var/lib/wrenn/secrets/ca.pem"));
        assert_eq!(
            l.ca_key_file(),
            Path::new("/var/lib/wrenn/secrets/ca-key.pem")
        );
        assert_eq!(l.sqlite_db_file(), Path::new("/var/lib/wrenn/wrenn.db"));
        assert_eq!(l.run_dir(), Path::new("/var/lib/wrenn/run"));
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("vmlinux-6.1.102"), Some(vec![6, 1, 102]));
        assert_eq!(kernel_version("vmlinux-6"), Some(vec![6]));
        for bad in [
            "vmlinux",
            "vmlinux-",
            "vmlinux-6.1.",
            "vmlinux-6..1",
            "vmlinux-6.1-rc1",
            "vmlinux-+6",
            "bzImage-6.1",
        ] {
            assert_eq!(kernel_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn latest_kernel_compares_numerically() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        assert_eq!(l.latest_kernel().unwrap(), None, "missing dir");
        std::fs::create_dir_all(l.kernels_dir()).unwrap();
        assert_eq!(l.latest_kernel().unwrap(), None, "empty dir");
        for name in [
            "vmlinux-5.10.239",
            "vmlinux-6.1.9",
            "vmlinux-6.1.10",
            "vmlinux",
            "vmlinux-7.0-rc1",
            "README",
        ] {
            std::fs::write(l.kernels_dir().join(name), b"").unwrap();
        }
        // A directory with a higher version is not a kernel.
        std::fs::create_dir(l.kernels_dir().join("vmlinux-9.9.9")).unwrap();
        assert_eq!(
            l.latest_kernel().unwrap(),
            Some(l.kernels_dir().join("vmlinux-6.1.10"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn ensure_dirs_creates_the_tree() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path().join("wrenn"));
        l.ensure_dirs().unwrap();
        for d in [
            l.root().to_path_buf(),
            l.kernels_dir(),
            l.team_images_dir(),
            l.sandboxes_dir(),
            l.snapshots_dir(),
            l.logs_dir(),
            l.secrets_dir(),
            l.run_dir(),
        ] {
            assert!(d.is_dir(), "{}", d.display());
        }
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(l.secrets_dir()), 0o700);
        assert_eq!(mode(l.run_dir()), 0o700);
        // Idempotent, and it tightens a too-open secrets dir.
        std::fs::set_permissions(l.secrets_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        l.ensure_dirs().unwrap();
        assert_eq!(mode(l.secrets_dir()), 0o700);
    }
}
