//! The VM layer the VM runtimes share (QEMU now, Firecracker next): how a capsule's
//! virtual machine boots from the image pipeline's kernel artefacts.
//!
//! - [`initramfs`]: the guest's first userspace, made from the image build's kernel
//!   modules and static busybox, written as a [`cpio`] archive: it loads the virtio
//!   modules, mounts the capsule's root disk and hands over to the program named on
//!   the kernel command line (`wrenn.init=`).
//! - [`disk`]: the capsule's root disk, a qcow2 overlay of the template's image as
//!   large as the capsule asks, grown by the guest at boot.
//! - [`qmp`]: a typed client of QEMU's machine protocol (pause, resume, memory
//!   snapshots through migration, quit).
//!
//! Still to come on this layer (issue 10): the TAP
//! device in the capsule's network namespace with the in-namespace NAT that gives every
//! guest the same address (so memory snapshots move between capsules), envd as the
//! guest's PID 1 reached over that network, and the QEMU runtime itself.

pub mod accel;
pub mod cpio;
pub mod disk;
pub mod initramfs;
pub mod qmp;
