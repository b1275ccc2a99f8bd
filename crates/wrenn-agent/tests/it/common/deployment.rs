//! The real control plane (in process, on SQLite, serving its API on loopback) and
//! the real `wrenn-agent` binary registering with it: what registration and
//! multi-host tests stand on.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use wrenn_agent::registration::{ControlPlane, Credentials, machine_report};
use wrenn_core::auth::OpaqueToken;
use wrenn_core::config::Config;
use wrenn_core::id::{HostId, HostTokenId};
use wrenn_core::model::{HostKind, HostToken};
use wrenn_core::repo::{NewHost, Store};
use wrenn_cpserver::ca::CertificateAuthority;
use wrenn_cpserver::extension::ServerContext;

use super::eventually;

/// The control plane, serving on loopback.
pub struct ControlPlaneUnderTest {
    pub url: String,
    pub ctx: ServerContext,
    pub ca: Arc<CertificateAuthority>,
    pub store: Arc<dyn Store>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl ControlPlaneUnderTest {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With the configuration variables `env` besides the directory and database.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut vars = vec![
            ("WRENN_DIR".to_owned(), dir.path().display().to_string()),
            (
                "DATABASE_URL".to_owned(),
                format!("sqlite://{}", dir.path().join("wrenn.db").display()),
            ),
        ];
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let config =
            Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
                .unwrap();
        let server = wrenn_cpserver::Builder::new(config).build().await.unwrap();
        let ctx = server.context().clone();
        let ca = server.secrets().ca.clone();
        let store = ctx.store.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(server.serve(listener, stop.clone().cancelled_owned()));
        Self {
            url,
            ctx,
            ca,
            store,
            stop,
            _dir: dir,
        }
    }

    /// A `pending` host and its one-time registration token (what `POST /v1/hosts`
    /// hands an operator).
    pub async fn pending_host(&self) -> (HostId, String) {
        let id = HostId::new();
        self.store
            .create_host(NewHost {
                id,
                kind: HostKind::Regular,
                team_id: None,
                provider: "test".into(),
                availability_zone: "local".into(),
                created_by: None,
            })
            .await
            .unwrap();
        let token = OpaqueToken::generate();
        let now = Utc::now();
        self.store
            .create_host_token(HostToken {
                id: HostTokenId::new(),
                host_id: id,
                token_hash: token.hash(),
                created_by: None,
                created_at: now,
                expires_at: now + chrono::Duration::hours(1),
                used_at: None,
            })
            .await
            .unwrap();
        (id, token.expose_secret().to_owned())
    }

    /// Registers a new host the way the agent binary does; returns its credentials,
    /// stored in `file`.
    pub async fn register(&self, file: &std::path::Path) -> Credentials {
        self.register_at(file, "127.0.0.1:50051").await
    }

    /// [`register`](Self::register), reporting `address`.
    pub async fn register_at(&self, file: &std::path::Path, address: &str) -> Credentials {
        let (id, token) = self.pending_host().await;
        let scratch = tempfile::tempdir().unwrap();
        let machine = machine_report(scratch.path());
        let creds = ControlPlane::new(&self.url)
            .unwrap()
            .register(&token, address, machine)
            .await
            .expect("registration succeeds");
        assert_eq!(creds.host_id, id);
        creds.save(file).unwrap();
        Credentials::stored(creds, file.to_owned())
    }

    pub async fn last_heartbeat(&self, id: HostId) -> Option<chrono::DateTime<Utc>> {
        self.store.get_host(id).await.unwrap().last_heartbeat_at
    }

    /// Waits until the host's heartbeat time moves past what it is now.
    pub async fn wait_for_heartbeat(&self, id: HostId) {
        let before = self.last_heartbeat(id).await;
        eventually("a new heartbeat", || async {
            self.last_heartbeat(id).await > before
        })
        .await;
    }
}

impl Drop for ControlPlaneUnderTest {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Kills the child on drop (SIGTERM: the agent shuts down gracefully).
pub struct AgentProcess(std::process::Child);

impl AgentProcess {
    pub fn start(
        cp: &ControlPlaneUnderTest,
        dir: &std::path::Path,
        listen: &str,
        token: Option<&str>,
    ) -> Self {
        Self::start_with(cp, dir, listen, token, &[])
    }

    /// [`AgentProcess::start`] with the environment variables `env` too.
    pub fn start_with(
        cp: &ControlPlaneUnderTest,
        dir: &std::path::Path,
        listen: &str,
        token: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        // The default image, built once per machine and shared through
        // WRENN_IMAGE_CACHE (the agent builds it on start when missing).
        super::test_image();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wrenn-agent"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WRENN_DIR", dir)
            .env("WRENN_CP_URL", &cp.url)
            .env("WRENN_HOST_LISTEN_ADDR", listen)
            .env("WRENN_ENVD_BIN", super::envd_binary())
            .env(
                wrenn_agent::image::CACHE_ENV,
                wrenn_agent::image::test_store_dir(),
            )
            .env("RUST_LOG", "warn")
            .current_dir(dir)
            .stdout(std::process::Stdio::null());
        if let Some(token) = token {
            cmd.env("WRENN_REGISTRATION_TOKEN", token);
        }
        cmd.envs(env.iter().copied());
        Self(cmd.spawn().expect("wrenn-agent starts"))
    }

    pub fn stop(mut self) {
        let pid = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("wrenn-agent did not stop on SIGTERM");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
