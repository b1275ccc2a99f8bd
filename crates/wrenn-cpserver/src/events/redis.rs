//! Redis Streams implementation of the [`EventBus`].
//!
//! Every core event stream is one Redis stream. Each entry has exactly one field,
//! `payload`, holding the serde JSON of the [`Event`]. The mapping of the trait onto
//! Redis commands:
//!
//! | trait call | Redis |
//! |---|---|
//! | `publish` | `XADD s MAXLEN ~ <max_len> * payload <json>` |
//! | `create_group` | `XGROUP CREATE s g $ MKSTREAM` (`BUSYGROUP` = already there, fine) |
//! | `read_group` | `XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS s >` |
//! | `ack` | `XACK s g id…` |
//! | `claim_stale` | `XAUTOCLAIM s g c <min_idle> <cursor> COUNT n` (looping the cursor), then `XPENDING` for the delivery counts |
//! | `read_after` | `XREAD COUNT n [BLOCK ms] STREAMS s <id>` (`None` = the current last id, read first) |
//! | `last_id` | `XREVRANGE s + - COUNT 1` |
//!
//! A zero `block` never sends `BLOCK` (Redis would read `BLOCK 0` as "forever").
//! Non-blocking commands share one [`ConnectionManager`] (multiplexed, reconnecting);
//! every blocking read runs on a connection of its own, taken from a small idle pool,
//! so a consumer parked in `XREADGROUP … BLOCK` never delays a publisher.
//!
//! # Undecodable entries ("poison")
//!
//! An entry whose `payload` is missing or is not a JSON [`Event`] (written by a foreign
//! or buggy producer) is never handed to a caller and never blocks the entries behind
//! it. It is *skipped and reported*:
//! - group reads and claims acknowledge it, so it leaves the group's pending list for
//!   good (it would otherwise be claimed again forever), and log it at `error` level
//!   with its stream and id;
//! - if a group read or a claim found *only* such entries, it returns
//!   [`EventBusError::Codec`] naming them, so the caller sees the problem; the next call
//!   continues after them;
//! - tail reads (`read_after`) skip it, log it, and keep reading after it within the
//!   same call (returning an error there would leave the caller re-reading the same
//!   position forever).
//!
//! Entries trimmed away (by `MAXLEN`) while pending in a group are dropped by
//! `claim_stale`, exactly as `XAUTOCLAIM` reports them.
//!
//! Connection failures and unexpected server replies are [`EventBusError::Unavailable`];
//! a missing consumer group is [`EventBusError::NoGroup`]; a malformed id given by the
//! caller is [`EventBusError::InvalidId`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Value};
use tokio::time::Instant;
use wrenn_core::events::{DEFAULT_MAX_LEN, Delivery, Event, EventBus, EventBusError, EventId};

/// Name of the single field of every stream entry.
pub const PAYLOAD_FIELD: &str = "payload";

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a non-blocking command may take to answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a blocking read is given over its `BLOCK` before the client gives up.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);
/// Idle blocking-read connections kept for reuse.
const MAX_IDLE_BLOCKING: usize = 8;
/// Reconnection attempts of the shared connection before a command fails.
const RECONNECT_RETRIES: usize = 3;

/// [`EventBus`] on Redis Streams (see the module docs for the command mapping and the
/// handling of undecodable entries). Cheap to share behind an `Arc`.
pub struct RedisBus {
    client: redis::Client,
    commands: ConnectionManager,
    /// Idle dedicated connections for blocking reads.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    max_len: usize,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

/// One raw entry as Redis returned it.
struct RawEntry {
    id: String,
    /// The `payload` field, if present.
    payload: Option<Vec<u8>>,
}

/// What decoding a batch of raw entries produced.
struct Decoded {
    deliveries: Vec<Delivery>,
    /// Ids of entries that could not be decoded, with the reason.
    poison: Vec<(String, String)>,
    /// Id of the last entry of the batch (decodable or not).
    last: Option<String>,
}

fn unavailable(e: RedisError) -> EventBusError {
    EventBusError::Unavailable(e.to_string())
}

fn is_no_group(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

fn map_err<'a>(stream: &'a str, group: &'a str) -> impl Fn(RedisError) -> EventBusError + 'a {
    move |e| {
        if is_no_group(&e) {
            EventBusError::NoGroup {
                stream: stream.to_owned(),
                group: group.to_owned(),
            }
        } else {
            unavailable(e)
        }
    }
}

/// Whether a connection that produced `e` can still be used (the server answered).
fn connection_survives(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::Parse
    )
}

/// Milliseconds of `d`, at least 1 when `d` is non-zero (so a tiny block still blocks).
fn millis(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !d.is_zero() { 1 } else { ms }
}

/// Parses a stream id (`ms-seq` or `ms`) into its numeric parts.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    match id.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((id.parse().ok()?, 0)),
    }
}

/// Validates a caller-supplied id.
fn checked_id(id: &EventId) -> Result<&str, EventBusError> {
    parse_id(&id.0)
        .map(|_| id.0.as_str())
        .ok_or_else(|| EventBusError::InvalidId(id.0.clone()))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

fn unexpected(what: &str, v: &Value) -> EventBusError {
    EventBusError::Unavailable(format!("unexpected Redis reply to {what}: {v:?}"))
}

/// Parses one entry `[id, [field, value, …]]`. `Nil` (an entry deleted while pending,
/// as Redis 6.2 reports it) yields `None`.
fn parse_entry(v: Value) -> Result<Option<RawEntry>, EventBusError> {
    let items = match v {
        Value::Nil => return Ok(None),
        Value::Array(items) => items,
        other => return Err(unexpected("a stream entry", &other)),
    };
    let mut items = items.into_iter();
    let id = match items.next() {
        Some(v) => text(&v).ok_or_else(|| unexpected("a stream entry id", &v))?,
        None => {
            return Err(EventBusError::Unavailable(
                "empty stream entry in Redis reply".into(),
            ));
        }
    };
    let mut payload = None;
    match items.next() {
        None | Some(Value::Nil) => {}
        Some(Value::Array(fields)) => {
            let mut fields = fields.into_iter();
            while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                if text(&k).as_deref() == Some(PAYLOAD_FIELD) {
                    payload = bytes(v);
                }
            }
        }
        Some(Value::Map(pairs)) => {
            for (k, v) in pairs {
                if text(&k).as_deref() == Some(PAYLOAD_FIELD) {
                    payload = bytes(v);
                }
            }
        }
        Some(other) => return Err(unexpected("stream entry fields", &other)),
    }
    Ok(Some(RawEntry { id, payload }))
}

fn parse_entries(v: Value) -> Result<Vec<RawEntry>, EventBusError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => Ok(items
            .into_iter()
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect()),
        other => Err(unexpected("a list of stream entries", &other)),
    }
}

/// Parses an `XREAD`/`XREADGROUP` reply for a single stream (`Nil` = nothing).
fn parse_read_reply(v: Value) -> Result<Vec<RawEntry>, EventBusError> {
    let streams: Vec<Value> = match v {
        Value::Nil => return Ok(Vec::new()),
        // RESP2: [[name, entries], …]
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                other => Err(unexpected("XREAD", &other)),
            })
            .collect::<Result<_, _>>()?,
        // RESP3: {name: entries, …}
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        other => return Err(unexpected("XREAD", &other)),
    };
    let mut out = Vec::new();
    for entries in streams {
        out.extend(parse_entries(entries)?);
    }
    Ok(out)
}

/// Decodes raw entries; `delivery_count` is set on every delivery.
fn decode(entries: Vec<RawEntry>, delivery_count: u32) -> Decoded {
    let mut out = Decoded {
        deliveries: Vec::with_capacity(entries.len()),
        poison: Vec::new(),
        last: None,
    };
    for RawEntry { id, payload } in entries {
        out.last = Some(id.clone());
        match payload {
            None => out.poison.push((id, format!("no {PAYLOAD_FIELD:?} field"))),
            Some(bytes) => match serde_json::from_slice::<Event>(&bytes) {
                Ok(event) => out.deliveries.push(Delivery {
                    id: EventId(id),
                    event,
                    delivery_count,
                }),
                Err(e) => out.poison.push((id, e.to_string())),
            },
        }
    }
    out
}

fn report_poison(stream: &str, poison: &[(String, String)]) {
    for (id, reason) in poison {
        tracing::error!(stream, event_id = %id, reason = %reason, "skipping undecodable event bus entry");
    }
}

fn codec_error(stream: &str, poison: &[(String, String)]) -> EventBusError {
    let list = poison
        .iter()
        .map(|(id, reason)| format!("{id} ({reason})"))
        .collect::<Vec<_>>()
        .join(", ");
    EventBusError::Codec(format!(
        "undecodable entries on stream {stream:?} skipped: {list}"
    ))
}

impl RedisBus {
    /// Connects to `url` (`redis://…` or `rediss://…`), keeping the default
    /// [`DEFAULT_MAX_LEN`] entries per stream. Fails with
    /// [`EventBusError::Unavailable`] when Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, EventBusError> {
        Self::connect_with(url, DEFAULT_MAX_LEN).await
    }

    /// Like [`RedisBus::connect`], keeping about `max_len` entries per stream (at least
    /// 1). Trimming is approximate (`MAXLEN ~`): Redis removes whole internal nodes, so
    /// a stream may hold somewhat more than `max_len` entries, never fewer.
    pub async fn connect_with(url: &str, max_len: usize) -> Result<Self, EventBusError> {
        let client = redis::Client::open(url)
            .map_err(|e| EventBusError::Unavailable(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(Duration::from_secs(2));
        let commands = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| EventBusError::Unavailable(format!("cannot connect to Redis: {e}")))?;
        Ok(Self {
            client,
            commands,
            blocking: Mutex::new(Vec::new()),
            max_len: max_len.max(1),
        })
    }

    /// The approximate number of entries each stream keeps.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Runs a non-blocking command on the shared connection.
    async fn query(&self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let mut conn = self.commands.clone();
        cmd.query_async(&mut conn).await
    }

    fn take_idle(&self) -> Option<MultiplexedConnection> {
        self.blocking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
    }

    fn put_idle(&self, conn: MultiplexedConnection) {
        let mut idle = self.blocking.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_BLOCKING {
            idle.push(conn);
        }
    }

    async fn fresh_blocking(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Runs a command carrying `BLOCK` on a dedicated connection. A pooled connection
    /// that turns out to be broken is replaced once by a fresh one.
    async fn query_blocking(&self, cmd: &redis::Cmd, block: Duration) -> Result<Value, RedisError> {
        let timeout = block.saturating_add(BLOCK_MARGIN);
        if let Some(mut conn) = self.take_idle() {
            conn.set_response_timeout(timeout);
            match cmd.query_async::<Value>(&mut conn).await {
                Ok(v) => {
                    self.put_idle(conn);
                    return Ok(v);
                }
                Err(e) if connection_survives(&e) => {
                    self.put_idle(conn);
                    return Err(e);
                }
                // A stale pooled connection (e.g. Redis restarted): retry on a new one.
                Err(_) => {}
            }
        }
        let mut conn = self.fresh_blocking().await?;
        conn.set_response_timeout(timeout);
        let res = cmd.query_async::<Value>(&mut conn).await;
        match &res {
            Ok(_) => self.put_idle(conn),
            Err(e) if connection_survives(e) => self.put_idle(conn),
            Err(_) => {}
        }
        res
    }

    /// Runs `cmd`, blocking-capable when `block` is non-zero.
    async fn read(&self, cmd: &redis::Cmd, block: Duration) -> Result<Value, RedisError> {
        if block.is_zero() {
            self.query(cmd).await
        } else {
            self.query_blocking(cmd, block).await
        }
    }

    /// Fails with NoGroup unless `group` exists on `stream`.
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), EventBusError> {
        let no_group = || EventBusError::NoGroup {
            stream: stream.to_owned(),
            group: group.to_owned(),
        };
        let reply = match self
            .query(redis::cmd("XINFO").arg("GROUPS").arg(stream))
            .await
        {
            Ok(v) => v,
            // "ERR no such key"
            Err(e) if matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension) => {
                return Err(no_group());
            }
            Err(e) => return Err(unavailable(e)),
        };
        let groups = match reply {
            Value::Array(groups) => groups,
            other => return Err(unexpected("XINFO GROUPS", &other)),
        };
        let named = |g: Value| -> Option<String> {
            match g {
                Value::Array(kv) => kv
                    .chunks(2)
                    .find(|p| text(&p[0]).as_deref() == Some("name"))
                    .and_then(|p| p.get(1).and_then(text)),
                Value::Map(pairs) => pairs
                    .into_iter()
                    .find(|(k, _)| text(k).as_deref() == Some("name"))
                    .and_then(|(_, v)| text(&v)),
                _ => None,
            }
        };
        if groups.into_iter().filter_map(named).any(|n| n == group) {
            Ok(())
        } else {
            Err(no_group())
        }
    }

    /// Acknowledges undecodable entries so they leave the pending list, and logs them.
    async fn drop_poison(
        &self,
        stream: &str,
        group: &str,
        poison: &[(String, String)],
    ) -> Result<(), EventBusError> {
        if poison.is_empty() {
            return Ok(());
        }
        report_poison(stream, poison);
        let mut cmd = redis::cmd("XACK");
        cmd.arg(stream).arg(group);
        for (id, _) in poison {
            cmd.arg(id);
        }
        self.query(&cmd).await.map_err(map_err(stream, group))?;
        Ok(())
    }

    /// The delivery counts of `ids`, pending on `consumer` (one pipelined `XPENDING`
    /// per id). Ids no longer pending are absent.
    async fn delivery_counts(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[&str],
    ) -> Result<HashMap<String, u32>, EventBusError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg(*id)
                .arg(*id)
                .arg(1)
                .arg(consumer);
        }
        let mut conn = self.commands.clone();
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(map_err(stream, group))?;
        let mut counts = HashMap::new();
        for reply in replies {
            let Value::Array(rows) = reply else { continue };
            for row in rows {
                let Value::Array(fields) = row else { continue };
                // [id, consumer, idle-ms, delivery-count]
                if let (Some(id), Some(Value::Int(count))) =
                    (fields.first().and_then(text), fields.get(3))
                {
                    counts.insert(id, u32::try_from(*count).unwrap_or(u32::MAX));
                }
            }
        }
        Ok(counts)
    }
}

#[async_trait::async_trait]
impl EventBus for RedisBus {
    #[tracing::instrument(level = "debug", skip_all, fields(stream = %stream))]
    async fn publish(&self, stream: &str, event: &Event) -> Result<EventId, EventBusError> {
        let json = serde_json::to_vec(event).map_err(|e| EventBusError::Codec(e.to_string()))?;
        let reply = self
            .query(
                redis::cmd("XADD")
                    .arg(stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.max_len)
                    .arg("*")
                    .arg(PAYLOAD_FIELD)
                    .arg(json),
            )
            .await
            .map_err(unavailable)?;
        text(&reply)
            .map(EventId)
            .ok_or_else(|| unexpected("XADD", &reply))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stream = %stream, group = %group))]
    async fn create_group(&self, stream: &str, group: &str) -> Result<(), EventBusError> {
        let res = self
            .query(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(group)
                    .arg("$")
                    .arg("MKSTREAM"),
            )
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stream = %stream, group = %group, consumer = %consumer))]
    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventBusError> {
        if max == 0 {
            self.ensure_group(stream, group).await?;
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(millis(block));
        }
        cmd.arg("STREAMS").arg(stream).arg(">");
        let reply = self
            .read(&cmd, block)
            .await
            .map_err(map_err(stream, group))?;
        let decoded = decode(parse_read_reply(reply)?, 1);
        self.drop_poison(stream, group, &decoded.poison).await?;
        if decoded.deliveries.is_empty() && !decoded.poison.is_empty() {
            return Err(codec_error(stream, &decoded.poison));
        }
        Ok(decoded.deliveries)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stream = %stream, group = %group))]
    async fn ack(&self, stream: &str, group: &str, ids: &[EventId]) -> Result<u64, EventBusError> {
        let ids = ids.iter().map(checked_id).collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            self.ensure_group(stream, group).await?;
            return Ok(0);
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(stream).arg(group);
        for id in &ids {
            cmd.arg(*id);
        }
        let reply = self.query(&cmd).await.map_err(map_err(stream, group))?;
        let acked = match reply {
            Value::Int(n) => u64::try_from(n).unwrap_or(0),
            other => return Err(unexpected("XACK", &other)),
        };
        if acked == 0 {
            // XACK answers 0 for a missing group too; tell the two apart.
            self.ensure_group(stream, group).await?;
        }
        Ok(acked)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stream = %stream, group = %group, consumer = %consumer))]
    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, EventBusError> {
        if max == 0 {
            self.ensure_group(stream, group).await?;
            return Ok(Vec::new());
        }
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut cursor = "0-0".to_owned();
        let mut claimed: Vec<RawEntry> = Vec::new();
        loop {
            let want = max - claimed.len();
            let reply = self
                .query(
                    redis::cmd("XAUTOCLAIM")
                        .arg(stream)
                        .arg(group)
                        .arg(consumer)
                        .arg(min_idle_ms)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(want),
                )
                .await
                .map_err(map_err(stream, group))?;
            // [next-cursor, [entries…], [deleted-ids…] (Redis ≥ 7)]
            let Value::Array(parts) = reply else {
                return Err(unexpected("XAUTOCLAIM", &reply));
            };
            let mut parts = parts.into_iter();
            let next = parts.next().as_ref().and_then(text);
            let entries = parts.next().unwrap_or(Value::Nil);
            let Some(next) = next else {
                return Err(EventBusError::Unavailable(
                    "XAUTOCLAIM reply without a cursor".into(),
                ));
            };
            // Deleted (trimmed) ids are already removed from the pending list by Redis.
            claimed.extend(parse_entries(entries)?);
            if claimed.len() >= max || next == "0-0" || parse_id(&next).is_none() {
                break;
            }
            cursor = next;
        }
        claimed.truncate(max);
        let mut decoded = decode(claimed, 2);
        self.drop_poison(stream, group, &decoded.poison).await?;
        if decoded.deliveries.is_empty() {
            if decoded.poison.is_empty() {
                return Ok(Vec::new());
            }
            return Err(codec_error(stream, &decoded.poison));
        }
        let ids: Vec<&str> = decoded.deliveries.iter().map(|d| d.id.0.as_str()).collect();
        let counts = self.delivery_counts(stream, group, consumer, &ids).await?;
        for d in &mut decoded.deliveries {
            // A claim increments the count, so it is at least 2; if the entry was
            // acknowledged in the meantime, 2 is the best estimate left.
            d.delivery_count = counts.get(&d.id.0).copied().unwrap_or(2).max(2);
        }
        Ok(decoded.deliveries)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stream = %stream))]
    async fn read_after(
        &self,
        stream: &str,
        after: Option<&EventId>,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventBusError> {
        let mut position = match after {
            Some(id) => checked_id(id)?.to_owned(),
            None => self
                .last_id(stream)
                .await?
                .map_or_else(|| "0-0".to_owned(), |id| id.0),
        };
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now().checked_add(block);
        loop {
            let remaining = deadline.map_or(block, |d| d.saturating_duration_since(Instant::now()));
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(max);
            if !remaining.is_zero() {
                cmd.arg("BLOCK").arg(millis(remaining));
            }
            cmd.arg("STREAMS").arg(stream).arg(&position);
            let reply = self.read(&cmd, remaining).await.map_err(unavailable)?;
            let decoded = decode(parse_read_reply(reply)?, 0);
            report_poison(stream, &decoded.poison);
            match decoded.last {
                // Only undecodable entries: keep reading after them (without blocking
                // once the budget is spent, so the call always ends).
                Some(last) if decoded.deliveries.is_empty() => position = last,
                _ => return Ok(decoded.deliveries),
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stream = %stream))]
    async fn last_id(&self, stream: &str) -> Result<Option<EventId>, EventBusError> {
        let reply = self
            .query(
                redis::cmd("XREVRANGE")
                    .arg(stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await
            .map_err(unavailable)?;
        Ok(parse_entries(reply)?
            .into_iter()
            .next()
            .map(|e| EventId(e.id)))
    }
}
