//! The initramfs a capsule VM boots with, made from the image build's kernel artefacts
//! ([`crate::image::kernel`]): Debian's static busybox, the kernel modules the guest
//! needs before its root disk and network exist (Debian's cloud kernel builds virtio
//! as modules) in load order, and [`INIT_SCRIPT`] as `/init`.
//!
//! The modules are found by name in `lib/modules/<release>/` and their dependencies
//! read from each module's `.modinfo` (`depends=`), so no `depmod` output is needed.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::cpio;

/// The modules the guest loads, with their dependencies: the virtio-mmio transport of
/// QEMU's `microvm` and Firecracker, the root and envd disks, the network.
pub const GUEST_MODULES: &[&str] = &["virtio_mmio", "virtio_blk", "virtio_net"];

/// `/init`: mounts the kernel file systems, loads the modules, waits for the root disk
/// (the virtio disk whose serial is `wrenn-root`, else `wrenn.root=`, default
/// `/dev/vda`) and mounts it, growing its file system to the disk with the image's
/// `resize2fs` when `wrenn.grow=1`; with `wrenn.net=ADDR/PREFIX,GATEWAY` configures
/// `eth0`, the default route and `/etc/resolv.conf` (the gateway serves DNS); mounts
/// the guest's `/proc`, `/sys`, `/dev` (with `pts` and `shm`) and a `/run` tmpfs, and
/// the disk whose serial is `wrenn-envd` (else `wrenn.envd=`; envd, read-only) at
/// `/run/wrenn`; then
/// `switch_root`s into the program named by `wrenn.init=` on the kernel command line
/// (envd; arguments follow the program, separated by commas). Modules get their
/// parameters from the command line (`virtio_mmio.device=…`). Each step says so on the
/// console, which the host keeps as the capsule's serial log; a failure powers the VM
/// off, so the host sees it exit.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
export PATH=/bin
say() { echo "wrenn-init: $*"; }
fail() { say "FAILED: $*"; sync; poweroff -f; }
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
root=/dev/vda
envd_disk=
next=
grow=
net=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    wrenn.root=*) root="${arg#wrenn.root=}" ;;
    wrenn.grow=*) grow="${arg#wrenn.grow=}" ;;
    wrenn.net=*) net="${arg#wrenn.net=}" ;;
    wrenn.envd=*) envd_disk="${arg#wrenn.envd=}" ;;
    wrenn.init=*) next="$(echo "${arg#wrenn.init=}" | tr , ' ')" ;;
  esac
done
# A module's parameters on the kernel command line (`virtio_mmio.device=…`, which
# Firecracker uses to describe its devices) go to insmod: only modprobe reads them.
while read -r m; do
  name="${m##*/}"
  name="${name%.ko}"
  params=
  for arg in $(cat /proc/cmdline); do
    case "$arg" in "$name".*) params="$params ${arg#"$name".}" ;; esac
  done
  insmod "/lib/modules/$m" $params || fail "load $m"
done < /etc/wrenn-modules
say "modules loaded"
i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ "$i" -gt 500 ] && fail "no root disk $root"
  usleep 10000
done
# Disks are found by their serial where the VMM gives one (QEMU: the order of its
# virtio-mmio devices is its own); else `wrenn.root=` and `wrenn.envd=` name them.
for dev in /sys/block/vd*; do
  [ -e "$dev/serial" ] || continue
  case "$(cat "$dev/serial")" in
    wrenn-root) root="/dev/${dev##*/}" ;;
    wrenn-envd) envd_disk="/dev/${dev##*/}" ;;
  esac
done
mount -t ext4 -o rw,noatime "$root" /newroot || fail "mount $root"
say "root mounted"
if [ "$grow" = 1 ]; then
  mount -t proc proc /newroot/proc || fail "mount /proc for resize2fs"
  mount --bind /dev /newroot/dev || fail "bind /dev for resize2fs"
  chroot /newroot /sbin/resize2fs "$root" || fail "resize2fs $root"
  umount /newroot/proc /newroot/dev
  say "root grown"
fi
ip link set lo up
if [ -n "$net" ]; then
  address="${net%,*}"
  gateway="${net#*,}"
  i=0
  while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ "$i" -gt 500 ] && fail "no eth0"
    usleep 10000
  done
  ip addr add "$address" dev eth0 || fail "address eth0"
  ip link set eth0 up || fail "bring eth0 up"
  ip route add default via "$gateway" || fail "route via $gateway"
  rm -f /newroot/etc/resolv.conf
  echo "nameserver $gateway" > /newroot/etc/resolv.conf || fail "write resolv.conf"
  say "network up"
fi
[ -n "$next" ] || fail "no wrenn.init= on the kernel command line"
mount -t tmpfs -o mode=0755,nosuid,nodev run /newroot/run || fail "mount /run"
if [ -n "$envd_disk" ]; then
  mkdir -p /newroot/run/wrenn
  mount -t ext4 -o ro,noload "$envd_disk" /newroot/run/wrenn || fail "mount envd's disk"
fi
umount /proc /sys
mount --move /dev /newroot/dev || fail "move /dev"
mount -t proc proc /newroot/proc || fail "mount the guest's /proc"
mount -t sysfs sysfs /newroot/sys || fail "mount the guest's /sys"
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /newroot/dev/pts || fail "mount /dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev shm /newroot/dev/shm || fail "mount /dev/shm"
say "starting $next"
exec switch_root /newroot $next
"#;

/// Identifies what [`build`] puts in an initramfs besides the image's files (the init
/// script and the module list), for names of built initramfs files: a changed script
/// makes a new file instead of reusing an old one.
pub fn fingerprint() -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(INIT_SCRIPT.as_bytes());
    for module in GUEST_MODULES {
        hash.update(module.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

/// Module name as the kernel knows it (`-` and `_` are the same).
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The `depends=` list of a module file (its `.modinfo` strings).
fn depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"depends=";
    module
        .split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(KEY))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(canonical)
                .collect()
        })
        .unwrap_or_default()
}

/// Every `*.ko` under `modules_dir` by module name, relative to it.
fn index(modules_dir: &Path) -> io::Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![modules_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else if let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                let rel = path
                    .strip_prefix(modules_dir)
                    .unwrap_or(&path)
                    .to_path_buf();
                found.insert(canonical(stem), rel);
            }
        }
    }
    Ok(found)
}

/// The module files (relative to `modules_dir`) that load `wanted`, dependencies
/// first. A wanted module the kernel has built in (listed in `modules.builtin`) is
/// skipped; one that is neither is an error.
pub fn load_order(modules_dir: &Path, wanted: &[&str]) -> io::Result<Vec<PathBuf>> {
    let files = index(modules_dir)?;
    let builtin: HashSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
        .map(canonical)
        .collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        builtin: &HashSet<String>,
        modules_dir: &Path,
        seen: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> io::Result<()> {
        if !seen.insert(name.to_owned()) || builtin.contains(name) {
            return Ok(());
        }
        let rel = files.get(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "kernel module {name} is neither built in nor in {}",
                    modules_dir.display()
                ),
            )
        })?;
        let raw = fs::read(modules_dir.join(rel))?;
        for dep in depends(&raw) {
            visit(&dep, files, builtin, modules_dir, seen, order)?;
        }
        order.push(rel.clone());
        Ok(())
    }
    for name in wanted {
        visit(
            &canonical(name),
            &files,
            &builtin,
            modules_dir,
            &mut seen,
            &mut order,
        )?;
    }
    Ok(order)
}

/// Writes the initramfs (uncompressed `newc` cpio) to `out`: `busybox` (a static
/// binary) as `/bin/busybox`, the [`GUEST_MODULES`] of `modules_dir` in load order,
/// and [`INIT_SCRIPT`] as `/init`. Written to a temporary file and renamed.
pub fn build(modules_dir: &Path, busybox: &Path, out: &Path) -> io::Result<()> {
    let order = load_order(modules_dir, GUEST_MODULES)?;
    let tmp = out.with_extension("tmp");
    let file = io::BufWriter::new(fs::File::create(&tmp)?);
    let mut w = cpio::Writer::new(file);
    for dir in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "newroot",
        "proc",
        "sys",
    ] {
        w.dir(dir, 0o755)?;
    }
    w.file("bin/busybox", 0o755, &fs::read(busybox)?)?;
    let mut list = String::new();
    for (i, rel) in order.iter().enumerate() {
        let name = format!(
            "{i:02}-{}",
            rel.file_name().and_then(|n| n.to_str()).unwrap_or("m.ko")
        );
        w.file(
            &format!("lib/modules/{name}"),
            0o644,
            &fs::read(modules_dir.join(rel))?,
        )?;
        list.push_str(&name);
        list.push('\n');
    }
    w.file("etc/wrenn-modules", 0o644, list.as_bytes())?;
    w.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    w.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    fs::rename(&tmp, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(dir: &Path, rel: &str, depends: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut body = b"\x7fELF....".to_vec();
        body.extend_from_slice(format!("\0license=GPL\0depends={depends}\0name=x\0").as_bytes());
        fs::write(path, body).unwrap();
    }

    #[test]
    fn modules_load_after_their_dependencies_and_built_ins_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        module(d, "kernel/drivers/virtio/virtio.ko", "");
        module(d, "kernel/drivers/virtio/virtio_ring.ko", "virtio");
        module(
            d,
            "kernel/drivers/virtio/virtio_mmio.ko",
            "virtio,virtio_ring",
        );
        module(
            d,
            "kernel/drivers/block/virtio_blk.ko",
            "virtio,virtio_ring",
        );
        module(d, "kernel/drivers/net/net_failover.ko", "failover");
        module(d, "kernel/net/core/failover.ko", "");
        module(
            d,
            "kernel/drivers/net/virtio_net.ko",
            "net_failover,virtio,virtio_ring",
        );
        fs::write(d.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let order = load_order(d, &["virtio-mmio", "virtio_blk", "virtio_net", "ext4"]).unwrap();
        let names: Vec<String> = order
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "virtio",
                "virtio_ring",
                "virtio_mmio",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        let err = load_order(d, &["vsock"]).unwrap_err();
        assert!(crate::runtime::error_chain(&err).contains("vsock"), "{err}");
    }
}
