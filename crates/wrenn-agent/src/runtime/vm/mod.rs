//! The VM layer the VM runtimes share (QEMU now, Firecracker next): how a capsule's
//! virtual machine boots from the image pipeline's kernel artefacts.
//!
//! - [`initramfs`]: the guest's first userspace, made from the image build's kernel
//!   modules and static busybox, written as a [`cpio`] archive: it loads the virtio
//!   modules, mounts the capsule's root disk and hands over to the program named on
//!   the kernel command line (`wrenn.init=`).
//! - [`disk`]: the capsule's root disk, a qcow2 overlay of the template's image as
//!   large as the capsule asks, grown by the guest at boot.
//! - [`capsule`]: what the VM runtimes do alike with a capsule's files (templates,
//!   hibernation, usage).
//! - [`guest`]: what every guest runs besides the kernel (the initramfs and envd's
//!   read-only disk, made once per agent) and the guest chores both runtimes share.
//! - [`qmp`]: a typed client of QEMU's machine protocol (pause, resume, memory
//!   snapshots through migration, quit).
//! - [`accel`]: whether KVM boots guests on this host.
//!
//! The TAP device and the in-namespace NAT that give every guest the same address
//! (so memory snapshots move between capsules) are the network's
//! ([`crate::network::tap`]).

pub mod accel;
pub mod capsule;
pub mod cpio;
pub mod disk;
pub mod guest;
pub mod initramfs;
pub mod qmp;
