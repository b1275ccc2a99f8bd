//! Serving the four envd services on TCP, a unix socket, or an inherited socket.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};
use wrenn_proto::envd::v1::filesystem_server::FilesystemServer;
use wrenn_proto::envd::v1::process_server::ProcessServer;
use wrenn_proto::envd::v1::system_server::SystemServer;
use wrenn_proto::envd::v1::tunnel_server::TunnelServer;

use crate::fs::FilesystemService;
use crate::metrics::CpuSampler;
use crate::process::registry::Registry;
use crate::process::{ProcessLimits, ProcessService};
use crate::reaper;
use crate::state::Shared;
use crate::system::SystemService;
use crate::tunnel::TunnelService;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address; port 0 picks a free port. Inside VMs: `0.0.0.0:49983`.
    Tcp(SocketAddr),
    /// A unix socket path (an existing socket file there is replaced, and the file is
    /// removed at shutdown). Used by the process runtime.
    Unix(PathBuf),
    /// An already listening TCP or unix socket inherited as this descriptor number
    /// (socket activation, or a socket the host agent created outside the sandbox).
    Fd(i32),
}

/// Where a running server actually listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    /// A TCP address (with the real port when port 0 was asked for).
    Tcp(SocketAddr),
    /// A unix socket path (`None` for an unnamed inherited socket).
    Unix(Option<PathBuf>),
}

/// Configuration of one envd server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: Listen,
    /// The default user until `System.Init` sets one (`root`).
    pub default_user: String,
    /// Output retained per process and stream for replay on Connect (1 MiB).
    pub output_retain_bytes: usize,
    /// How long an exited process stays connectable (60 s).
    pub exited_retention: Duration,
    /// Idle time after which process streams send a keepalive event (15 s).
    pub keepalive_interval: Duration,
    /// How long shutdown waits for open calls before cutting them (5 s).
    pub shutdown_grace: Duration,
    /// Also reap orphaned processes (`waitpid(-1)`). Defaults to true exactly when
    /// envd is PID 1; see [`crate::reaper`].
    pub reap_orphans: bool,
    /// Set the system clock from Init's timestamp when it is more than a second off
    /// (inside a VM, whose clock stands still while it is paused or snapshotted).
    /// Default false.
    pub set_clock: bool,
}

impl ServerConfig {
    /// The defaults, listening on `listen`.
    pub fn new(listen: Listen) -> Self {
        Self {
            listen,
            default_user: "root".to_owned(),
            output_retain_bytes: 1024 * 1024,
            exited_retention: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(5),
            reap_orphans: std::process::id() == 1,
            set_clock: false,
        }
    }
}

impl Default for ServerConfig {
    /// `0.0.0.0:49983`, as inside a VM.
    fn default() -> Self {
        Self::new(Listen::Tcp(SocketAddr::from((
            [0, 0, 0, 0],
            wrenn_proto::ENVD_PORT,
        ))))
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {what}")]
    Listen {
        /// What was being bound.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
    /// The server task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(String),
}

/// A running server. Dropping the handle stops the server (like [`shutdown`]
/// without waiting) and kills the processes it started.
///
/// [`shutdown`]: ServerHandle::shutdown
#[derive(Debug)]
pub struct ServerHandle {
    addr: BoundAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    process: ProcessService,
}

impl ServerHandle {
    /// Where the server listens.
    pub fn local_addr(&self) -> &BoundAddr {
        &self.addr
    }

    /// A token that stops the server when cancelled (for signal handlers).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops the server: stop accepting, SIGKILL the process groups of live processes,
    /// let open calls finish for the shutdown grace, then return.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.stop.cancel();
        self.join().await
    }

    /// Waits until the server stops (after [`stop_token`](Self::stop_token) is
    /// cancelled, or on a fatal error).
    pub async fn wait(mut self) -> Result<(), ServeError> {
        self.join().await
    }

    async fn join(&mut self) -> Result<(), ServeError> {
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|err| ServeError::Task(err.to_string()))?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.task.is_some() {
            // Not shut down explicitly: the runtime may be going away with the server
            // task, so end envd's processes here rather than leave them behind.
            self.process.kill_all();
        }
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, Option<PathBuf>),
}

/// Binds the listener and starts serving `Process`, `Filesystem`, `System` and `Tunnel`.
/// Must be called inside a tokio runtime; returns once the socket is listening.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServeError> {
    if config.reap_orphans {
        reaper::enable_orphan_reaping();
    }
    let listener = bind(&config.listen).await?;
    let addr = match &listener {
        Listener::Tcp(listener) => {
            BoundAddr::Tcp(listener.local_addr().map_err(|source| ServeError::Listen {
                what: "the TCP listener".into(),
                source,
            })?)
        }
        Listener::Unix(_, path) => BoundAddr::Unix(path.clone()),
    };

    let shared = Arc::new(Shared::new(config.default_user.clone(), config.set_clock));
    let registry = Arc::new(Registry::new(config.exited_retention));
    let cpu = Arc::new(CpuSampler::default());
    let process = ProcessService::new(
        Arc::clone(&shared),
        registry,
        ProcessLimits {
            output_retain: config.output_retain_bytes,
            keepalive: config.keepalive_interval,
        },
    );
    let filesystem = FilesystemService::new(Arc::clone(&shared));
    let system = SystemService::new(Arc::clone(&shared), Arc::clone(&cpu));
    let tunnel = TunnelService::new(match &addr {
        BoundAddr::Tcp(addr) => Some(addr.port()),
        BoundAddr::Unix(_) => None,
    });
    let auth = {
        let shared = Arc::clone(&shared);
        move |request: Request<()>| -> Result<Request<()>, Status> {
            shared.authorize(request.metadata())?;
            Ok(request)
        }
    };
    let router = Server::builder()
        // Each call's span names the caller's trace (the agent sends `traceparent`).
        .trace_fn(|req| {
            tracing::info_span!(
                "envd.request",
                path = %req.uri().path(),
                trace_id = wrenn_proto::trace::trace_id_of(req.headers()).unwrap_or_default(),
            )
        })
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .initial_stream_window_size(Some(wrenn_proto::transport::STREAM_WINDOW))
        .initial_connection_window_size(Some(wrenn_proto::transport::CONNECTION_WINDOW))
        .max_frame_size(Some(wrenn_proto::transport::MAX_FRAME_SIZE))
        .add_service(ProcessServer::with_interceptor(
            process.clone(),
            auth.clone(),
        ))
        .add_service(FilesystemServer::with_interceptor(filesystem, auth.clone()))
        .add_service(TunnelServer::with_interceptor(tunnel, auth))
        .add_service(SystemServer::new(system));

    let stop = CancellationToken::new();
    {
        let cpu = Arc::clone(&cpu);
        let stop = stop.clone();
        tokio::spawn(async move { cpu.run(stop).await });
    }
    let mut serve = match listener {
        Listener::Tcp(listener) => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(
                router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
            )
        }
        Listener::Unix(listener, _) => tokio::spawn(router.serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        )),
    };
    tracing::info!(?addr, version = crate::VERSION, "envd serving");

    let grace = config.shutdown_grace;
    let socket_path = match &config.listen {
        Listen::Unix(path) => Some(path.clone()),
        _ => None,
    };
    let task = {
        let stop = stop.clone();
        let process = process.clone();
        tokio::spawn(async move {
            let joined = tokio::select! {
                joined = &mut serve => joined,
                () = stop.cancelled() => {
                    process.kill_all();
                    match tokio::time::timeout(grace, &mut serve).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            serve.abort();
                            Ok(Ok(()))
                        }
                    }
                }
            };
            stop.cancel();
            process.kill_all();
            if let Some(path) = socket_path {
                let _ = std::fs::remove_file(path);
            }
            tracing::info!("envd stopped");
            match joined {
                Ok(result) => result.map_err(ServeError::from),
                Err(err) => Err(ServeError::Task(err.to_string())),
            }
        })
    };
    Ok(ServerHandle {
        addr,
        stop,
        task: Some(task),
        process,
    })
}

async fn bind(listen: &Listen) -> Result<Listener, ServeError> {
    match listen {
        Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(Listener::Tcp)
            .map_err(|source| ServeError::Listen {
                what: addr.to_string(),
                source,
            }),
        Listen::Unix(path) => {
            let failed = |source| ServeError::Listen {
                what: path.display().to_string(),
                source,
            };
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(failed)?;
            }
            // Replace a stale socket left by an earlier run, never a regular file.
            use std::os::unix::fs::FileTypeExt;
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.file_type().is_socket() {
                    std::fs::remove_file(path).map_err(failed)?;
                }
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(failed)?;
            Ok(Listener::Unix(listener, Some(path.clone())))
        }
        Listen::Fd(fd) => inherited(*fd).map_err(|source| ServeError::Listen {
            what: format!("inherited descriptor {fd}"),
            source,
        }),
    }
}

/// Adopts an inherited listening socket (TCP or unix).
fn inherited(fd: i32) -> io::Result<Listener> {
    let owned = adopt_fd(fd)?;
    let tcp = std::net::TcpListener::from(owned);
    if tcp.local_addr().is_ok() {
        tcp.set_nonblocking(true)?;
        return Ok(Listener::Tcp(tokio::net::TcpListener::from_std(tcp)?));
    }
    let unix = std::os::unix::net::UnixListener::from(std::os::fd::OwnedFd::from(tcp));
    let path = unix.local_addr()?.as_pathname().map(PathBuf::from);
    unix.set_nonblocking(true)?;
    Ok(Listener::Unix(
        tokio::net::UnixListener::from_std(unix)?,
        path,
    ))
}

/// Takes ownership of descriptor `fd`, after checking that it is an open socket.
#[allow(unsafe_code)]
fn adopt_fd(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors 0-2 are stdio",
        ));
    }
    // SAFETY: `fd` is not stdio; borrowing it only for the fstat below is sound even
    // if it were closed (fstat then fails with EBADF and we return before adopting).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = rustix::fs::fstat(borrowed)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket"));
    }
    // SAFETY: the descriptor is open (fstat succeeded), it is a socket inherited for
    // envd to serve on, and nothing else in envd owns it: the command line hands its
    // ownership to us, and this is called once per `Listen::Fd`.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // Inherited without close-on-exec: the processes envd starts must not get it
    // (they could accept the agent's connections).
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}
