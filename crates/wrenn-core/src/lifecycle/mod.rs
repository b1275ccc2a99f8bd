//! The sandbox lifecycle: statuses, the transition table, and the [`Lifecycle`]
//! service that drives create / pause / resume / destroy / snapshot.

mod fallback;
mod request;
mod service;
mod snapshot;
pub mod start_command;
mod status;
mod template_copies;

pub use fallback::Applied;
pub use request::{
    CreateSandbox, DEFAULT_DISK_SIZE_MB, DEFAULT_MEMORY_MB, DEFAULT_VCPUS, ResourceRequest,
};
pub use service::{Lifecycle, LifecycleError, MAX_CREATE_PLACEMENTS, Timeouts};
pub use snapshot::TemplateDefaults;
pub use status::{HostStatus, SandboxStatus, UnknownStatus};
