//! The REST API. Each module owns one resource and exposes `routes()`, an
//! [`OpenApiRouter`] whose handlers carry their own OpenAPI annotations, so the
//! document at `/openapi.json` is generated from the code that serves it.

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use wrenn_extension::ServerContext;

mod account;
mod admin;
pub(crate) mod admin_capsules;
mod api_keys;
mod audit;
mod auth;
mod builds;
mod capsule_access;
mod capsule_metrics;
mod capsules;
mod channels;
mod data_plane;
mod docs;
mod events_stream;
mod exec;
mod files;
mod health;
mod host_events;
mod hosts;
mod me;
mod processes;
mod pty;
mod snapshots;
mod teams;
mod users;

use docs::SecuritySchemes;

/// Tag names used to group operations in the OpenAPI document.
pub(crate) mod tags {
    pub const SYSTEM: &str = "system";
    pub const AUTH: &str = "auth";
    pub const ME: &str = "me";
    pub const USERS: &str = "users";
    pub const TEAMS: &str = "teams";
    pub const API_KEYS: &str = "api-keys";
    pub const AUDIT: &str = "audit";
    pub const ADMIN: &str = "admin";
    pub const CAPSULES: &str = "capsules";
    pub const HOSTS: &str = "hosts";
    pub const BUILDS: &str = "builds";
    pub const CHANNELS: &str = "channels";
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Wrenn API", description = "Isolated sandboxes (capsules) for AI agents and developers."),
    modifiers(&SecuritySchemes),
    tags(
        (name = tags::SYSTEM, description = "Health and API documentation"),
        (name = tags::AUTH, description = "Sign-up, activation, login, team switching, password reset"),
        (name = tags::ME, description = "The logged-in user's account"),
        (name = tags::USERS, description = "Finding users to add to a team"),
        (name = tags::TEAMS, description = "Teams and their members"),
        (name = tags::API_KEYS, description = "Team API keys"),
        (name = tags::AUDIT, description = "The team audit log"),
        (name = tags::ADMIN, description = "Platform administration"),
        (name = tags::CAPSULES, description = "Sandboxes: create, inspect, pause, resume, destroy"),
        (name = tags::BUILDS, description = "Team template builds"),
        (name = tags::CHANNELS, description = "Notification channels: webhooks and chat providers that receive the team's events"),
    )
)]
struct ApiDoc;

/// Every core route, with the OpenAPI document and Swagger UI.
pub fn router(
    ctx: &ServerContext,
    version: &str,
    channels: std::sync::Arc<crate::channels::ChannelService>,
) -> Router {
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::routes())
        .merge(auth::routes())
        .merge(me::routes())
        .merge(users::routes())
        .merge(teams::routes())
        .merge(api_keys::routes())
        .merge(channels::routes(channels))
        .merge(audit::routes())
        .merge(admin::routes())
        .merge(builds::routes())
        .merge(account::routes())
        .merge(capsules::routes())
        .merge(capsule_access::routes())
        .merge(exec::routes())
        .merge(processes::routes())
        .merge(files::routes())
        .merge(pty::routes())
        .merge(snapshots::routes())
        .merge(capsule_metrics::routes())
        .merge(events_stream::routes())
        .merge(host_events::routes())
        .merge(hosts::routes())
        .split_for_parts();
    openapi.info.version = version.to_owned();
    router.with_state(ctx.clone()).merge(docs::routes(openapi))
}
