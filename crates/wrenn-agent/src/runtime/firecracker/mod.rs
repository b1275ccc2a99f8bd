//! The Firecracker runtime's foundation (issue 11): capsules as Firecracker microVMs
//! on the shared [VM layer](super::vm). This slice has the pieces a runtime drives:
//!
//! - [`api`]: the request and response bodies of Firecracker's API that Wrenn uses
//!   (compatible with Firecracker v1.12 to v1.16).
//! - [`client`]: a typed client of that API over the VMM's unix socket; a refusal
//!   keeps Firecracker's status and `fault_message`.
//! - [`runtime`]: [`FirecrackerRuntime`], the [`Runtime`](super::Runtime) on them.
//! - [`machine`]: one capsule's VM on a VMM: boot with the capsule's files, save a
//!   memory snapshot (full, or a diff of what a restored VM wrote), load one (in any
//!   directory holding the same files), stop.
//! - [`diff`]: merging a diff snapshot's memory onto its base.
//! - [`vmm`]: one VMM process, started directly (inside the capsule's network
//!   namespace) or through the [`jailer`], its output forwarded into `tracing`, and
//!   stopped without leftovers.
//! - [`uffd`]: the userfaultfd page-fault handler a restoring VM's memory is served
//!   from (`snapshot/load` with the `Uffd` backend): pages copied from the memory file,
//!   holes as zero pages, nothing prefetched, stopped and cleaned up with the VM.
//!
//! Firecracker is not shipped with Wrenn: the runtime runs the binaries named by
//! `WRENN_FIRECRACKER_BIN` and `WRENN_JAILER_BIN`, else those on `PATH`.
//!
//! A capsule's VMM is configured in this order: logger and metrics, machine, boot
//! source, drives, network interface, MMDS configuration and contents, then
//! `InstanceStart` — or, for a memory snapshot, nothing but `PUT /snapshot/load`
//! (Firecracker refuses a load after any boot resource, and exits when a load fails).

pub mod api;
pub mod client;
pub mod diff;
pub mod jailer;
pub mod machine;
pub mod runtime;
pub mod uffd;
pub mod vmm;

pub use runtime::{FirecrackerRuntime, FirecrackerRuntimeOptions, KvmCheck};
