//! Serving the agent's router on a listener, HTTP/1.1 and HTTP/2 on one port, with the
//! HTTP/2 settings of [`wrenn_proto::transport`].
//!
//! `axum::serve` would do, but it keeps hyper's HTTP/2 defaults: 16 KiB frames and 1 MiB
//! windows, so every 256 KiB file chunk the control plane streams in crosses as sixteen
//! frames and waits on window updates. The accept loop here is axum's (one task per
//! connection, upgrades for the proxy's WebSockets, graceful shutdown that lets requests
//! in flight finish) with the builder configured as envd's server is.

use std::fmt::Debug;
use std::pin::pin;

use axum::Router;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use wrenn_proto::transport::{CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW};

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting, asks
/// every connection to finish gracefully and returns once they all have.
pub(crate) async fn serve<L>(mut listener: L, router: Router, stop: CancellationToken)
where
    L: Listener,
    L::Addr: Debug,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        // CONNECT is how HTTP/2 carries WebSockets (the proxy).
        .enable_connect_protocol();
    // Connections hold a receiver; shutdown drops the sender and waits for them to end.
    let (signal, _) = watch::channel(());
    let (close, closed) = watch::channel(());
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        tracing::trace!(?peer, "connection accepted");
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|req: hyper::Request<Incoming>| req.map(axum::body::Body::new)),
        );
        let builder = builder.clone();
        let mut shutdown = signal.subscribe();
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            let mut asked = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(error) = result {
                            tracing::trace!(?peer, error, "connection ended with an error");
                        }
                        break;
                    }
                    _ = shutdown.changed(), if !asked => {
                        asked = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(closed);
        });
    }
    drop(listener);
    drop(closed);
    // Dropping the sender wakes every connection's `changed()` with an error: shut down.
    drop(signal);
    close.closed().await;
}
