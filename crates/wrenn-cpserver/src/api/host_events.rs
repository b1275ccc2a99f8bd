//! `POST /v1/hosts/sandbox-events`: a host agent reports a sandbox lifecycle outcome
//! (`auto_paused` from its idle reaper, `hibernated`, completions of lifecycle calls,
//! `failed` with the reason when a capsule's init or envd died or it could not be
//! re-adopted after an agent restart — the row then becomes `error` with the reason
//! under the metadata key `error`).
//!
//! The body is a `SandboxEvent` (`{event, sandbox_id, host_id, timestamp, error?,
//! host_ip?, metadata?, metrics?}`); it is checked and republished on the sandbox
//! stream, where the event consumer applies it with conditional updates. The handler
//! itself changes no sandbox row, so a late or duplicated report is harmless. The
//! resource samples an agent hands over when it stops sampling a sandbox (`metrics`:
//! tiers `ten_minutes`, `two_hours`, `day`) are stored here, duplicates ignored, and
//! left out of the republished event.

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use chrono::Utc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::{Actor, AuditEntry, AuditStatus};
use wrenn_core::events::{Event, SANDBOX_STREAM, SandboxEvent, SandboxEventKind};
use wrenn_core::repo::RepoError;
use wrenn_extension::{ApiError, ApiResult, HostAuth, ServerContext};

/// OpenAPI tag of this route.
const TAG: &str = "hosts";

/// Receives a sandbox event from a host agent (host token) and queues it.
#[utoipa::path(post, path = "/v1/hosts/sandbox-events", tag = TAG,
    security(("host_token" = [])),
    request_body(content = String, content_type = "application/json",
        description = "{event, sandbox_id, host_id, timestamp, error?, host_ip?, metadata?}; event is one of started, resumed, paused, auto_paused, hibernated, stopped, snapshotted, failed, pause_failed, resume_failed"),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 503)))]
async fn sandbox_event(
    State(ctx): State<ServerContext>,
    HostAuth(host): HostAuth,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let mut ev: SandboxEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid sandbox event: {e}")))?;
    if ev.host_id != host {
        return Err(ApiError::forbidden("host_id does not match the host token"));
    }
    if ev.timestamp <= 0 {
        ev.timestamp = Utc::now().timestamp();
    }
    // The team is taken from the row, never from the agent; a sandbox that belongs to
    // another host is refused (the consumer would ignore it anyway).
    ev.team_id = None;
    match ctx.store.get_sandbox(ev.sandbox_id).await {
        Ok(sb) if sb.host_id != host => {
            return Err(ApiError::forbidden(
                "the sandbox does not belong to this host",
            ));
        }
        Ok(sb) => ev.team_id = Some(sb.team_id),
        Err(RepoError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // Samples the agent handed over are kept here (a failure answers 5xx, so the
    // agent retries) and never travel on the stream.
    if let Some(history) = ev.metrics.take()
        && ev.team_id.is_some()
    {
        ctx.store
            .insert_metric_history(ev.sandbox_id, &history)
            .await?;
    }
    tracing::info!(host_id = %host, sandbox_id = %ev.sandbox_id, event = ev.event.as_str(), "sandbox event from host");
    ctx.events
        .publish(SANDBOX_STREAM, &Event::Sandbox(ev.clone()))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "events_unavailable",
                format!("could not queue the event: {e}"),
            )
        })?;
    if let Some(team) = ev.team_id {
        let action = match ev.event {
            SandboxEventKind::AutoPaused => Some("pause"),
            SandboxEventKind::Hibernated => Some("hibernate"),
            SandboxEventKind::Failed => Some("fail"),
            _ => None,
        };
        if let Some(action) = action {
            let mut meta = serde_json::json!({ "host_id": host.to_string() });
            if ev.event == SandboxEventKind::AutoPaused {
                meta["reason"] = serde_json::json!("ttl_expired");
            }
            if let Some(error) = &ev.error {
                meta["reason"] = serde_json::json!(error);
            }
            ctx.audit(
                AuditEntry::new(
                    team,
                    Actor::system(),
                    "sandbox",
                    Some(ev.sandbox_id.to_string()),
                    action,
                )
                .status(AuditStatus::Info)
                .metadata(meta),
            )
            .await;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(sandbox_event))
}
