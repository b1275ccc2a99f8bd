//! The Wrenn host agent: runs the sandboxes of one host and serves `hostagent.v1` (plus
//! envd's `Process` and `Filesystem`, forwarded to the sandboxes).
//!
//! - [`server`]: [`Agent::start`](server::Agent::start) assembles everything and serves
//!   gRPC plus the port proxy on one listener; [`AgentHandle`]
//!   shuts it down gracefully (hibernating every sandbox).
//! - [`service`]: the tonic `HostAgentService` (lifecycle, snapshots, metrics) and the
//!   [`Forwarder`](service::Forwarder) that serves `envd.v1.Process` and
//!   `envd.v1.Filesystem` by forwarding each call to the sandbox it names.
//! - [`manager`]: [`SandboxManager`](manager::SandboxManager), the map of sandboxes with
//!   per-sandbox locks and the lifecycle state machine.
//! - [`reaper`]: inactivity auto-pause, hibernation of long-paused sandboxes, metrics
//!   sampling.
//! - [`events`]: sandbox-event callbacks to the control plane.
//! - [`registration`] and [`heartbeat`]: a standalone agent's identity with the
//!   control plane (register, credentials file, refresh) and its liveness reports;
//!   [`tls`]: mutual TLS on the listener of a registered agent.
//! - [`envd`]: clients of the guest agent inside each sandbox.
//! - [`proxy`] and [`conntrack`]: the HTTP port proxy and its per-sandbox connection
//!   tracking (drained before a pause).
//! - [`metrics`]: sample rings and host metrics; [`error`]: errors → gRPC codes.
//! - [`image`]: the image pipeline that builds the default template (a Debian tree,
//!   its ext4 image and kernel) and caches it.
//! - [`runtime`]: the [`Runtime`](runtime::Runtime) seam and the process runtime;
//!   [`init`]: the sandbox init step of the process runtime; [`network`]: capsule
//!   networking (namespaces, veth, firewall, DNS) shared by the runtimes.

pub mod conntrack;
pub mod disk;
pub mod envd;
pub mod error;
pub mod events;
pub mod exporter;
pub mod heartbeat;
mod idle;
pub mod image;
pub mod init;
pub mod manager;
pub mod metrics;
pub mod network;
pub mod proxy;
pub mod reaper;
pub mod registration;
pub mod runtime;
mod serve;
pub mod server;
pub mod service;
pub mod tls;

pub use server::{Agent, AgentHandle, AgentOptions};
