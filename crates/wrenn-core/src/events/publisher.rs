//! [`Publisher`]: publishing that outlives a bus outage.
//!
//! A lifecycle change is committed in the database before its event is published; if
//! the bus is unreachable at that moment (Redis restarting), dropping the event would
//! leave channels and SSE readers never told. The publisher keeps what the bus refused
//! as unavailable, in order, and publishes it once the bus answers again; callers never
//! wait out the outage. Events published while a backlog is pending queue behind it,
//! so each stream keeps this process's order.
//!
//! The backlog lives in this process: a control plane that dies during an outage
//! loses what it held (the host monitor still settles the capsules' statuses). A
//! graceful shutdown waits for it (the tasks of [`Lifecycle`](crate::lifecycle::Lifecycle)).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::{Event, EventBus, EventBusError};

/// Most events kept while the bus is unreachable; later ones are dropped (logged).
pub const MAX_BACKLOG: usize = 100_000;
/// First wait between tries of a refused event; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between tries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Publishes events on a bus, keeping those it refuses until it answers again.
/// Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Arc<dyn EventBus>,
    tasks: TaskTracker,
    backlog: Mutex<Backlog>,
}

#[derive(Default)]
struct Backlog {
    /// Refused events and those published after them, oldest first.
    queue: VecDeque<(String, Event)>,
    /// Whether a task is publishing the queue.
    flushing: bool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("backlog", &self.backlog())
            .finish()
    }
}

impl Publisher {
    /// A publisher on `bus` whose retry task runs on `tasks` (so that waiting for
    /// them waits for the backlog).
    pub fn new(bus: Arc<dyn EventBus>, tasks: TaskTracker) -> Self {
        Self {
            inner: Arc::new(Inner {
                bus,
                tasks,
                backlog: Mutex::new(Backlog::default()),
            }),
        }
    }

    /// Events waiting for the bus to answer again.
    pub fn backlog(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// Publishes `event` on `stream` now, or once the bus answers again if it is
    /// unreachable (or other events already wait for it). An event the bus cannot
    /// take at all (it does not encode) is logged and dropped.
    pub async fn publish(&self, stream: &str, event: Event) {
        {
            let mut backlog = self.inner.lock();
            if backlog.flushing {
                backlog.keep(stream, event);
                return;
            }
        }
        match self.inner.bus.publish(stream, &event).await {
            Ok(_) => {}
            Err(EventBusError::Unavailable(reason)) => {
                warn!(stream, %reason, "event bus unavailable: the event is kept until it answers");
                let mut backlog = self.inner.lock();
                backlog.keep(stream, event);
                if !backlog.flushing {
                    backlog.flushing = true;
                    let inner = self.inner.clone();
                    self.inner.tasks.spawn(flush(inner));
                }
            }
            Err(e) => error!(stream, error = %e, "event dropped: the bus cannot take it"),
        }
    }
}

impl Backlog {
    /// Queues `event` behind the others (dropped, logged, when the queue is full).
    fn keep(&mut self, stream: &str, event: Event) {
        if self.queue.len() >= MAX_BACKLOG {
            error!(
                stream,
                kept = MAX_BACKLOG,
                "event dropped: too many events wait for the bus"
            );
            return;
        }
        self.queue.push_back((stream.to_owned(), event));
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Publishes the backlog in order, waiting (with backoff) while the bus is
/// unreachable; ends when the backlog is empty.
async fn flush(inner: Arc<Inner>) {
    let mut delay = FIRST_RETRY_DELAY;
    let mut published = 0usize;
    loop {
        let next = {
            let mut backlog = inner.lock();
            let next = backlog.queue.front().cloned();
            backlog.flushing = next.is_some();
            next
        };
        let Some((stream, event)) = next else {
            return;
        };
        match inner.bus.publish(&stream, &event).await {
            Err(EventBusError::Unavailable(_)) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                continue;
            }
            Ok(_) => published += 1,
            Err(e) => error!(stream, error = %e, "event dropped: the bus cannot take it"),
        }
        delay = FIRST_RETRY_DELAY;
        let mut backlog = inner.lock();
        backlog.queue.pop_front();
        if backlog.queue.is_empty() {
            backlog.flushing = false;
            info!(
                published,
                "event bus answers again: the events kept meanwhile are published"
            );
            return;
        }
    }
}
