//! Wrenn wire protocols, as protobuf definitions plus tonic/prost code generated at build
//! time with the pure-Rust compiler `protox` (no `protoc` is needed).
//!
//! Two protocols live here:
//!
//! - [`hostagent::v1`] (package `hostagent.v1`, service `HostAgentService`): the control
//!   plane drives a host agent. One agent runs per host and owns the sandboxes on it:
//!   lifecycle (create, destroy, pause, resume, hibernate, ping, list, pause-all,
//!   terminate), snapshot and template creation, and per-sandbox and per-host metrics.
//!   It runs over gRPC with mTLS in production and over a loopback channel in the
//!   embedded mode.
//! - [`envd::v1`] (package `envd.v1`, services `Process`, `Filesystem`, `System`,
//!   `Tunnel`): the guest agent `envd` that runs inside every sandbox and listens on TCP
//!   port [`ENVD_PORT`]. It spawns and controls processes (pipes or PTY, output streams
//!   with replay), streams files in chunks, reports health and metrics, and tunnels the
//!   host agent's port proxy to servers on the sandbox's loopback. The host agent
//!   serves `Process` and `Filesystem` too, forwarding each call to the sandbox its
//!   metadata names ([`routing`]): that is how the control plane runs commands and moves
//!   files, with no second declaration of envd's messages.
//!
//! Every message, field and RPC is documented in the `.proto` files under `proto/`,
//! including the gRPC status codes each RPC returns; those comments are the doc comments
//! of the generated types. Files always travel as streams of chunks of at most
//! [`FILE_CHUNK_SIZE`] bytes. [`FILE_DESCRIPTOR_SET`] holds the encoded descriptors of
//! both packages for servers that enable gRPC reflection.
//!
//! ```
//! use wrenn_proto::envd::v1::{ProcessSelector, process_selector::Selector};
//! use wrenn_proto::hostagent::v1::SandboxStatus;
//!
//! assert_eq!(SandboxStatus::Running.as_str_name(), "SANDBOX_STATUS_RUNNING");
//! let by_tag = ProcessSelector { selector: Some(Selector::Tag("web".into())) };
//! assert!(matches!(by_tag.selector, Some(Selector::Tag(ref t)) if t == "web"));
//! ```

#[cfg(feature = "domain")]
pub mod domain;
pub mod http_proxy;
pub mod routing;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod trace;

/// The host agent protocol (control plane to host agent).
pub mod hostagent {
    /// Version 1 of the host agent protocol: package `hostagent.v1`, service
    /// `HostAgentService` (server trait
    /// [`HostAgentService`](v1::host_agent_service_server::HostAgentService), client
    /// [`HostAgentServiceClient`](v1::host_agent_service_client::HostAgentServiceClient)).
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("hostagent.v1");
    }
}

/// The guest agent protocol (host agent to `envd` inside a sandbox).
pub mod envd {
    /// Version 1 of the guest agent protocol: package `envd.v1`, services `Process`
    /// ([`process_server::Process`](v1::process_server::Process)), `Filesystem`
    /// ([`filesystem_server::Filesystem`](v1::filesystem_server::Filesystem)), `System`
    /// ([`system_server::System`](v1::system_server::System)) and `Tunnel`
    /// ([`tunnel_server::Tunnel`](v1::tunnel_server::Tunnel)), with matching clients.
    ///
    /// The clients have no `connect(endpoint)` constructor: `Process.Connect` is an RPC,
    /// and its client method `connect` would collide with it. Build them from a channel
    /// instead, for example
    /// `ProcessClient::new(Endpoint::from_shared(url)?.connect().await?)`.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("envd.v1");
    }
}

/// Maximum size in bytes of one chunk of file content on any file stream of either
/// protocol (`WriteFile`/`ReadFile` of `envd.v1`, also when forwarded by the host agent):
/// 256 KiB. Senders never exceed it; receivers reject larger chunks with
/// `INVALID_ARGUMENT`.
pub const FILE_CHUNK_SIZE: usize = 256 * 1024;

/// Largest data of one `envd.v1.Tunnel` message: envd reads a tunnelled connection in
/// chunks of at most 64 KiB, and the host agent writes at most that much per message.
pub const TUNNEL_CHUNK_SIZE: usize = 64 * 1024;

/// TCP port the guest agent `envd` serves gRPC on inside every sandbox.
pub const ENVD_PORT: u16 = 49983;

/// gRPC metadata key that carries the guest agent's access token (set with
/// `System.Init`) on every `envd.v1` call except `System.Health`.
pub const ENVD_ACCESS_TOKEN_METADATA: &str = "x-access-token";

/// Encoded `google.protobuf.FileDescriptorSet` of every `.proto` file of both packages
/// (with their imports and source comments), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wrenn_descriptor.bin"));

/// HTTP/2 settings every client and server of either protocol uses, sized for file
/// streams of [`FILE_CHUNK_SIZE`] chunks: with h2's defaults (16 KiB frames, 64 KiB
/// windows on some peers) a 256 KiB chunk costs many frames and flow-control round
/// trips.
pub mod transport {
    /// Largest HTTP/2 frame a peer may send us (1 MiB: a chunk fits in one frame).
    pub const MAX_FRAME_SIZE: u32 = 1 << 20;
    /// Initial flow-control window of each stream (4 MiB: sixteen chunks in flight).
    pub const STREAM_WINDOW: u32 = 4 << 20;
    /// Initial flow-control window of each connection (8 MiB).
    pub const CONNECTION_WINDOW: u32 = 8 << 20;
}
