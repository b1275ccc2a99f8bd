//! The control plane's callback endpoint: a stand-in recording the sandbox events it
//! receives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::PATIENCE;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use wrenn_core::id::SandboxId;

/// A received sandbox event: the `X-Host-Token` header and the JSON body.
#[derive(Debug, Clone)]
pub struct Received {
    pub host_token: Option<String>,
    pub body: serde_json::Value,
}

#[derive(Clone, Default)]
struct CpState {
    received: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
}

/// A real HTTP server on loopback standing in for `POST /v1/hosts/sandbox-events`.
pub struct FakeControlPlane {
    pub url: String,
    state: CpState,
    task: tokio::task::JoinHandle<()>,
}

impl FakeControlPlane {
    /// Starts it; the first `fail_first` requests get a 503.
    pub async fn start(fail_first: usize) -> Self {
        let state = CpState::default();
        state.fail_first.store(fail_first, Ordering::SeqCst);
        let app = axum::Router::new()
            .route(
                "/v1/hosts/sandbox-events",
                post(
                    |State(st): State<CpState>,
                     headers: HeaderMap,
                     Json(body): Json<serde_json::Value>| async move {
                        if st
                            .fail_first
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        st.received.lock().unwrap().push(Received {
                            host_token: headers
                                .get("x-host-token")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                            body,
                        });
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until an event of `kind` for `id` arrives.
    pub async fn wait_for(&self, kind: &str, id: SandboxId) -> Received {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(r) = self
                .received()
                .into_iter()
                .find(|r| r.body["event"] == kind && r.body["sandbox_id"] == id.to_string())
            {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} event for {id}; got {:?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}
