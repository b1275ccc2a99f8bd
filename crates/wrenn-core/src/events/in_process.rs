//! The embedded event bus: Redis-Streams semantics in process memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Delivery, Event, EventBus, EventBusError, EventId};

/// Default number of entries a stream keeps (older ones are trimmed, like `MAXLEN ~`).
pub const DEFAULT_MAX_LEN: usize = 50_000;

#[derive(Debug)]
struct Pending {
    consumer: String,
    delivered_at: Instant,
    count: u32,
}

#[derive(Debug, Default)]
struct Group {
    /// Highest sequence delivered to the group.
    last_delivered: u64,
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug, Default)]
struct Stream {
    entries: VecDeque<(u64, Event)>,
    next_seq: u64,
    groups: HashMap<String, Group>,
}

/// The entry with sequence `seq`, if it has not been trimmed (sequences are dense).
fn entry_at(entries: &VecDeque<(u64, Event)>, seq: u64) -> Option<&Event> {
    let first = entries.front()?.0;
    let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
    entries.get(idx).map(|(_, e)| e)
}

impl Stream {
    fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }
}

/// In-process [`EventBus`]. Cheap to share behind an `Arc`; all state is lost when
/// the process exits (which is why production uses Redis).
#[derive(Debug)]
pub struct InProcessBus {
    streams: Mutex<HashMap<String, Stream>>,
    notify: Notify,
    max_len: usize,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

fn id_of(seq: u64) -> EventId {
    EventId(format!("0-{seq}"))
}

fn seq_of(id: &EventId) -> Result<u64, EventBusError> {
    id.0.strip_prefix("0-")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| EventBusError::InvalidId(id.0.clone()))
}

impl InProcessBus {
    /// A bus keeping [`DEFAULT_MAX_LEN`] entries per stream.
    pub fn new() -> Self {
        Self::with_max_len(DEFAULT_MAX_LEN)
    }

    /// A bus keeping at most `max_len` entries per stream (at least 1).
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
            notify: Notify::new(),
            max_len: max_len.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stream>> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than losing the bus, so recover the guard.
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `attempt` until it yields entries or `block` elapses, waking on publish.
    async fn blocking<F>(
        &self,
        block: Duration,
        mut attempt: F,
    ) -> Result<Vec<Delivery>, EventBusError>
    where
        F: FnMut(&mut HashMap<String, Stream>) -> Result<Vec<Delivery>, EventBusError>,
    {
        let deadline = Instant::now() + block;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = attempt(&mut self.lock())?;
            if !got.is_empty() || Instant::now() >= deadline {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return attempt(&mut self.lock());
            }
        }
    }
}

#[async_trait::async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, stream: &str, event: &Event) -> Result<EventId, EventBusError> {
        let id = {
            let mut streams = self.lock();
            let s = streams.entry(stream.to_owned()).or_default();
            s.next_seq = s.next_seq.max(1);
            let seq = s.next_seq;
            s.next_seq += 1;
            s.entries.push_back((seq, event.clone()));
            while s.entries.len() > self.max_len {
                s.entries.pop_front();
            }
            id_of(seq)
        };
        self.notify.notify_waiters();
        Ok(id)
    }

    async fn create_group(&self, stream: &str, group: &str) -> Result<(), EventBusError> {
        let mut streams = self.lock();
        let s = streams.entry(stream.to_owned()).or_default();
        let last = s.last_seq();
        s.groups.entry(group.to_owned()).or_insert_with(|| Group {
            last_delivered: last,
            pending: BTreeMap::new(),
        });
        Ok(())
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventBusError> {
        self.blocking(block, |streams| {
            let no_group = || EventBusError::NoGroup {
                stream: stream.to_owned(),
                group: group.to_owned(),
            };
            let s = streams.get_mut(stream).ok_or_else(no_group)?;
            let Stream {
                entries, groups, ..
            } = s;
            let g = groups.get_mut(group).ok_or_else(no_group)?;
            let now = Instant::now();
            let mut out = Vec::new();
            for (seq, event) in entries.iter() {
                if out.len() >= max {
                    break;
                }
                if *seq <= g.last_delivered {
                    continue;
                }
                g.last_delivered = *seq;
                g.pending.insert(
                    *seq,
                    Pending {
                        consumer: consumer.to_owned(),
                        delivered_at: now,
                        count: 1,
                    },
                );
                out.push(Delivery {
                    id: id_of(*seq),
                    event: event.clone(),
                    delivery_count: 1,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[EventId]) -> Result<u64, EventBusError> {
        let seqs = ids.iter().map(seq_of).collect::<Result<Vec<_>, _>>()?;
        let mut streams = self.lock();
        let g = streams
            .get_mut(stream)
            .and_then(|s| s.groups.get_mut(group))
            .ok_or_else(|| EventBusError::NoGroup {
                stream: stream.to_owned(),
                group: group.to_owned(),
            })?;
        Ok(seqs
            .iter()
            .filter(|seq| g.pending.remove(seq).is_some())
            .count() as u64)
    }

    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, EventBusError> {
        let mut streams = self.lock();
        let no_group = || EventBusError::NoGroup {
            stream: stream.to_owned(),
            group: group.to_owned(),
        };
        let s = streams.get_mut(stream).ok_or_else(no_group)?;
        let Stream {
            entries, groups, ..
        } = s;
        let g = groups.get_mut(group).ok_or_else(no_group)?;
        let now = Instant::now();
        let mut out = Vec::new();
        let mut trimmed = Vec::new();
        for (seq, p) in g.pending.iter_mut() {
            if out.len() >= max {
                break;
            }
            if now.duration_since(p.delivered_at) < min_idle {
                continue;
            }
            match entry_at(entries, *seq) {
                Some(event) => {
                    p.consumer = consumer.to_owned();
                    p.delivered_at = now;
                    p.count += 1;
                    out.push(Delivery {
                        id: id_of(*seq),
                        event: event.clone(),
                        delivery_count: p.count,
                    });
                }
                // Trimmed away while pending: drop it, as XAUTOCLAIM does.
                None => trimmed.push(*seq),
            }
        }
        for seq in trimmed {
            g.pending.remove(&seq);
        }
        Ok(out)
    }

    async fn read_after(
        &self,
        stream: &str,
        after: Option<&EventId>,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventBusError> {
        let start = match after {
            Some(id) => seq_of(id)?,
            None => self.lock().get(stream).map_or(0, Stream::last_seq),
        };
        self.blocking(block, |streams| {
            Ok(streams
                .get(stream)
                .map(|s| {
                    s.entries
                        .iter()
                        .filter(|(seq, _)| *seq > start)
                        .take(max)
                        .map(|(seq, event)| Delivery {
                            id: id_of(*seq),
                            event: event.clone(),
                            delivery_count: 0,
                        })
                        .collect()
                })
                .unwrap_or_default())
        })
        .await
    }

    async fn last_id(&self, stream: &str) -> Result<Option<EventId>, EventBusError> {
        Ok(self
            .lock()
            .get(stream)
            .and_then(|s| s.entries.back().map(|(seq, _)| id_of(*seq))))
    }
}
