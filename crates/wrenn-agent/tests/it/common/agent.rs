//! The agent under test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::envd::Envd;
use super::runtime::EnvdRuntime;
use tonic::transport::Channel;
use wrenn_agent::manager::ManagerSettings;
use wrenn_agent::registration::{Credentials, HostCredentials};
use wrenn_agent::{Agent, AgentHandle, AgentOptions};
use wrenn_core::config::Secret;
use wrenn_core::id::{HostId, SandboxId};
use wrenn_core::layout::Layout;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;

/// Knobs of [`TestAgent::start_with`].
pub struct Setup {
    pub settings: ManagerSettings,
    pub reaper_tick: Duration,
    pub sample_interval: Duration,
    pub cp: Option<(String, HostId, String)>,
    /// A registered agent: control-plane URL, its credentials, heartbeat interval.
    pub registered: Option<(String, Credentials, Duration)>,
    /// Serve mutual TLS with the registered credentials.
    pub tls: bool,
    /// Listen here (default: a new loopback port).
    pub listener: Option<tokio::net::TcpListener>,
    /// Talk to the agent with this client (default: cleartext to its address).
    pub client: Option<HostAgentServiceClient<Channel>>,
    pub auth_token: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        let settings = ManagerSettings {
            drain_grace: Duration::from_millis(500),
            envd_ready_timeout: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(30),
            ..ManagerSettings::default()
        };
        Self {
            settings,
            reaper_tick: Duration::from_secs(2),
            sample_interval: Duration::from_millis(100),
            cp: None,
            registered: None,
            tls: false,
            listener: None,
            client: None,
            auth_token: None,
        }
    }
}

/// An agent over [`EnvdRuntime`] in a temporary `$WRENN_DIR`, with a client.
pub struct TestAgent {
    pub handle: AgentHandle,
    pub client: HostAgentServiceClient<Channel>,
    /// The channel `client` runs on, for [`TestAgent::envd`] (`None` when
    /// [`Setup::client`] supplied a client of its own).
    channel: Option<Channel>,
    pub runtime: Arc<EnvdRuntime>,
    pub layout: Layout,
    /// Scratch directory for files the sandboxes read and write.
    pub scratch: PathBuf,
    /// Keeps the data directory for as long as the agent runs.
    _dir: Arc<tempfile::TempDir>,
}

impl TestAgent {
    /// An agent with the default setup.
    pub async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    /// An agent with `setup`.
    pub async fn start_with(setup: Setup) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(dir, setup).await
    }

    /// An agent over an existing data directory (agent restarts).
    pub async fn start_in(dir: Arc<tempfile::TempDir>, setup: Setup) -> Self {
        let layout = Layout::new(dir.path().join("wrenn"));
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let runtime = Arc::new(EnvdRuntime::new(layout.clone()));
        let listener = match setup.listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let mut options = AgentOptions::new(runtime.clone(), layout.clone(), listener);
        options.manager = setup.settings;
        options.reaper_tick = setup.reaper_tick;
        options.sample_interval = setup.sample_interval;
        options.serve_grace = Duration::from_secs(2);
        options.events.initial_backoff = Duration::from_millis(50);
        if let Some((url, host, token)) = setup.cp {
            options = options
                .with_control_plane(url)
                .with_credentials(Credentials::in_memory(HostCredentials::with_jwt(
                    host, token,
                )));
        }
        if let Some((url, credentials, interval)) = setup.registered {
            options = options
                .with_control_plane(url)
                .with_credentials(credentials)
                .with_heartbeat(interval);
        }
        if setup.tls {
            options = options.with_tls();
        }
        if let Some(token) = &setup.auth_token {
            options = options.with_auth_token(Secret::new(token.clone()));
        }
        let handle = Agent::start(options).await.expect("agent starts");
        let (client, channel) = match setup.client {
            Some(c) => (c, None),
            None => {
                let channel = connect_channel(handle.local_addr()).await;
                (agent_client(&channel), Some(channel))
            }
        };
        Self {
            handle,
            client,
            channel,
            runtime,
            layout,
            scratch,
            _dir: dir,
        }
    }

    /// A path in the scratch directory, as a string.
    pub fn path(&self, name: &str) -> String {
        self.scratch.join(name).display().to_string()
    }

    /// Creates a sandbox with default resources and `timeout_sec`.
    pub async fn create(&self, timeout_sec: u32) -> SandboxId {
        let id = SandboxId::new();
        self.client
            .clone()
            .create_sandbox(create_request(id, timeout_sec))
            .await
            .expect("create");
        id
    }

    /// envd of sandbox `id`, through this agent (on the channel of [`TestAgent::client`]);
    /// `id` is sent as given, so malformed ones can be tried too.
    pub fn envd(&self, id: impl ToString) -> Envd {
        let channel = self
            .channel
            .as_ref()
            .expect("envd clients need the agent's channel: Setup::client was given");
        Envd::of(channel, id)
    }

    /// Runs `sh -c line` in sandbox `id` through the agent and returns (stdout, stderr,
    /// exit code).
    pub async fn sh(
        &self,
        id: SandboxId,
        line: &str,
    ) -> Result<(String, String, i32), tonic::Status> {
        let ran = self.envd(id).sh(line).await?;
        Ok((ran.stdout, ran.stderr, ran.exit_code))
    }

    /// The status of `id` as ListSandboxes reports it.
    pub async fn status(&self, id: SandboxId) -> Option<pb::SandboxStatus> {
        let list = self
            .client
            .clone()
            .list_sandboxes(pb::ListSandboxesRequest {})
            .await
            .unwrap()
            .into_inner();
        list.sandboxes
            .iter()
            .find(|s| s.sandbox_id == id.to_string())
            .map(|s| s.status())
    }
}

/// A CreateSandboxRequest with defaults.
pub fn create_request(id: SandboxId, timeout_sec: u32) -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        sandbox_id: id.to_string(),
        template: "minimal".into(),
        timeout_sec,
        ..Default::default()
    }
}

/// A cleartext channel to the agent at `addr`: for [`agent_client`] and [`Envd::of`].
pub async fn connect_channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("agent endpoint")
        .connect()
        .await
        .expect("client connects")
}

/// A `HostAgentService` client on `channel`.
pub fn agent_client(channel: &Channel) -> HostAgentServiceClient<Channel> {
    HostAgentServiceClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
}
