//! The sandbox-event consumer as the other tasks of the process see it: its span is
//! entered only while it is polled, never while it waits.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wrenn_core::config::Config;
use wrenn_core::events::{Event, SANDBOX_STREAM, SandboxEvent, SandboxEventKind};
use wrenn_core::id::{HostId, SandboxId};
use wrenn_cpserver::Builder;
use wrenn_cpserver::workers::event_consumer::GROUP;
use wrenn_extension::{Extension, ServerContext, WorkerError};

/// An extension whose event hook says it has started, then waits to be released.
#[derive(Default)]
struct Gate {
    entered: Notify,
    release: Notify,
}

#[async_trait::async_trait]
impl Extension for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    async fn on_sandbox_event(
        &self,
        _ctx: &ServerContext,
        _event: &SandboxEvent,
    ) -> Result<(), WorkerError> {
        self.entered.notify_one();
        self.release.notified().await;
        Ok(())
    }
}

// One thread polls every task, the server's and this test's: a span the consumer left
// entered while it waits is the current span of whatever runs next on that thread (in
// `wrenn dev`, the in-process agent's operations, which then clone it by id as their
// parent while it closes elsewhere).
#[tokio::test(flavor = "current_thread")]
async fn a_consumer_waiting_on_a_hook_leaves_its_span_entered_nowhere() {
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let dir = tempfile::tempdir().unwrap();
    let wrenn_dir = dir.path().to_string_lossy().into_owned();
    let config = Config::from_lookup(|k| (k == "WRENN_DIR").then(|| wrenn_dir.clone())).unwrap();
    let gate = Arc::new(Gate::default());
    let server = Builder::new(config)
        .with_extension(gate.clone())
        .build()
        .await
        .unwrap();
    let ctx = server.context().clone();
    // The group exists before the event, so the consumer sees it whenever it starts.
    ctx.events
        .create_group(SANDBOX_STREAM, GROUP)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let served = tokio::spawn(server.serve(listener, async move { stop.cancelled().await }));

    let event = SandboxEvent::new(SandboxEventKind::Stopped, SandboxId::new(), HostId::new());
    ctx.events
        .publish(SANDBOX_STREAM, &Event::Sandbox(event))
        .await
        .unwrap();
    gate.entered.notified().await;

    let current = tracing::Span::current();
    assert!(
        current.is_none(),
        "while the consumer waits, other tasks run inside its span {:?}",
        current.metadata().map(|m| m.name())
    );

    gate.release.notify_one();
    shutdown.cancel();
    served.await.unwrap().unwrap();
}
