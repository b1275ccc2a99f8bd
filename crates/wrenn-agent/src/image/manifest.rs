//! `manifest.json` of a build: what went in and what came out.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::recipe::Recipe;

/// The manifest file name in a build directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`super::recipe::FORMAT_VERSION`] at build time.
    pub format: String,
    /// The recipe built.
    pub recipe: Recipe,
    /// [`Recipe::hash`].
    pub hash: String,
    /// The build's unique id (the build directory's name).
    pub build_id: String,
    /// When it was built (RFC 3339).
    pub built_at: String,
    /// How long the build took, in seconds.
    pub build_seconds: f64,
    /// The tool that made the root filesystem (`mmdebstrap` or `debootstrap`).
    pub bootstrap_tool: String,
    /// Installed packages (`dpkg-query`), sorted by name.
    pub packages: Vec<Package>,
    /// Bytes allocated to `rootfs/` (hard links counted once).
    pub rootfs_bytes: u64,
    /// `rootfs.ext4`.
    pub ext4: FileInfo,
    /// The kernel artefacts in `kernel/`, when the recipe names a kernel package.
    pub kernel: Option<KernelInfo>,
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `Installed-Size` in KiB.
    pub installed_kib: u64,
}

/// A file of the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Path relative to the build directory.
    pub path: String,
    /// Apparent size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the contents.
    pub sha256: String,
}

/// The kernel of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// The Debian package it came from (`linux-image-6.1.0-…-cloud-amd64`).
    pub package: String,
    /// Its version.
    pub package_version: String,
    /// The kernel release (`uname -r`, the `lib/modules/` directory name).
    pub release: String,
    /// How the bzImage payload was compressed (`xz`, `zstd`, `gzip`, …).
    pub compression: String,
    /// `kernel/vmlinuz` (bzImage).
    pub vmlinuz: FileInfo,
    /// `kernel/vmlinux` (uncompressed ELF).
    pub vmlinux: FileInfo,
    /// `kernel/modules/<release>/` relative to the build directory.
    pub modules: String,
    /// `kernel/busybox`: the static busybox of the VM initramfs, when the recipe names
    /// a package for it.
    #[serde(default)]
    pub busybox: Option<FileInfo>,
}

/// Hex SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// [`FileInfo`] of `dir/rel`.
pub fn file_info(dir: &Path, rel: &str) -> std::io::Result<FileInfo> {
    let path = dir.join(rel);
    Ok(FileInfo {
        path: rel.to_owned(),
        bytes: std::fs::metadata(&path)?.len(),
        sha256: sha256_file(&path)?,
    })
}

/// Parses `dpkg-query -W -f '${Package}\t${Version}\t${Installed-Size}\n'` output.
pub fn parse_packages(text: &str) -> Vec<Package> {
    let mut packages: Vec<Package> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let name = f.next()?.trim();
            let version = f.next()?.trim();
            let size = f.next().unwrap_or("0").trim().parse().unwrap_or(0);
            (!name.is_empty()).then(|| Package {
                name: name.to_owned(),
                version: version.to_owned(),
                installed_kib: size,
            })
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_query_output_becomes_a_sorted_package_list() {
        let p = parse_packages("sudo\t1.9.13p3-1+deb12u1\t6201\nbash\t5.2.15-2+b7\t7164\n\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "bash");
        assert_eq!(p[1].version, "1.9.13p3-1+deb12u1");
        assert_eq!(p[1].installed_kib, 6201);
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        let info = file_info(dir.path(), "f").unwrap();
        assert_eq!(info.bytes, 3);
        assert_eq!(
            info.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
