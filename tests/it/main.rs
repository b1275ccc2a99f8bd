//! The platform end to end (one binary, a module per area): the real `wrenn` binary,
//! agent crashes, liveness through `wrenn dev`, and the enterprise extension example.

mod agent_crash;
mod capsule_proxy;
mod dev;
mod e2e;
mod enterprise_extension;
mod liveness_e2e;
mod template_build;
mod tracing_e2e;
