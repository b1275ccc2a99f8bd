//! wrenn-core's integration tests (one binary, a module per area): the lifecycle
//! service, the scheduler and the in-process event bus.

mod support;

mod event_bus;
mod lifecycle;
mod scheduler;
