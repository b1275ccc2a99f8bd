//! The sandbox lifecycle: statuses, the transition table, and the [`Lifecycle`]
//! service that drives create / pause / resume / destroy / snapshot.

mod service;
mod status;

pub use service::{
    Applied, CreateSandbox, DEFAULT_DISK_SIZE_MB, DEFAULT_MEMORY_MB, DEFAULT_VCPUS, Lifecycle,
    LifecycleError, Timeouts,
};
pub use status::{HostStatus, SandboxStatus, UnknownStatus};
