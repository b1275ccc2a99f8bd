//! [`ConnTracker`]: counts a sandbox's in-flight proxy connections so a pause can drain
//! them.
//!
//! Every proxied request (and every upgraded WebSocket) holds a [`ConnGuard`] for as
//! long as it is in flight. Before a pause, [`ConnTracker::drain`] refuses new
//! connections and waits (with a grace period, 2 s by default) for the existing ones to
//! finish; if the pause then fails, [`ConnTracker::reset`] lets connections in again.
//!
//! Unlike the original's `sync.WaitGroup` (Obs-N3) there is no add-while-waiting race:
//! the count lives in a [`tokio::sync::watch`] channel and [`acquire`](ConnTracker::acquire)
//! re-checks the draining flag after incrementing, so either the acquirer sees the flag
//! or the drainer sees the connection. A drain that times out leaves nothing behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// In-flight proxy connections of one sandbox.
#[derive(Debug, Clone)]
pub struct ConnTracker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    draining: AtomicBool,
    count: watch::Sender<usize>,
}

/// One in-flight connection; dropping it releases the connection.
#[derive(Debug)]
pub struct ConnGuard {
    inner: Arc<Inner>,
}

impl Default for ConnTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnTracker {
    /// A tracker with no connections, accepting new ones.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                draining: AtomicBool::new(false),
                count: watch::Sender::new(0),
            }),
        }
    }

    /// Registers a new connection, or `None` while the tracker is draining.
    pub fn acquire(&self) -> Option<ConnGuard> {
        if self.inner.draining.load(Ordering::SeqCst) {
            return None;
        }
        self.inner.count.send_modify(|c| *c += 1);
        let guard = ConnGuard {
            inner: Arc::clone(&self.inner),
        };
        // A drain may have started between the check and the increment: back out, so
        // the drainer (which set the flag before looking at the count) is not kept
        // waiting by a connection that will never be served.
        if self.inner.draining.load(Ordering::SeqCst) {
            drop(guard);
            return None;
        }
        Some(guard)
    }

    /// Connections in flight.
    pub fn active(&self) -> usize {
        *self.inner.count.borrow()
    }

    /// True between [`drain`](Self::drain) and [`reset`](Self::reset).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Refuses new connections and waits up to `grace` for the in-flight ones to finish.
    /// Returns true if every connection finished in time. New connections stay refused
    /// until [`reset`](Self::reset), whatever the outcome.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.draining.store(true, Ordering::SeqCst);
        let mut rx = self.inner.count.subscribe();
        matches!(
            tokio::time::timeout(grace, rx.wait_for(|c| *c == 0)).await,
            Ok(Ok(_))
        )
    }

    /// Accepts new connections again (after a failed pause, or on resume).
    pub fn reset(&self) {
        self.inner.draining.store(false, Ordering::SeqCst);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.inner.count.send_modify(|c| *c = c.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_connections_and_reset_reopens() {
        let t = ConnTracker::new();
        let g1 = t.acquire().unwrap();
        let g2 = t.acquire().unwrap();
        assert_eq!(t.active(), 2);

        let t2 = t.clone();
        let drain = tokio::spawn(async move { t2.drain(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(t.is_draining());
        assert!(t.acquire().is_none(), "no new connection while draining");
        drop(g1);
        drop(g2);
        assert!(drain.await.unwrap(), "drained once both finished");

        t.reset();
        assert!(t.acquire().is_some());
        assert_eq!(t.active(), 0);
    }

    #[tokio::test]
    async fn drain_gives_up_after_the_grace() {
        let t = ConnTracker::new();
        let _g = t.acquire().unwrap();
        let start = std::time::Instant::now();
        assert!(!t.drain(Duration::from_millis(100)).await);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(t.active(), 1);
    }

    #[tokio::test]
    async fn drain_with_nothing_in_flight_is_immediate() {
        let t = ConnTracker::new();
        assert!(t.drain(Duration::from_secs(10)).await);
    }
}
