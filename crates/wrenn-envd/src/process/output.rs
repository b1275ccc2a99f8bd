//! A process's output: one bounded replay buffer per stream, shared by every subscriber,
//! with back-pressure instead of loss.
//!
//! Each stream (stdout, stderr, pty) is a byte ring addressed by absolute offsets. A
//! subscriber (a Start or Connect stream) holds one cursor per stream. The ring keeps at
//! least the last `retain` bytes of each stream for replay, and never drops bytes a live
//! subscriber has not read yet: instead, the pump stops reading the pipe while a
//! subscriber is more than `retain` bytes behind, so a slow client slows the process
//! down (as a slow terminal would) rather than losing its output. With no subscriber the
//! process never waits, and only the last `retain` bytes per stream are kept. Memory per
//! process is therefore bounded by about `retain` plus one read per stream.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wrenn_proto::envd::v1::EndEvent;

use super::fdio::Reader;

/// Largest piece of output in one data event (the proto promises at most 32 KiB).
pub(crate) const MAX_EVENT_BYTES: usize = 32 * 1024;

/// After the process exited, a pump stops once its pipe has been silent this long
/// (output still held by surviving grandchildren is not waited for forever)...
const DRAIN_IDLE: Duration = Duration::from_millis(250);
/// ...or at the latest this long after the exit.
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// Which stream a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// Standard output of a pipe process.
    Stdout = 0,
    /// Standard error of a pipe process.
    Stderr = 1,
    /// The terminal of a PTY process.
    Pty = 2,
}

const KINDS: [StreamKind; 3] = [StreamKind::Stdout, StreamKind::Stderr, StreamKind::Pty];

/// What a subscriber receives next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    /// A piece of output.
    Data(StreamKind, Vec<u8>),
    /// The process ended; nothing follows.
    End(EndEvent),
}

#[derive(Debug, Default)]
struct Ring {
    buf: VecDeque<u8>,
    /// Absolute offset of `buf[0]`.
    start: u64,
}

impl Ring {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    fn copy(&self, from: u64, len: usize) -> Vec<u8> {
        let offset = (from - self.start) as usize;
        let (a, b) = self.buf.as_slices();
        let mut out = Vec::with_capacity(len);
        if offset < a.len() {
            let take = len.min(a.len() - offset);
            out.extend_from_slice(&a[offset..offset + take]);
            out.extend_from_slice(&b[..len - take]);
        } else {
            let offset = offset - a.len();
            out.extend_from_slice(&b[offset..offset + len]);
        }
        out
    }
}

#[derive(Debug, Default)]
struct State {
    rings: [Ring; 3],
    cursors: HashMap<u64, [u64; 3]>,
    next_id: u64,
    end: Option<EndEvent>,
}

impl State {
    fn min_cursor(&self, kind: usize) -> Option<u64> {
        self.cursors.values().map(|c| c[kind]).min()
    }
}

/// The shared output of one process.
#[derive(Debug)]
pub(crate) struct Output {
    retain: usize,
    state: Mutex<State>,
    /// Bumped when output is appended or the end is set.
    changed: watch::Sender<()>,
    /// Bumped when a subscriber advances or goes away.
    progress: watch::Sender<()>,
}

impl Output {
    /// An empty output that retains `retain` bytes per stream (at least one event).
    pub fn new(retain: usize) -> Arc<Self> {
        Arc::new(Self {
            retain: retain.max(MAX_EVENT_BYTES),
            state: Mutex::new(State::default()),
            changed: watch::channel(()).0,
            progress: watch::channel(()).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends output, trimming what no subscriber needs beyond the retained tail.
    pub fn append(&self, kind: StreamKind, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        {
            let mut state = self.lock();
            let k = kind as usize;
            let min_cursor = state.min_cursor(k);
            let ring = &mut state.rings[k];
            ring.buf.extend(data);
            let end = ring.end();
            let mut keep_from = end.saturating_sub(self.retain as u64);
            if let Some(min_cursor) = min_cursor {
                keep_from = keep_from.min(min_cursor);
            }
            if keep_from > ring.start {
                ring.buf.drain(..(keep_from - ring.start) as usize);
                ring.start = keep_from;
            }
        }
        self.changed.send_replace(());
    }

    /// Records the end of the process; subscribers get it after all output.
    pub fn finish(&self, end: EndEvent) {
        let mut state = self.lock();
        state.end = Some(end);
        for ring in &mut state.rings {
            ring.buf.shrink_to_fit();
        }
        drop(state);
        self.changed.send_replace(());
    }

    /// Waits until every subscriber is at most `retain` bytes behind on `kind`, so the
    /// next read cannot push out bytes someone still has to read.
    pub async fn wait_for_room(&self, kind: StreamKind) {
        loop {
            let mut progress = self.progress.subscribe();
            {
                let state = self.lock();
                let k = kind as usize;
                let end = state.rings[k].end();
                match state.min_cursor(k) {
                    Some(min) if end - min > self.retain as u64 => {}
                    _ => return,
                }
            }
            let _ = progress.changed().await;
        }
    }

    /// A new subscriber that starts at the oldest retained byte (`replay`) or at the
    /// current end of every stream.
    pub fn subscribe(self: &Arc<Self>, replay: bool) -> Subscription {
        let changed = self.changed.subscribe();
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let cursors = std::array::from_fn(|k| {
            if replay {
                state.rings[k].start
            } else {
                state.rings[k].end()
            }
        });
        state.cursors.insert(id, cursors);
        drop(state);
        Subscription {
            output: Arc::clone(self),
            id,
            changed,
            next_kind: 0,
            done: false,
        }
    }
}

/// One reader of an [`Output`]. Dropping it releases any back-pressure it caused.
#[derive(Debug)]
pub(crate) struct Subscription {
    output: Arc<Output>,
    id: u64,
    changed: watch::Receiver<()>,
    /// Round-robin start, so one busy stream cannot starve the other.
    next_kind: usize,
    done: bool,
}

impl Subscription {
    /// The next piece of output or the end; `None` after the end was delivered.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            self.changed.borrow_and_update();
            if self.done {
                return None;
            }
            if let Some(item) = self.try_next() {
                return Some(item);
            }
            if self.changed.changed().await.is_err() {
                return None;
            }
        }
    }

    fn try_next(&mut self) -> Option<Item> {
        let data = {
            let mut guard = self.output.lock();
            let state = &mut *guard;
            let cursors = state.cursors.get_mut(&self.id)?;
            let mut data = None;
            for i in 0..KINDS.len() {
                let k = (self.next_kind + i) % KINDS.len();
                let ring = &state.rings[k];
                let cursor = cursors[k].max(ring.start);
                if cursor < ring.end() {
                    let len = ((ring.end() - cursor) as usize).min(MAX_EVENT_BYTES);
                    data = Some(Item::Data(KINDS[k], ring.copy(cursor, len)));
                    cursors[k] = cursor + len as u64;
                    self.next_kind = (k + 1) % KINDS.len();
                    break;
                }
            }
            match data {
                Some(data) => data,
                None => {
                    let end = state.end.clone()?;
                    self.done = true;
                    return Some(Item::End(end));
                }
            }
        };
        self.output.progress.send_replace(());
        Some(data)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.output.lock().cursors.remove(&self.id);
        self.output.progress.send_replace(());
    }
}

/// Copies everything read from `source` into `output` as `kind` until end of file (or,
/// for a PTY, `EIO` once the terminal is closed). After `exited` is cancelled it also
/// stops when the source stays silent for a moment, so descendants that keep the pipe
/// open do not hold back the process's `end` event.
pub(crate) async fn pump(
    source: Reader,
    kind: StreamKind,
    output: Arc<Output>,
    exited: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_EVENT_BYTES];
    let mut exited_at: Option<Instant> = None;
    loop {
        output.wait_for_room(kind).await;
        let read = source.read(&mut buf);
        let result = match exited_at {
            None => tokio::select! {
                result = read => result,
                () = exited.cancelled() => {
                    exited_at = Some(Instant::now());
                    continue;
                }
            },
            Some(at) => {
                let deadline = (Instant::now() + DRAIN_IDLE).min(at + DRAIN_MAX);
                match tokio::time::timeout_at(deadline, read).await {
                    Ok(result) => result,
                    Err(_) => return,
                }
            }
        };
        match result {
            Ok(0) => return,
            Ok(n) => output.append(kind, &buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO: the PTY's last slave descriptor was closed.
            Err(err) if err.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                return;
            }
            Err(err) => {
                tracing::warn!(%err, ?kind, "reading process output failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end() -> EndEvent {
        EndEvent {
            exit_code: 0,
            exited: true,
            status: "exit status 0".into(),
            error: None,
        }
    }

    async fn drain(sub: &mut Subscription) -> (Vec<u8>, Option<EndEvent>) {
        let mut data = Vec::new();
        while let Some(item) = sub.next().await {
            match item {
                Item::Data(_, bytes) => data.extend(bytes),
                Item::End(end) => return (data, Some(end)),
            }
        }
        (data, None)
    }

    #[tokio::test]
    async fn replay_keeps_the_tail_and_the_end() {
        let output = Output::new(MAX_EVENT_BYTES);
        let chunk = vec![b'a'; 1000];
        for i in 0..100u8 {
            let mut c = chunk.clone();
            c[0] = i;
            output.append(StreamKind::Stdout, &c);
        }
        output.finish(end());
        let mut sub = output.subscribe(true);
        let (data, end_event) = drain(&mut sub).await;
        assert_eq!(data.len(), MAX_EVENT_BYTES);
        assert_eq!(*data.last().unwrap(), b'a');
        assert_eq!(end_event, Some(end()));
        assert!(sub.next().await.is_none());
    }

    #[tokio::test]
    async fn live_subscriber_loses_nothing_and_applies_back_pressure() {
        let output = Output::new(MAX_EVENT_BYTES);
        let mut sub = output.subscribe(true);
        let producer = {
            let output = Arc::clone(&output);
            tokio::spawn(async move {
                for i in 0..1000u32 {
                    output.wait_for_room(StreamKind::Stderr).await;
                    output.append(StreamKind::Stderr, &i.to_le_bytes().repeat(64));
                }
                output.finish(end());
            })
        };
        let (data, end_event) = drain(&mut sub).await;
        producer.await.unwrap();
        assert_eq!(data.len(), 1000 * 256);
        for (i, piece) in data.chunks(256).enumerate() {
            assert_eq!(&piece[..4], &(i as u32).to_le_bytes());
        }
        assert!(end_event.is_some());
    }

    #[tokio::test]
    async fn without_replay_a_subscriber_sees_only_new_output() {
        let output = Output::new(1024);
        output.append(StreamKind::Pty, b"old");
        let mut sub = output.subscribe(false);
        output.append(StreamKind::Pty, b"new");
        output.finish(end());
        let (data, _) = drain(&mut sub).await;
        assert_eq!(data, b"new");
    }
}
