//! The kernel artefacts for the VM runtimes: Debian's cloud kernel package is
//! downloaded with the build root's apt (never installed into the image), its
//! `vmlinuz` (bzImage) and `lib/modules/<release>` go to `kernel/`, and the
//! uncompressed ELF `vmlinux` is cut out of the bzImage (what the kernel's
//! `scripts/extract-vmlinux` does, but reading the payload's exact place and length
//! from the boot protocol header instead of searching for magic bytes). LZ4 payloads
//! (Debian 12's cloud kernel) are decompressed in process ([`super::lz4`]); xz, zstd,
//! gzip, bzip2 and lzma ones with the host's Debian tool.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::ImageError;
use super::build::{chroot, find_program};
use super::manifest::{self, FileInfo, KernelInfo};

/// Scratch directory of the kernel package in the staging directory (and, as
/// `var/tmp/wrenn-kernel-work`, in the build root while it is downloaded).
const SCRATCH: &str = "kernel-work";
/// The same for the initramfs's busybox package.
const INIT_SCRATCH: &str = "busybox-work";
/// File name of the static busybox in the kernel directory.
pub const BUSYBOX: &str = "busybox";

/// A downloaded and unpacked kernel package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    /// The unpacked package tree.
    pub tree: PathBuf,
    /// The package name (`linux-image-6.1.0-…-cloud-amd64`).
    pub package: String,
    /// Its version.
    pub version: String,
}

fn env() -> [(&'static str, &'static str); 3] {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("LC_ALL", "C.UTF-8"),
        ("HOME", "/root"),
    ]
}

/// Downloads the package that `meta` (`linux-image-cloud-amd64`) depends on with the
/// apt of `rootfs` (whose lists are current) and unpacks it outside the tree, in
/// `staging/kernel-work/`.
pub fn download(rootfs: &Path, meta: &str, staging: &Path) -> Result<KernelPackage, ImageError> {
    let env = env();
    let depends = chroot(
        rootfs,
        &[
            "apt-cache",
            "depends",
            "--no-recommends",
            "--no-suggests",
            meta,
        ],
        &env,
    )?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| ImageError::Kernel(format!("{meta} depends on no linux-image package")))?
        .to_owned();
    fetch(rootfs, &package, staging, SCRATCH)
}

/// Downloads `package` (a static `busybox` for the VM's initramfs: Debian's
/// `busybox-static`) with the apt of `rootfs` and unpacks it in `staging/busybox-work/`.
pub fn download_init(
    rootfs: &Path,
    package: &str,
    staging: &Path,
) -> Result<KernelPackage, ImageError> {
    fetch(rootfs, package, staging, INIT_SCRATCH)
}

/// `apt-get download` of `package` inside `rootfs`, unpacked with `dpkg-deb -x` and
/// moved to `staging/<scratch>/tree`.
fn fetch(
    rootfs: &Path,
    package: &str,
    staging: &Path,
    scratch_name: &str,
) -> Result<KernelPackage, ImageError> {
    let env = env();
    let in_root = format!("var/tmp/wrenn-{scratch_name}");
    let scratch = rootfs.join(&in_root);
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)
        .map_err(ImageError::io(format!("create {}", scratch.display())))?;
    let inside = format!("/{in_root}");
    chroot(
        rootfs,
        &[
            "/bin/sh",
            "-c",
            "cd \"$1\" && exec apt-get -q download \"$2\"",
            "sh",
            &inside,
            package,
        ],
        &env,
    )?;
    let deb = fs::read_dir(&scratch)
        .map_err(ImageError::io(format!("read {}", scratch.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".deb"))
        .ok_or_else(|| ImageError::Kernel(format!("apt-get download {package} saved no .deb")))?;
    let deb_inside = format!("{inside}/{deb}");
    let version = chroot(rootfs, &["dpkg-deb", "-f", &deb_inside, "Version"], &env)?
        .trim()
        .to_owned();
    chroot(
        rootfs,
        &["dpkg-deb", "-x", &deb_inside, &format!("{inside}/tree")],
        &env,
    )?;
    let work = staging.join(scratch_name);
    fs::rename(&scratch, &work).map_err(ImageError::io(format!(
        "move {} to {}",
        scratch.display(),
        work.display()
    )))?;
    Ok(KernelPackage {
        tree: work.join("tree"),
        package: package.to_owned(),
        version,
    })
}

/// Moves the static `bin/busybox` of `pkg` to `staging/<dir>/busybox` and removes the
/// scratch directory.
pub fn extract_init(
    pkg: &KernelPackage,
    staging: &Path,
    dir: &str,
) -> Result<FileInfo, ImageError> {
    let src = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| pkg.tree.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::Kernel(format!("{} has no bin/busybox", pkg.package)))?;
    let rel = format!("{dir}/{BUSYBOX}");
    fs::create_dir_all(staging.join(dir)).map_err(ImageError::io(format!(
        "create {}",
        staging.join(dir).display()
    )))?;
    fs::rename(&src, staging.join(&rel))
        .map_err(ImageError::io(format!("move {}", src.display())))?;
    let _ = fs::remove_dir_all(pkg.tree.parent().unwrap_or(&pkg.tree));
    manifest::file_info(staging, &rel).map_err(ImageError::io(format!("hash {rel}")))
}

/// Moves `vmlinuz` and the modules of `pkg` to `staging/<dir>/`, writes
/// `vmlinux` next to them and removes the scratch directory.
pub fn extract(pkg: &KernelPackage, staging: &Path, dir: &str) -> Result<KernelInfo, ImageError> {
    let boot = pkg.tree.join("boot");
    let vmlinuz_src = fs::read_dir(&boot)
        .map_err(ImageError::io(format!("read {}", boot.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| ImageError::Kernel(format!("{} has no boot/vmlinuz-*", pkg.package)))?;
    let release = vmlinuz_src
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_owned()
        })
        .unwrap_or_default();
    let modules_src = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| pkg.tree.join(m).join(&release))
        .find(|p| p.is_dir())
        .ok_or_else(|| {
            ImageError::Kernel(format!("{} has no modules for {release}", pkg.package))
        })?;
    let out = staging.join(dir);
    let modules_rel = format!("{dir}/modules/{release}");
    fs::create_dir_all(out.join("modules"))
        .map_err(ImageError::io(format!("create {}", out.display())))?;
    let mv = |from: &Path, to: &Path| {
        fs::rename(from, to).map_err(ImageError::io(format!(
            "move {} to {}",
            from.display(),
            to.display()
        )))
    };
    mv(&vmlinuz_src, &out.join("vmlinuz"))?;
    mv(&modules_src, &staging.join(&modules_rel))?;
    let config = boot.join(format!("config-{release}"));
    if config.is_file() {
        mv(&config, &out.join("config"))?;
    }
    let bzimage =
        fs::read(out.join("vmlinuz")).map_err(ImageError::io("read the bzImage".to_owned()))?;
    let compression = decompress_payload(&bzimage, &out.join("vmlinux"))?;
    let _ = fs::remove_dir_all(pkg.tree.parent().unwrap_or(&pkg.tree));
    let info = |rel: String| {
        manifest::file_info(staging, &rel).map_err(ImageError::io(format!("hash {rel}")))
    };
    Ok(KernelInfo {
        package: pkg.package.clone(),
        package_version: pkg.version.clone(),
        release,
        compression: compression.to_owned(),
        vmlinuz: info(format!("{dir}/vmlinuz"))?,
        vmlinux: info(format!("{dir}/vmlinux"))?,
        modules: modules_rel,
        busybox: None,
    })
}

/// The compressed kernel inside a bzImage: `(payload, method)`.
pub fn payload(bzimage: &[u8]) -> Result<(&[u8], &'static str), String> {
    let u32_at = |off: usize| -> Option<u32> {
        bzimage
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS boot header)".into());
    }
    let version = bzimage
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    if version < 0x208 {
        return Err(format!("boot protocol {version:#x} has no payload fields"));
    }
    let setup_sects = match bzimage.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512;
    let offset = u32_at(0x248).ok_or("truncated header")? as usize;
    let length = u32_at(0x24c).ok_or("truncated header")? as usize;
    let data = bzimage
        .get(start + offset..start + offset + length)
        .ok_or("the payload lies outside the file")?;
    let method = if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "xz"
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if data.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if data.starts_with(b"BZh") {
        "bzip2"
    } else if data.starts_with(&[0x5d, 0, 0]) {
        "lzma"
    } else if data.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        "lz4"
    } else {
        return Err("unknown payload compression".into());
    };
    Ok((data, method))
}

/// Writes the uncompressed ELF kernel of `bzimage` to `out`; returns the method.
/// The kernel appends the uncompressed size to the payload: the output must have it.
fn decompress_payload(bzimage: &[u8], out: &Path) -> Result<&'static str, ImageError> {
    let (data, method) = payload(bzimage).map_err(ImageError::Kernel)?;
    let expected = data
        .get(data.len().saturating_sub(4)..)
        .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .unwrap_or(0);
    if method == "lz4" {
        let vmlinux = super::lz4::decompress_legacy(data).map_err(ImageError::Kernel)?;
        return check_and_write(vmlinux, expected, out).map(|()| method);
    }
    let (tool, package, args): (&str, &str, &[&str]) = match method {
        "xz" => ("xz", "xz-utils", &["-dc", "--single-stream"]),
        "zstd" => ("zstd", "zstd", &["-dcq"]),
        "gzip" => ("gzip", "gzip", &["-dcq"]),
        "bzip2" => ("bzip2", "bzip2", &["-dcq"]),
        "lzma" => (
            "xz",
            "xz-utils",
            &["-dc", "--format=lzma", "--single-stream"],
        ),
        _ => ("lz4", "lz4", &["-dcq"]),
    };
    let program = find_program(tool).ok_or_else(|| ImageError::MissingTool {
        tool: tool.to_owned(),
        package: package.to_owned(),
        why: format!("the kernel payload is {method}-compressed"),
    })?;
    // zstd refuses the appended size as a broken frame; the others stop at the end
    // of their stream.
    let input = if method == "zstd" {
        data[..data.len().saturating_sub(4)].to_vec()
    } else {
        data.to_vec()
    };
    let file =
        fs::File::create(out).map_err(ImageError::io(format!("create {}", out.display())))?;
    let mut child = Command::new(&program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            program: tool.to_owned(),
            source,
        })?;
    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            // A decompressor that stops early closes its end: not an error here.
            let _ = s.write_all(&input);
        }
    });
    let output = child
        .wait_with_output()
        .map_err(|source| ImageError::Spawn {
            program: tool.to_owned(),
            source,
        })?;
    let _ = writer.join();
    let written = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let mut magic = [0u8; 4];
    let elf = fs::File::open(out)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF";
    if !elf || written != expected {
        return Err(ImageError::Kernel(format!(
            "{tool} made {written} bytes (expected an ELF file of {expected} bytes; {}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(method)
}

/// Writes an uncompressed kernel after checking it is an ELF file of the size the
/// bzImage announces.
fn check_and_write(vmlinux: Vec<u8>, expected: u64, out: &Path) -> Result<(), ImageError> {
    if !vmlinux.starts_with(b"\x7fELF") || vmlinux.len() as u64 != expected {
        return Err(ImageError::Kernel(format!(
            "the payload decompressed to {} bytes (expected an ELF file of {expected} bytes)",
            vmlinux.len()
        )));
    }
    fs::write(out, vmlinux).map_err(ImageError::io(format!("write {}", out.display())))
}

#[cfg(test)]
mod tests {
    use super::payload;

    #[test]
    fn a_file_without_a_boot_header_is_refused() {
        assert!(payload(&[0u8; 4096]).unwrap_err().contains("HdrS"));
        assert!(payload(b"short").is_err());
    }

    #[test]
    fn the_payload_is_found_through_the_header() {
        let mut image = vec![0u8; 8192];
        image[0x1f1] = 1; // one setup sector: protected mode code at 1024
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&10u32.to_le_bytes());
        image[1124..1130].copy_from_slice(&[0xfd, b'7', b'z', b'X', b'Z', 0]);
        let (data, method) = payload(&image).unwrap();
        assert_eq!(method, "xz");
        assert_eq!(data.len(), 10);
        image[0x24c..0x250].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(payload(&image).unwrap_err().contains("outside"));
    }
}
