//! How a call into a sandbox reaches it through the host agent: the agent serves
//! `envd.v1`'s `Process` and `Filesystem` services next to `HostAgentService` and
//! forwards each call to the guest agent of the sandbox named by the
//! [`CAPSULE_ID_METADATA`] entry of the call's gRPC metadata.
//!
//! ```
//! use wrenn_proto::envd::v1::ListRequest;
//! use wrenn_proto::routing::{self, CAPSULE_ID_METADATA};
//!
//! let request = routing::to_capsule("cl-0123456789abcdefghijklmno", ListRequest {});
//! let id = request.metadata().get(CAPSULE_ID_METADATA).unwrap();
//! assert_eq!(id.to_str().unwrap(), "cl-0123456789abcdefghijklmno");
//! assert!(routing::capsule_id(request.metadata()).is_some());
//! assert!(!routing::kills_on_disconnect(request.metadata()));
//! let start = routing::killed_on_disconnect(request);
//! assert!(routing::kills_on_disconnect(start.metadata()));
//! ```

use tonic::metadata::{MetadataMap, MetadataValue};

/// Metadata entry naming the sandbox (`cl-...`) a forwarded `envd.v1` call is for.
pub const CAPSULE_ID_METADATA: &str = "wrenn-capsule-id";

/// Metadata entry of a `Process.Start` call saying what happens to the process when the
/// caller goes away before its `end` event: [`KILL`] kills it (SIGKILL to its process
/// group); absent, it keeps running (envd's own behaviour).
pub const ON_DISCONNECT_METADATA: &str = "wrenn-on-disconnect";

/// The [`ON_DISCONNECT_METADATA`] value that kills an abandoned process.
pub const KILL: &str = "kill";

/// HTTP header the host agent's port proxy (`/proxy/{id}/{port}/…`) sets on answers of
/// its own — unknown sandbox, not running, nothing listening — and strips from the
/// sandbox app's, so the control plane's proxy can tell the two apart.
pub const PROXY_ERROR_HEADER: &str = "x-wrenn-proxy-error";

/// `message` as a call routed to the sandbox `capsule_id`. An id that cannot be a
/// metadata value (it is never one the agent knows) is sent empty and refused there.
pub fn to_capsule<T>(capsule_id: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value =
        MetadataValue::try_from(capsule_id).unwrap_or_else(|_| MetadataValue::from_static(""));
    request.metadata_mut().insert(CAPSULE_ID_METADATA, value);
    request
}

/// `request` with its process killed when the caller goes away before the `end` event.
pub fn killed_on_disconnect<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert(ON_DISCONNECT_METADATA, MetadataValue::from_static(KILL));
    request
}

/// The sandbox id a call is routed to, if its metadata names one.
pub fn capsule_id(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(CAPSULE_ID_METADATA)?.to_str().ok()
}

/// True if a `Process.Start` call asks for its process to be killed on disconnect.
pub fn kills_on_disconnect(metadata: &MetadataMap) -> bool {
    metadata
        .get(ON_DISCONNECT_METADATA)
        .and_then(|v| v.to_str().ok())
        == Some(KILL)
}
