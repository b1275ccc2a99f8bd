//! The sandbox lifecycle: statuses, the transition table, and the [`Lifecycle`]
//! service that drives create / pause / resume / destroy / snapshot.

mod status;

pub use status::{HostStatus, SandboxStatus, UnknownStatus};
