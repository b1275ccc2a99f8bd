//! `wrenn dev`: the whole platform on its embedded defaults, in one directory.
//!
//! The control plane runs on SQLite in `--dir` with the in-process event bus, and a
//! host agent runs in the same process with the `process` runtime (sandboxes are
//! Linux namespaces + overlayfs + cgroups; envd is this very binary, started as
//! `wrenn-envd`) — or, with `WRENN_RUNTIME=qemu`, the QEMU runtime (sandboxes are
//! virtual machines) — reached over a loopback gRPC channel like any other host. The
//! first start creates an admin user, a team, an API key and the host, and keeps
//! them in `DIR/dev-credentials.json` (mode 0600); every start prints the same
//! ready-to-paste `export` lines, so the SDK works against it at once — capsule URLs
//! included (`WRENN_PROXY_DOMAIN=localhost:PORT`: `http://8000-cl-….localhost:PORT`
//! reaches port 8000 of a capsule through the control plane's proxy).
//!
//! Prometheus metrics: `GET /metrics` of the control plane carries its own series and
//! the in-process agent's (`wrenn_agent_*`, one registry). It is open when `--listen`
//! is a loopback address (`WRENN_METRICS_OPEN` unless set otherwise), closed (404)
//! otherwise unless `WRENN_METRICS_TOKEN` is set.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use wrenn_core::auth::{ApiKey, hash_password};
use wrenn_core::config::Config;
use wrenn_core::id::{ApiKeyId, HostId, TeamId, UserId};

use wrenn_agent::registration::{Credentials, HostCredentials};
use wrenn_agent::runtime::Runtime;
use wrenn_agent::runtime::firecracker::{FirecrackerRuntime, FirecrackerRuntimeOptions};
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::runtime::qemu::{QemuRuntime, QemuRuntimeOptions};
use wrenn_agent::server::{Agent, AgentOptions};
use wrenn_core::auth::HostClaims;
use wrenn_core::config::{AgentConfig, RuntimeKind};
use wrenn_core::layout::Layout;
use wrenn_core::model::{self, HostKind, UserStatus};
use wrenn_core::repo::{HostSpec, NewHost, NewTeam, NewUser, Store};
use wrenn_core::scheduler::SingleHost;

/// Default listen address of `wrenn dev`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// Default directory of `wrenn dev`.
pub const DEFAULT_DIR: &str = ".wrenn";
/// Email of the development admin account.
pub const DEV_EMAIL: &str = "admin@wrenn.local";
/// File (inside the directory) holding the development credentials.
pub const CREDENTIALS_FILE: &str = "dev-credentials.json";

/// Why `wrenn dev` could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The control plane failed.
    #[error(transparent)]
    Server(#[from] wrenn_cpserver::ServerError),
    /// The directory or credentials file could not be used.
    #[error("{path}: {message}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The store refused the development account.
    #[error("could not create the development account")]
    Store(#[from] wrenn_core::repo::RepoError),
}

/// The development account, as persisted in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevCredentials {
    /// Admin user's email.
    pub email: String,
    /// Admin user's password (for the dashboard and JWT routes).
    pub password: String,
    /// The admin user.
    pub user_id: UserId,
    /// The admin's team.
    pub team_id: TeamId,
    /// The API key id.
    pub api_key_id: ApiKeyId,
    /// The API key plaintext.
    pub api_key: String,
    /// The in-process agent's host.
    #[serde(default)]
    pub host_id: Option<HostId>,
}

/// Networks notification channels may reach under `wrenn dev` unless
/// `WRENN_CHANNELS_ALLOW` says otherwise: loopback, so a receiver on this machine works.
pub const DEV_CHANNELS_ALLOW: &str = "127.0.0.0/8,::1";

/// Configuration of `wrenn dev`: everything from the environment as usual, except
/// that the directory, database and listen address come from the command line, and
/// notification channels may reach loopback ([`DEV_CHANNELS_ALLOW`]).
pub fn config(dir: &Path, listen: SocketAddr) -> Result<Config, DevError> {
    let dir_s = dir.to_string_lossy().into_owned();
    let db = format!("sqlite://{}", dir.join("wrenn.db").display());
    let listen_s = listen.to_string();
    Config::from_lookup(|k| match k {
        "WRENN_DIR" => Some(dir_s.clone()),
        "DATABASE_URL" => Some(db.clone()),
        "WRENN_CP_LISTEN_ADDR" => Some(listen_s.clone()),
        "REDIS_URL" => None,
        // `/metrics` (the control plane's and the in-process agent's series) answers
        // anyone when only this machine can reach it.
        "WRENN_METRICS_OPEN" => std::env::var(k)
            .ok()
            .or_else(|| listen.ip().is_loopback().then(|| "true".to_owned())),
        "WRENN_CHANNELS_ALLOW" => Some(
            std::env::var("WRENN_CHANNELS_ALLOW")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| DEV_CHANNELS_ALLOW.to_owned()),
        ),
        other => std::env::var(other).ok(),
    })
    .map_err(|e| DevError::Server(e.into()))
}

fn cred_err(path: &Path, message: impl std::fmt::Display) -> DevError {
    DevError::Credentials {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Loads the development account from `dir`, or creates it (admin user, default
/// team, API key) in `store` and saves it. A saved key that the store no longer
/// knows (database removed) is recreated.
pub async fn ensure_credentials(dir: &Path, store: &dyn Store) -> Result<DevCredentials, DevError> {
    let path = dir.join(CREDENTIALS_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let creds: DevCredentials = serde_json::from_str(&text)
            .map_err(|e| cred_err(&path, format!("unreadable: {e}; remove it to start over")))?;
        if store
            .get_api_key_by_hash(&wrenn_core::auth::hash_api_key(&creds.api_key))
            .await?
            .is_some()
        {
            return Ok(creds);
        }
        tracing::warn!("saved development key is unknown to the database; creating a new account");
    }
    let creds = create_account(store).await?;
    write_private(
        &path,
        &serde_json::to_string_pretty(&creds).map_err(|e| cred_err(&path, e))?,
    )?;
    Ok(creds)
}

async fn create_account(store: &dyn Store) -> Result<DevCredentials, DevError> {
    let password = wrenn_core::auth::OpaqueToken::generate().expose_secret()[..24].to_owned();
    let user = match store.get_user_by_email(DEV_EMAIL).await {
        Ok(u) => {
            store
                .update_password(
                    u.id,
                    &hash_password(&password).map_err(|e| cred_err(Path::new(DEV_EMAIL), e))?,
                )
                .await?;
            u
        }
        Err(wrenn_core::repo::RepoError::NotFound { .. }) => {
            store
                .create_user(NewUser {
                    id: UserId::new(),
                    email: DEV_EMAIL.into(),
                    password_hash: Some(
                        hash_password(&password).map_err(|e| cred_err(Path::new(DEV_EMAIL), e))?,
                    ),
                    name: "Wrenn Admin".into(),
                    status: UserStatus::Active,
                    is_admin: true,
                })
                .await?
        }
        Err(e) => return Err(e.into()),
    };
    let team = match store.default_team_for_user(user.id).await? {
        Some(t) => t.team.id,
        None => {
            store
                .create_team(
                    NewTeam {
                        id: TeamId::new(),
                        name: "Wrenn Admin's Team".into(),
                        slug: wrenn_core::id::new_team_slug(),
                        is_byoc: false,
                    },
                    user.id,
                    true,
                )
                .await?
                .id
        }
    };
    let key = ApiKey::generate();
    let row = store
        .create_api_key(model::ApiKey {
            id: ApiKeyId::new(),
            team_id: team,
            name: "wrenn dev".into(),
            key_hash: key.hash(),
            key_prefix: key.prefix().to_owned(),
            created_by: Some(user.id),
            created_at: chrono::Utc::now(),
            last_used: None,
        })
        .await?;
    Ok(DevCredentials {
        email: DEV_EMAIL.into(),
        password,
        user_id: user.id,
        team_id: team,
        api_key_id: row.id,
        api_key: key.expose_secret().to_owned(),
        host_id: None,
    })
}

fn write_private(path: &Path, contents: &str) -> Result<(), DevError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| cred_err(path, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| cred_err(path, e))
}

/// The lines `wrenn dev` prints for the user to paste. `proxy_domain` is where capsule
/// URLs (`http://{port}-{capsule_id}.{proxy_domain}`) point: `WRENN_PROXY_DOMAIN` if
/// set, else `localhost:{port}`.
pub fn banner(listen: SocketAddr, creds: &DevCredentials, proxy_domain: &str) -> String {
    let dashboard = if cfg!(feature = "dashboard") {
        format!(
            "Dashboard: http://{listen}/ (sign in as {email} / {password}).\n",
            email = creds.email,
            password = creds.password
        )
    } else {
        format!(
            "Admin login (JWT routes): {email} / {password}.\n",
            email = creds.email,
            password = creds.password
        )
    };
    format!(
        "Wrenn is running (control plane on http://{listen}).\n\
         {dashboard}\
         Paste this into your shell to use it from the SDK:\n\n\
         export WRENN_BASE_URL=http://{listen}\n\
         export WRENN_API_KEY={key}\n\
         export WRENN_PROXY_DOMAIN={proxy_domain}\n",
        key = creds.api_key,
    )
}

/// The proxy domain `wrenn dev` advertises: `WRENN_PROXY_DOMAIN`, else
/// `localhost:{port}` (browsers and curl resolve every `*.localhost` name to loopback).
fn proxy_domain(config: &Config, bound: SocketAddr) -> String {
    config
        .proxy
        .domain
        .clone()
        .unwrap_or_else(|| format!("localhost:{}", bound.port()))
}

/// Whether this machine's resolver (what the SDK and most programs use) resolves
/// `*.localhost` names; says how to make it if not.
fn check_localhost_names(domain: &str) {
    let Some(rest) = domain.split(':').next().filter(|d| *d == "localhost") else {
        return;
    };
    use std::net::ToSocketAddrs as _;
    if ("wrenn-probe.".to_owned() + rest + ":80")
        .to_socket_addrs()
        .is_ok_and(|mut a| a.next().is_some())
    {
        return;
    }
    eprintln!(
        "wrenn dev: capsule URLs (http://PORT-CAPSULE_ID.{domain}) work in browsers and curl, which \
         resolve *.localhost themselves, but this machine's resolver does not resolve them for \
         other programs (the Python SDK's get_url and code_runner included). Enable it with \
         nss-myhostname: `apt install libnss-myhostname` and add `myhostname` to the `hosts:` line \
         of /etc/nsswitch.conf (systemd-resolved does it too), or set WRENN_PROXY_DOMAIN to a \
         domain whose wildcard resolves to this machine."
    );
}

/// Makes sure the development host exists and is online at `address`; returns its id
/// and records it in the credentials file.
fn host_spec(address: &str) -> HostSpec {
    HostSpec {
        address: address.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpu_cores: std::thread::available_parallelism()
            .map_or(1, |n| i32::try_from(n.get()).unwrap_or(i32::MAX)),
        memory_mb: host_memory_mb(),
        disk_gb: 100,
    }
}

/// How often the in-process host records a heartbeat (the host monitor marks hosts
/// unreachable after 90 s without one).
const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

async fn ensure_host(
    dir: &Path,
    store: &dyn Store,
    creds: &mut DevCredentials,
    address: &str,
) -> Result<HostId, DevError> {
    let spec = host_spec(address);
    if let Some(id) = creds.host_id
        && store.get_host(id).await.is_ok()
    {
        store.heartbeat(id, &spec).await?;
        return Ok(id);
    }
    let id = HostId::new();
    store
        .create_host(NewHost {
            id,
            kind: HostKind::Regular,
            team_id: None,
            provider: "wrenn dev".into(),
            availability_zone: "local".into(),
            created_by: Some(creds.user_id),
        })
        .await?;
    store.register_host(id, &spec).await?;
    creds.host_id = Some(id);
    let path = dir.join(CREDENTIALS_FILE);
    write_private(
        &path,
        &serde_json::to_string_pretty(creds).map_err(|e| cred_err(&path, e))?,
    )?;
    Ok(id)
}

fn host_memory_mb() -> i32 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        })
        .map_or(8192, |kib| i32::try_from(kib / 1024).unwrap_or(i32::MAX))
}

/// The envd binary capsules run: `WRENN_ENVD_BIN` (e.g. `target/release/wrenn-envd`
/// from `cargo build --release -p wrenn-envd`: a small binary, whose start in each
/// capsule is about 1 ms shorter), else this binary (which is envd when started under
/// that name, so it can never be out of step with the agent).
fn envd_binary() -> Result<PathBuf, String> {
    match std::env::var_os("WRENN_ENVD_BIN").filter(|p| !p.is_empty()) {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe().map_err(|e| format!("cannot locate this binary: {e}")),
    }
}

/// The runtime of the in-process agent (`WRENN_RUNTIME`: `process` by default, or
/// `qemu`) with [`envd_binary`] as envd, on the default image (built here on the
/// first start).
async fn runtime(layout: Layout, agent: &AgentConfig) -> Result<Arc<dyn Runtime>, String> {
    let exe = envd_binary()?;
    if crate::image::needs_build(layout.root()) {
        eprintln!(
            "wrenn dev: building the default capsule image (Debian; takes about 2 minutes, once)…"
        );
    }
    let (image, took) = crate::image::ensure(layout.root(), false).await?;
    if let Some(took) = took {
        eprintln!(
            "wrenn dev: built the default image in {:.0} s ({})",
            took.as_secs_f64(),
            image.dir.display()
        );
    }
    match agent.runtime {
        RuntimeKind::Process => {}
        RuntimeKind::Qemu => {
            let runtime =
                QemuRuntime::new(layout, exe, QemuRuntimeOptions::from_config(agent, image))
                    .await
                    .map_err(|e| e.to_string())?;
            eprintln!(
                "wrenn dev: capsules are QEMU virtual machines ({})",
                runtime.accel()
            );
            return Ok(Arc::new(runtime));
        }
        RuntimeKind::Firecracker => {
            let options =
                FirecrackerRuntimeOptions::from_config(agent, image).map_err(|e| e.to_string())?;
            let runtime = FirecrackerRuntime::new(layout, exe, options)
                .await
                .map_err(|e| e.to_string())?;
            match runtime.kvm() {
                Ok(()) => eprintln!("wrenn dev: capsules are Firecracker microVMs"),
                Err(why) => eprintln!(
                    "wrenn dev: capsules would be Firecracker microVMs, but KVM does not boot \
                     guests on this host ({why}): every create will fail; use \
                     WRENN_RUNTIME=qemu or process"
                ),
            }
            return Ok(Arc::new(runtime));
        }
    }
    let options = ProcessRuntimeOptions::from_config(agent, &image);
    let runtime = ProcessRuntime::new(layout, exe, options)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(runtime))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Runs `wrenn dev` until SIGTERM/SIGINT.
pub async fn run(dir: PathBuf, listen: SocketAddr) -> Result<(), DevError> {
    std::fs::create_dir_all(&dir).map_err(|e| cred_err(&dir, e))?;
    let dir = dir.canonicalize().map_err(|e| cred_err(&dir, e))?;
    let config = config(&dir, listen)?;
    let store = wrenn_db::connect(&config.database_url)
        .await
        .map_err(|e| DevError::Server(e.into()))?;
    let mut creds = ensure_credentials(&dir, store.as_ref()).await?;
    let cp_listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| DevError::Server(wrenn_cpserver::ServerError::Serve(e)))?;
    let bound = cp_listener
        .local_addr()
        .map_err(|e| DevError::Server(wrenn_cpserver::ServerError::Serve(e)))?;

    let mut builder = wrenn_cpserver::Builder::new(config.clone())
        .with_store(store.clone())
        .with_version(
            env!("CARGO_PKG_VERSION"),
            option_env!("WRENN_COMMIT").unwrap_or("dev"),
        );
    let mut agent_parts = None;
    // Agent tunables from the environment (e.g. WRENN_HIBERNATE_AFTER_SECS, WRENN_EGRESS_*).
    let agent_config = AgentConfig::from_env().map_err(|e| DevError::Server(e.into()))?;
    match runtime(config.layout(), &agent_config).await {
        Ok(runtime) => {
            let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| DevError::Server(wrenn_cpserver::ServerError::Serve(e)))?;
            let address = agent_listener
                .local_addr()
                .map_err(|e| DevError::Server(wrenn_cpserver::ServerError::Serve(e)))?
                .to_string();
            let host = ensure_host(&dir, store.as_ref(), &mut creds, &address).await?;
            let (hb_store, spec) = (store.clone(), host_spec(&address));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
                loop {
                    tick.tick().await;
                    if let Err(e) = hb_store.heartbeat(host, &spec).await {
                        tracing::warn!(error = %e, "could not record the in-process host's heartbeat");
                    }
                }
            });
            builder = builder.with_scheduler(Arc::new(
                SingleHost::new(store.clone(), host).with_overcommit(config.overcommit),
            ));
            agent_parts = Some((runtime, agent_listener, host));
        }
        Err(why) => {
            eprintln!(
                "wrenn dev: sandboxes are unavailable ({why}); the control plane runs without a host, \
                 so creating capsules answers 503 until this is fixed"
            );
        }
    }
    let server = builder.build().await?;
    let agent = match agent_parts {
        Some((runtime, listener, host)) => {
            let token = server
                .context()
                .auth
                .jwt()
                .sign_host(&HostClaims::new(host))
                .map_err(|e| {
                    DevError::Server(wrenn_cpserver::ServerError::Secrets(e.to_string()))
                })?;
            let mut options = AgentOptions::new(runtime, config.layout(), listener)
                .with_credentials(Credentials::in_memory(HostCredentials::with_jwt(
                    host, token,
                )))
                .with_control_plane(format!("http://{bound}"))
                // One scrape of the control plane's `/metrics` shows the agent's too.
                .with_metrics_registry(server.context().metrics.clone());
            // Agent tunables from the environment (e.g. WRENN_HIBERNATE_AFTER_SECS,
            // WRENN_MEMORY_OVERCOMMIT, WRENN_HEALTH_INTERVAL_SECS).
            options.manager.apply_config(&agent_config);
            Some(Agent::start(options).await.map_err(|e| {
                DevError::Server(wrenn_cpserver::ServerError::Other(format!(
                    "host agent: {e}"
                )))
            })?)
        }
        None => None,
    };
    // Not `println!`: whoever reads the banner may close the pipe once it has the key,
    // and a closed stdout must not bring the platform down.
    let proxy_domain = proxy_domain(&config, bound);
    check_localhost_names(&proxy_domain);
    if let Err(e) = writeln!(
        std::io::stdout(),
        "{}",
        banner(bound, &creds, &proxy_domain)
    ) {
        tracing::debug!("could not print the banner: {e}");
    }
    // Shipped templates (code-runner-beta) are built in the background on first start,
    // unless WRENN_DEV_BUILD_TEMPLATES=0 or there is no host to build on.
    if agent.is_some() && std::env::var("WRENN_DEV_BUILD_TEMPLATES").as_deref() != Ok("0") {
        if let Err(e) = crate::shipped_templates::ensure(server.context()).await {
            eprintln!(
                "wrenn dev: could not queue the shipped templates: {}",
                error_chain(&e)
            );
        }
    }
    // On SIGTERM/SIGINT the agent goes first (it hibernates its sandboxes and reports
    // that to the still-running control plane), then the control plane stops.
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_server = stop.clone();
    tokio::spawn(async move {
        wrenn_cpserver::shutdown_signal().await;
        if let Some(agent) = agent {
            let hibernated = agent.shutdown().await;
            if !hibernated.is_empty() {
                eprintln!(
                    "wrenn dev: hibernated {} sandbox(es); they resume on the next start",
                    hibernated.len()
                );
            }
            // Let the event consumer record the reports before the server stops.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        stop.cancel();
    });
    let served = server
        .serve(cp_listener, async move { stop_server.cancelled().await })
        .await;
    served?;
    Ok(())
}
