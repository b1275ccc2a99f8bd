//! The control plane's integration tests (one binary, a module per area): the REST API
//! on SQLite (and Postgres/Redis where `WRENN_TEST_*_URL` say), host pool and monitor.

mod common;
mod data_plane;
mod event_consumer;

mod account_deletion;
mod api_admin;
mod api_audit;
mod api_auth;
mod api_builds;
mod api_channels;
mod api_events;
mod api_exec;
mod api_files;
mod api_hosts;
mod api_keys;
mod api_me;
mod api_pty;
mod api_snapshots;
mod api_teams;
mod host_monitor;
mod host_pool;
mod liveness_admission;
mod metrics;
mod outages;
mod redis_bus;
mod replicas;
mod system;
mod worker_leases;
