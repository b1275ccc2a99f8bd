//! The VM layer the VM runtimes share (QEMU now, Firecracker next): how a capsule's
//! virtual machine boots from the image pipeline's kernel artefacts.
//!
//! - [`initramfs`]: the guest's first userspace, made from the image build's kernel
//!   modules and static busybox, written as a [`cpio`] archive: it loads the virtio
//!   modules, mounts the capsule's root disk and hands over to the program named on
//!   the kernel command line (`wrenn.init=`).
//!
//! Still to come on this layer (issue 10): per-capsule copy-on-write disks, the TAP
//! device in the capsule's network namespace with the in-namespace NAT that gives every
//! guest the same address (so memory snapshots move between capsules), envd as the
//! guest's PID 1 reached over that network, and the QEMU runtime itself.

pub mod cpio;
pub mod initramfs;
