//! The Redis Streams event bus: the shared conformance suite plus Redis-specific
//! behaviour (trimming, undecodable entries, an unreachable server), and events kept
//! through a Redis crash by the [`Publisher`].
//!
//! Needs `WRENN_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379`); without it the tests
//! are skipped, unless `WRENN_TEST_REQUIRE_SERVICES=1`, which makes them fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wrenn_core::events::conformance::stream_name;
use wrenn_core::events::{
    Event, EventBus, EventBusError, EventId, Publisher, SandboxEvent, SandboxEventKind,
};
use wrenn_core::id::{HostId, SandboxId};
use wrenn_cpserver::events::RedisBus;

const REDIS_URL_ENV: &str = "WRENN_TEST_REDIS_URL";

/// The Redis URL for tests; `None` = skip; panics when Redis is required but unset.
fn redis_url() -> Option<String> {
    match std::env::var(REDIS_URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        Some(url) => Some(url),
        None if wrenn_db::testing::require_services() => {
            panic!("{REDIS_URL_ENV} is not set but WRENN_TEST_REQUIRE_SERVICES=1")
        }
        None => {
            eprintln!("skipping redis event bus test: {REDIS_URL_ENV} is not set");
            None
        }
    }
}

async fn make() -> Option<Arc<dyn EventBus>> {
    let url = redis_url()?;
    let bus = RedisBus::connect(&url).await.expect("connect to redis");
    Some(Arc::new(bus))
}

wrenn_core::event_bus_conformance!(make());

/// A raw connection for writing entries the bus itself would never write.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

fn event(n: i64) -> Event {
    let mut e = SandboxEvent::new(SandboxEventKind::Started, SandboxId::new(), HostId::new());
    e.timestamp = n;
    Event::Sandbox(e)
}

fn stamps(got: &[wrenn_core::events::Delivery]) -> Vec<i64> {
    got.iter()
        .map(|d| match &d.event {
            Event::Sandbox(s) => s.timestamp,
            Event::Platform(p) => p.timestamp.timestamp(),
        })
        .collect()
}

async fn pending_count(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> i64 {
    // Summary form: [count, min, max, consumers]
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .expect("xpending");
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("unexpected XPENDING summary {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_stored_as_one_json_payload_field() {
    let Some(url) = redis_url() else { return };
    let bus = RedisBus::connect(&url).await.expect("connect");
    let s = stream_name();
    let ev = event(42);
    let id = bus.publish(&s, &ev).await.expect("publish");
    let mut conn = raw(&url).await;
    let fields: Vec<(String, String)> = {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(&s)
            .arg(&id.0)
            .arg(&id.0)
            .query_async(&mut conn)
            .await
            .expect("xrange");
        let redis::Value::Array(entries) = reply else {
            panic!("xrange reply")
        };
        let redis::Value::Array(entry) = &entries[0] else {
            panic!("entry")
        };
        let redis::Value::Array(kv) = &entry[1] else {
            panic!("fields")
        };
        kv.chunks(2)
            .map(|p| {
                let s = |v: &redis::Value| match v {
                    redis::Value::BulkString(b) => String::from_utf8(b.clone()).expect("utf8"),
                    other => panic!("field {other:?}"),
                };
                (s(&p[0]), s(&p[1]))
            })
            .collect()
    };
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].0, "payload");
    let decoded: Event = serde_json::from_str(&fields[0].1).expect("payload is the event's JSON");
    assert_eq!(decoded, ev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_max_len_trims_the_stream_and_claims_drop_trimmed_entries() {
    let Some(url) = redis_url() else { return };
    let bus = RedisBus::connect_with(&url, 10).await.expect("connect");
    assert_eq!(bus.max_len(), 10);
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    let first = bus.publish(&s, &event(0)).await.expect("publish");
    let got = bus
        .read_group(&s, "g", "dead", 1, Duration::ZERO)
        .await
        .expect("read");
    assert_eq!(
        got.len(),
        1,
        "the first entry is now pending on a dead consumer"
    );
    // Approximate trimming drops whole internal nodes (100 entries by default), so
    // publish well past one node.
    for n in 1..=350 {
        bus.publish(&s, &event(n)).await.expect("publish");
    }
    let mut conn = raw(&url).await;
    let len: i64 = redis::cmd("XLEN")
        .arg(&s)
        .query_async(&mut conn)
        .await
        .expect("xlen");
    assert!(len < 351, "the stream was not trimmed: {len} entries");
    assert!(len >= 10, "trimming keeps at least max_len entries: {len}");
    assert_eq!(pending_count(&mut conn, &s, "g").await, 1);

    // The trimmed pending entry is dropped by the claim, not delivered, not an error.
    let claimed = bus
        .claim_stale(&s, "g", "alive", Duration::ZERO, 10)
        .await
        .expect("claim");
    assert!(
        claimed.is_empty(),
        "trimmed entries cannot be claimed: {claimed:?}"
    );
    assert_eq!(pending_count(&mut conn, &s, "g").await, 0);

    // A tail read from a trimmed position continues with what is left, in order.
    let after = bus
        .read_after(&s, Some(&first), 1000, Duration::ZERO)
        .await
        .expect("tail");
    assert_eq!(after.len() as i64, len);
    let st = stamps(&after);
    assert_eq!(st.last(), Some(&350));
    assert!(st.windows(2).all(|w| w[0] + 1 == w[1]));
    assert_eq!(
        bus.last_id(&s).await.expect("last"),
        after.last().map(|d| d.id.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_is_skipped_acknowledged_and_does_not_wedge_the_group() {
    let Some(url) = redis_url() else { return };
    let bus = RedisBus::connect(&url).await.expect("connect");
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    let mut conn = raw(&url).await;
    let xadd = |field: &'static str, value: &'static str| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&s).arg("*").arg(field).arg(value);
        cmd
    };

    // A batch holding only undecodable entries reports them as a codec error …
    let _: String = xadd("payload", "{not json")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    let _: String = xadd("other", "no payload field")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    let err = bus.read_group(&s, "g", "c", 10, Duration::ZERO).await;
    assert!(matches!(err, Err(EventBusError::Codec(_))), "got {err:?}");
    // … acknowledges them, so they never come back through a claim …
    assert_eq!(pending_count(&mut conn, &s, "g").await, 0);
    assert!(
        bus.claim_stale(&s, "g", "c2", Duration::ZERO, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    // … and the consumer moves on to later entries.
    bus.publish(&s, &event(1)).await.expect("publish");
    let got = bus
        .read_group(&s, "g", "c", 10, Duration::ZERO)
        .await
        .expect("read");
    assert_eq!(stamps(&got), vec![1]);

    // A poison entry in the middle of a batch is skipped; its neighbours are delivered.
    let _: String = xadd("payload", "[1,2,3]")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    bus.publish(&s, &event(2)).await.expect("publish");
    let got = bus
        .read_group(&s, "g", "c", 10, Duration::ZERO)
        .await
        .expect("read");
    assert_eq!(stamps(&got), vec![2]);
    bus.ack(&s, "g", &[got[0].id.clone()]).await.expect("ack");
    assert_eq!(
        pending_count(&mut conn, &s, "g").await,
        1,
        "entry 1 is still unacked"
    );

    // Tail reads skip poison too, also when it is all they would see first.
    let before = bus.last_id(&s).await.expect("last").expect("some");
    let _: String = xadd("payload", "null")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    assert!(
        bus.read_after(&s, Some(&before), 10, Duration::ZERO)
            .await
            .expect("tail")
            .is_empty()
    );
    bus.publish(&s, &event(3)).await.expect("publish");
    let tail = bus
        .read_after(&s, Some(&before), 10, Duration::ZERO)
        .await
        .expect("tail");
    assert_eq!(stamps(&tail), vec![3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_left_pending_is_dropped_by_the_claim() {
    let Some(url) = redis_url() else { return };
    let bus = RedisBus::connect(&url).await.expect("connect");
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    let mut conn = raw(&url).await;
    let _: String = redis::cmd("XADD")
        .arg(&s)
        .arg("*")
        .arg("payload")
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    bus.publish(&s, &event(5)).await.expect("publish");
    // Another client (say, an older release) read both and died without acking.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("dead")
        .arg("STREAMS")
        .arg(&s)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("xreadgroup");
    assert_eq!(pending_count(&mut conn, &s, "g").await, 2);
    let claimed = bus
        .claim_stale(&s, "g", "alive", Duration::ZERO, 10)
        .await
        .expect("claim");
    assert_eq!(stamps(&claimed), vec![5]);
    assert_eq!(claimed[0].delivery_count, 2);
    assert_eq!(
        pending_count(&mut conn, &s, "g").await,
        1,
        "only the good entry stays pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_counts_grow_with_each_claim() {
    let Some(url) = redis_url() else { return };
    let bus = RedisBus::connect(&url).await.expect("connect");
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    bus.publish(&s, &event(1)).await.expect("publish");
    bus.read_group(&s, "g", "a", 10, Duration::ZERO)
        .await
        .expect("read");
    for expected in 2..=4 {
        let claimed = bus
            .claim_stale(&s, "g", "b", Duration::ZERO, 10)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].delivery_count, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_the_cursor_past_many_pending_entries() {
    let Some(url) = redis_url() else { return };
    let bus = RedisBus::connect(&url).await.expect("connect");
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    for n in 0..30 {
        bus.publish(&s, &event(n)).await.expect("publish");
    }
    let got = bus
        .read_group(&s, "g", "dead", 30, Duration::ZERO)
        .await
        .expect("read");
    assert_eq!(got.len(), 30);
    // Acknowledge most of them so the claim has to scan past acked gaps.
    let acked: Vec<_> = got.iter().take(25).map(|d| d.id.clone()).collect();
    assert_eq!(bus.ack(&s, "g", &acked).await.expect("ack"), 25);
    let first = bus
        .claim_stale(&s, "g", "alive", Duration::ZERO, 3)
        .await
        .expect("claim");
    assert_eq!(stamps(&first), vec![25, 26, 27]);
    let rest = bus
        .claim_stale(&s, "g", "alive", Duration::ZERO, 10)
        .await
        .expect("claim");
    assert_eq!(
        stamps(&rest),
        vec![25, 26, 27, 28, 29],
        "min_idle 0 re-claims everything pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_group_read_does_not_stall_publishers() {
    let Some(url) = redis_url() else { return };
    let bus = Arc::new(RedisBus::connect(&url).await.expect("connect"));
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    let other = stream_name();
    bus.create_group(&other, "g").await.expect("group");
    // Park a reader on another stream for a long time.
    let parked = {
        let (bus, other) = (bus.clone(), other.clone());
        tokio::spawn(async move {
            bus.read_group(&other, "g", "c", 1, Duration::from_secs(3))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for n in 0..20 {
        bus.publish(&s, &event(n)).await.expect("publish");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "publishing waited for the blocked reader: {:?}",
        started.elapsed()
    );
    let got = bus
        .read_group(&s, "g", "c", 100, Duration::ZERO)
        .await
        .expect("read");
    assert_eq!(got.len(), 20);
    parked.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_on_a_missing_group_is_no_group() {
    let Some(url) = redis_url() else { return };
    let bus = RedisBus::connect(&url).await.expect("connect");
    let s = stream_name();
    let id = bus.publish(&s, &event(1)).await.expect("publish");
    let err = bus.ack(&s, "nope", &[id]).await;
    assert!(
        matches!(err, Err(EventBusError::NoGroup { .. })),
        "got {err:?}"
    );
    let err = bus
        .read_group(&s, "nope", "c", 1, Duration::from_millis(50))
        .await;
    assert!(
        matches!(err, Err(EventBusError::NoGroup { .. })),
        "got {err:?}"
    );
    let err = bus.claim_stale(&s, "nope", "c", Duration::ZERO, 1).await;
    assert!(
        matches!(err, Err(EventBusError::NoGroup { .. })),
        "got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_are_invalid_id() {
    let Some(url) = redis_url() else { return };
    let bus = RedisBus::connect(&url).await.expect("connect");
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    let bad = wrenn_core::events::EventId("not-an-id".into());
    let err = bus.ack(&s, "g", std::slice::from_ref(&bad)).await;
    assert!(
        matches!(err, Err(EventBusError::InvalidId(_))),
        "got {err:?}"
    );
    let err = bus.read_after(&s, Some(&bad), 1, Duration::ZERO).await;
    assert!(
        matches!(err, Err(EventBusError::InvalidId(_))),
        "got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable() {
    // Needs no Redis: nothing listens on port 1.
    let started = Instant::now();
    let err = RedisBus::connect("redis://127.0.0.1:1").await;
    assert!(
        matches!(err, Err(EventBusError::Unavailable(_))),
        "got {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let err = RedisBus::connect("not a url").await;
    assert!(
        matches!(err, Err(EventBusError::Unavailable(_))),
        "got {err:?}"
    );
}

/// A `redis-server` of the test's own on a free loopback port (append-only file on,
/// as in production), killed when dropped.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Started, or `None` (the test is skipped) without a `redis-server` binary
    /// unless services are required.
    async fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut own = Self {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        match own.run().await {
            Ok(()) => Some(own),
            Err(e) if !wrenn_db::testing::require_services() => {
                eprintln!("skipped: cannot run redis-server ({e})");
                None
            }
            Err(e) => panic!("cannot run redis-server: {e}"),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and files) and waits for it.
    async fn run(&mut self) -> std::io::Result<()> {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "yes", "--dir"])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        for _ in 0..100 {
            if let Ok(mut conn) = redis::Client::open(self.url())
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(std::io::Error::other("redis-server did not answer"))
    }

    /// Kills the server as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_redis_is_down_reach_the_stream_in_order_once_it_is_back() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&redis.url()).await.expect("connect"));
    let tasks = tokio_util::task::TaskTracker::new();
    let publisher = Publisher::new(bus, tasks.clone());
    let stream = stream_name();
    publisher.publish(&stream, event(1)).await;
    assert_eq!(
        publisher.backlog(),
        0,
        "published at once while Redis answers"
    );

    redis.kill();
    for n in 2..=4 {
        publisher.publish(&stream, event(n)).await;
    }
    assert_eq!(publisher.backlog(), 3, "kept while Redis is down");

    redis.run().await.expect("restart redis-server");
    tasks.close();
    tokio::time::timeout(Duration::from_secs(30), tasks.wait())
        .await
        .expect("the backlog is published once Redis answers");
    assert_eq!(publisher.backlog(), 0);
    publisher.publish(&stream, event(5)).await;

    let reader = RedisBus::connect(&redis.url()).await.expect("connect");
    let got = reader
        .read_after(&stream, Some(&EventId("0-0".into())), 100, Duration::ZERO)
        .await
        .expect("read the stream");
    assert_eq!(stamps(&got), vec![1, 2, 3, 4, 5]);
}
