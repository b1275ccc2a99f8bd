//! `GET /v1/events/stream`: the caller's team's capsule and template events as
//! Server-Sent Events.
//!
//! The payloads follow SDK 0.3.0's `SSEEvent` (`wrenn/models/_generated.py`):
//! `{event, outcome?, resource{id,type}, actor{type,id?,name?}, metadata?, sandbox?,
//! timestamp}` with `event` one of `connected`, `capsule.create`, `capsule.pause`,
//! `capsule.destroy`, `capsule.state.changed`, `template.snapshot.create`,
//! `template.snapshot.delete`. The platform event kinds map onto them:
//!
//! | platform event | SSE `event` |
//! |---|---|
//! | `capsule.created` | `capsule.create` (`outcome: success`) |
//! | `capsule.paused` | `capsule.pause` (`outcome: success`) |
//! | `capsule.destroyed` | `capsule.destroy` (`outcome: success`) |
//! | `capsule.running`, `capsule.hibernated`, `capsule.failed` | `capsule.state.changed` (`metadata.to`: `running`, `hibernated`, `error`) |
//! | `template.snapshot.created` / `.deleted` | `template.snapshot.create` / `.delete` (`outcome: success`) |
//!
//! Capsule events carry the capsule as it is when the event is sent (`sandbox`). The
//! first message is a `connected` sentinel without an id. Every other message's
//! `id:` is its position on the event bus: a client that reconnects with
//! `Last-Event-ID` receives what it missed (as far back as the bus keeps). A comment
//! line (`:keepalive`) is sent every 15 s of silence; the stream ends when the server
//! shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use chrono::Utc;
use futures::Stream;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::events::{
    Delivery, Event, EventId, PLATFORM_STREAM, PlatformEvent, PlatformEventKind,
};
use wrenn_core::id::{SandboxId, TeamId};
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext};

use super::capsules::Capsule;

/// OpenAPI tag of this route.
const TAG: &str = "events";
/// Silence after which a keep-alive comment is sent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long one bus read waits for new entries.
const READ_BLOCK: Duration = Duration::from_secs(10);
/// Entries fetched per bus read.
const READ_BATCH: usize = 100;

struct Tail {
    ctx: ServerContext,
    team: TeamId,
    cursor: EventId,
    pending: VecDeque<SseEvent>,
    connected: bool,
}

/// Whether `id` looks like a bus position (`<ms>-<seq>`).
fn valid_event_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let digits = |s: Option<&str>| {
        s.is_some_and(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
    };
    digits(parts.next()) && digits(parts.next())
}

/// The SSE `event` name, outcome and metadata of a platform event; `None` for events
/// this stream does not carry (hosts, channel tests).
fn sdk_kind(
    kind: PlatformEventKind,
) -> Option<(&'static str, Option<&'static str>, Option<&'static str>)> {
    use PlatformEventKind as K;
    Some(match kind {
        K::CapsuleCreated => ("capsule.create", Some("success"), None),
        K::CapsulePaused => ("capsule.pause", Some("success"), None),
        K::CapsuleDestroyed => ("capsule.destroy", Some("success"), None),
        K::CapsuleRunning => ("capsule.state.changed", None, Some("running")),
        K::CapsuleHibernated => ("capsule.state.changed", None, Some("hibernated")),
        K::CapsuleFailed => ("capsule.state.changed", None, Some("error")),
        K::SnapshotCreated => ("template.snapshot.create", Some("success"), None),
        K::SnapshotDeleted => ("template.snapshot.delete", Some("success"), None),
        K::HostUp | K::HostDown | K::ChannelTest => return None,
    })
}

/// The SSE payload of a platform event of `team`, if this stream carries it.
async fn payload(
    ctx: &ServerContext,
    team: TeamId,
    ev: &PlatformEvent,
) -> Option<(&'static str, Value)> {
    if ev.team_id != team {
        return None;
    }
    let (name, outcome, to) = sdk_kind(ev.event)?;
    let mut body = json!({
        "event": name,
        "resource": { "id": ev.resource.id, "type": ev.resource.kind },
        "actor": ev.actor,
        "timestamp": ev.timestamp,
    });
    if let Some(outcome) = outcome {
        body["outcome"] = json!(outcome);
    }
    if let Some(to) = to {
        body["metadata"] = json!({ "to": to });
    }
    if ev.resource.kind == "capsule"
        && let Ok(id) = ev.resource.id.parse::<SandboxId>()
        && let Ok(sb) = ctx.store.get_team_sandbox(team, id).await
    {
        body["sandbox"] = json!(Capsule::from(sb));
    }
    Some((name, body))
}

impl Tail {
    async fn accept(&mut self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            self.cursor = d.id.clone();
            let Event::Platform(ev) = &d.event else {
                continue;
            };
            if let Some((name, body)) = payload(&self.ctx, self.team, ev).await {
                self.pending.push_back(
                    SseEvent::default()
                        .id(d.id.0)
                        .event(name)
                        .data(body.to_string()),
                );
            }
        }
    }

    /// The next message, or `None` when the server shuts down.
    async fn next(&mut self) -> Option<SseEvent> {
        if !self.connected {
            self.connected = true;
            let hello = json!({ "event": "connected", "timestamp": Utc::now() });
            return Some(
                SseEvent::default()
                    .event("connected")
                    .data(hello.to_string()),
            );
        }
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            let shutdown = self.ctx.shutdown.clone();
            let bus = self.ctx.events.clone();
            let read = tokio::select! {
                r = bus.read_after(PLATFORM_STREAM, Some(&self.cursor), READ_BATCH, READ_BLOCK) => r,
                () = shutdown.cancelled() => return None,
            };
            match read {
                Ok(deliveries) => self.accept(deliveries).await,
                Err(e) => {
                    tracing::warn!(team_id = %self.team, error = %e, "event stream read failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }
}

/// Live capsule and template events of the caller's team (Server-Sent Events).
#[utoipa::path(get, path = "/v1/events/stream", tag = TAG,
    security(("api_key" = []), ("bearer" = [])),
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, content_type = "text/event-stream", description = "SSE: `data:` lines carry SDK `SSEEvent` JSON; `id:` is the resume position"),
        (status = 400), (status = 401)))]
async fn stream(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => {
            let v = v.to_str().map(str::trim).unwrap_or_default();
            if !valid_event_id(v) {
                return Err(ApiError::bad_request(
                    "Last-Event-ID must be an event id received from this stream",
                ));
            }
            Some(EventId(v.to_owned()))
        }
    };
    let cursor = match resume {
        Some(id) => id,
        None => ctx
            .events
            .last_id(PLATFORM_STREAM)
            .await
            .map_err(ApiError::internal)?
            .unwrap_or_else(|| EventId("0-0".into())),
    };
    tracing::info!(team_id = %auth.team_id, cursor = %cursor, "event stream opened");
    let tail = Tail {
        team: auth.team_id,
        ctx,
        cursor,
        pending: VecDeque::new(),
        connected: false,
    };
    let events = futures::stream::unfold(tail, |mut tail| async move {
        tail.next().await.map(|ev| (Ok(ev), tail))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keepalive")))
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids() {
        assert!(valid_event_id("0-12") && valid_event_id("1712345678901-0"));
        assert!(
            !valid_event_id("")
                && !valid_event_id("12")
                && !valid_event_id("a-1")
                && !valid_event_id("1-2-3")
        );
    }

    #[test]
    fn every_capsule_and_template_kind_maps_onto_an_sdk_event() {
        for k in PlatformEventKind::ALL {
            let carried = k.as_str().starts_with("capsule.") || k.as_str().starts_with("template.");
            assert_eq!(sdk_kind(k).is_some(), carried, "{}", k.as_str());
        }
    }
}
