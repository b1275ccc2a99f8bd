//! The channel dispatcher: delivers the platform stream's events to the channels
//! subscribed to them.
//!
//! It reads [`PLATFORM_STREAM`] in the consumer group [`GROUP`] under a consumer name
//! of its own per replica (`cp-<uuid>`), so replicas share the work and each event
//! is handled by one of them. For an event it lists the team's channels subscribed
//! to the event type and delivers to each concurrently:
//!
//! - an attempt that fails transiently (`5xx`, `408`/`425`/`429`, timeout,
//!   connection failure) is retried after `retry_base`, doubling up to `retry_max`,
//!   for `max_attempts` attempts in all; a permanent failure (other answers, a
//!   refused target, an unusable config) ends at once;
//! - a delivery that failed for good becomes a **dead letter** (one row per channel
//!   and delivery, shown by `GET /v1/channels/{id}/dead-letters`);
//! - the event is acknowledged only once every channel's delivery succeeded or was
//!   dead-lettered. A dispatcher stopped (or killed) meanwhile leaves it pending;
//!   after `claim_after` a dispatcher claims it (`claim_stale`, XAUTOCLAIM on Redis)
//!   and delivers it again — at least once, with the same `X-Wrenn-Delivery` id.
//!
//! Nothing waits on a slow target for long: each attempt is bounded by
//! `delivery_timeout`; at most `concurrency` attempts run at once, and a delivery
//! waiting for its retry holds no slot; events are handled concurrently (up to
//! [`MAX_EVENTS_IN_FLIGHT`]), so one channel's retries never hold up other events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};
use wrenn_core::events::{
    Delivery, Event, EventBusError, EventId, PLATFORM_STREAM, PlatformEvent, PlatformEventKind,
};
use wrenn_core::model::{Channel, ChannelDeadLetter};
use wrenn_core::repo::RepoError;
use wrenn_extension::{ServerContext, Worker, WorkerError};

use super::delivery::{DeliveryError, WebhookPayload};
use super::{ChannelService, Provider, delivery_id};

/// Consumer group of the dispatcher on the platform stream.
pub const GROUP: &str = "wrenn-channels-v1";
/// Name of the worker.
pub const WORKER_NAME: &str = "channel-dispatcher";
/// Most events handled at once by one dispatcher.
pub const MAX_EVENTS_IN_FLIGHT: usize = 64;
/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries read or claimed at a time.
const BATCH: usize = 10;
/// Tries at listing an event's channels before the event is left for a later claim.
const LIST_TRIES: u32 = 3;

/// The dispatcher worker. Its consumer name is fixed for the life of the process, so
/// after a restart of the worker it claims back what it left pending.
pub fn worker() -> Worker {
    let consumer = format!("cp-{}", uuid::Uuid::new_v4().simple());
    Worker::new(WORKER_NAME, move |ctx, cancel| {
        let consumer = consumer.clone();
        async move { run(ctx, cancel, consumer).await }
    })
}

/// What the event tasks share.
struct Shared {
    ctx: ServerContext,
    service: ChannelService,
    /// Attempt slots (`concurrency`).
    attempts: Semaphore,
    /// Entries being handled by this dispatcher (a claim of one is skipped).
    in_flight: Mutex<HashSet<EventId>>,
}

impl Shared {
    /// Marks `id` as being handled; `false` if it already is.
    fn begin(&self, id: &EventId) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone())
    }

    fn end(&self, id: &EventId) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

async fn run(
    ctx: ServerContext,
    cancel: CancellationToken,
    consumer: String,
) -> Result<(), WorkerError> {
    let service = ChannelService::from_config(&ctx.config)?;
    ctx.events.create_group(PLATFORM_STREAM, GROUP).await?;
    let shared = Arc::new(Shared {
        attempts: Semaphore::new(service.config.concurrency),
        ctx,
        service,
        in_flight: Mutex::new(HashSet::new()),
    });
    let events = Arc::new(Semaphore::new(MAX_EVENTS_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let result = read_loop(&shared, &events, &mut tasks, &cancel, &consumer).await;
    // Deliveries still running are abandoned: their events stay pending and are
    // delivered again after a claim.
    tasks.shutdown().await;
    result
}

async fn read_loop(
    shared: &Arc<Shared>,
    events: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
    consumer: &str,
) -> Result<(), WorkerError> {
    let bus = shared.ctx.events.clone();
    let claim_after = shared.service.config.claim_after;
    loop {
        while tasks.try_join_next().is_some() {}
        if cancel.is_cancelled() {
            return Ok(());
        }
        let stale = tolerate_codec(
            bus.claim_stale(PLATFORM_STREAM, GROUP, consumer, claim_after, BATCH)
                .await,
        )?;
        let fresh = tokio::select! {
            r = bus.read_group(PLATFORM_STREAM, GROUP, consumer, BATCH, BLOCK) => tolerate_codec(r)?,
            _ = cancel.cancelled() => return Ok(()),
        };
        for delivery in stale.into_iter().chain(fresh) {
            if !shared.begin(&delivery.id) {
                continue;
            }
            let permit = tokio::select! {
                p = events.clone().acquire_owned() => p.ok(),
                _ = cancel.cancelled() => None,
            };
            let Some(permit) = permit else {
                shared.end(&delivery.id);
                return Ok(());
            };
            let span = tracing::info_span!("channel_event", entry = %delivery.id);
            tasks.spawn(handle_entry(shared.clone(), delivery, permit).instrument(span));
        }
    }
}

/// An undecodable entry was skipped (and acknowledged) by the bus: log it and go on.
fn tolerate_codec(r: Result<Vec<Delivery>, EventBusError>) -> Result<Vec<Delivery>, WorkerError> {
    match r {
        Ok(d) => Ok(d),
        Err(EventBusError::Codec(m)) => {
            warn!(error = %m, "skipped undecodable platform events");
            Ok(Vec::new())
        }
        Err(e) => Err(e.into()),
    }
}

async fn handle_entry(shared: Arc<Shared>, delivery: Delivery, permit: OwnedSemaphorePermit) {
    if settle(&shared, &delivery).await {
        if let Err(e) = shared
            .ctx
            .events
            .ack(PLATFORM_STREAM, GROUP, std::slice::from_ref(&delivery.id))
            .await
        {
            warn!(error = %e, "could not acknowledge a platform event; it will be delivered again");
        }
    }
    shared.end(&delivery.id);
    drop(permit);
}

/// Delivers one entry to every subscribed channel; `true` once each delivery
/// succeeded or was dead-lettered (the entry may then be acknowledged).
async fn settle(shared: &Shared, delivery: &Delivery) -> bool {
    let Event::Platform(event) = &delivery.event else {
        return true;
    };
    if event.event == PlatformEventKind::ChannelTest {
        // Tests are sent directly by the API, never through the stream.
        return true;
    }
    let span =
        tracing::info_span!("channels", team_id = %event.team_id, event = event.event.as_str());
    async {
        let mut tries = 0;
        let channels = loop {
            tries += 1;
            match shared
                .ctx
                .store
                .list_channels_for_event(event.team_id, event.event.as_str())
                .await
            {
                Ok(c) => break c,
                Err(e) if tries < LIST_TRIES => {
                    warn!(error = %e, "could not list channels; retrying");
                    tokio::time::sleep(shared.service.config.backoff(tries)).await;
                }
                Err(e) => {
                    warn!(error = %e, "could not list channels; the event will be claimed again later");
                    return false;
                }
            }
        };
        if channels.is_empty() {
            return true;
        }
        debug!(channels = channels.len(), "delivering");
        join_all(
            channels
                .iter()
                .map(|ch| deliver(shared, &delivery.id, event, ch)),
        )
        .await
        .into_iter()
        .all(|settled| settled)
    }
    .instrument(span)
    .await
}

/// Delivers `event` to `channel` with retries; `true` once delivered or
/// dead-lettered.
async fn deliver(
    shared: &Shared,
    entry: &EventId,
    event: &PlatformEvent,
    channel: &Channel,
) -> bool {
    let id = delivery_id(entry, channel.id, event);
    let span = tracing::info_span!(
        "channel_delivery",
        team_id = %channel.team_id,
        channel_id = %channel.id,
        delivery_id = %id,
        provider = %channel.provider,
    );
    async {
        let service = &shared.service;
        let prepared = channel
            .provider
            .parse::<Provider>()
            .map_err(DeliveryError::Config)
            .and_then(|p| {
                service
                    .cipher
                    .decrypt_config(&channel.config)
                    .map(|c| (p, c))
                    .map_err(|e| DeliveryError::Config(e.to_string()))
            });
        let (attempts, error) = match prepared {
            Err(e) => (0, e),
            Ok((provider, config)) => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let result = {
                        let _slot = shared.attempts.acquire().await.ok();
                        service.deliverer.send(provider, &config, event, id).await
                    };
                    match result {
                        Ok(status) => {
                            info!(attempt, status, "delivered");
                            return true;
                        }
                        Err(e) if e.is_retryable() && attempt < service.config.max_attempts => {
                            let wait = service.config.backoff(attempt);
                            info!(attempt, error = %e, retry_in = ?wait, "delivery failed; will retry");
                            tokio::time::sleep(wait).await;
                        }
                        Err(e) => break (attempt, e),
                    }
                }
            }
        };
        warn!(attempts, error = %error, "delivery failed for good; recording a dead letter");
        let dead = ChannelDeadLetter {
            id: uuid::Uuid::new_v4(),
            channel_id: channel.id,
            team_id: channel.team_id,
            delivery_id: id,
            event_type: event.event.as_str().to_owned(),
            payload: serde_json::to_value(WebhookPayload::new(event)).unwrap_or_default(),
            attempts,
            last_status: error.status(),
            error: error.to_string(),
            created_at: Utc::now(),
        };
        match shared.ctx.store.record_channel_dead_letter(dead).await {
            Ok(()) => true,
            // The channel was deleted meanwhile: nothing left to record it for.
            Err(RepoError::Invalid(_)) => true,
            Err(e) => {
                warn!(error = %e, "could not record the dead letter; the event will be delivered again");
                false
            }
        }
    }
    .instrument(span)
    .await
}
