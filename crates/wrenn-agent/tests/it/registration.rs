//! A standalone agent and the real control plane (in-process, on SQLite): the agent
//! registers with a one-time token, stores its credentials, heartbeats, refreshes a
//! refused JWT, pauses its sandboxes when it can no longer prove who it is or cannot
//! reach the control plane, and shuts down when its host is deleted.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{AgentProcess, ControlPlaneUnderTest, Setup, TestAgent, eventually};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use wrenn_agent::registration::{ControlPlane, Credentials, HostCredentials, machine_report};
use wrenn_core::auth::OpaqueToken;
use wrenn_core::id::HostId;
use wrenn_core::lifecycle::HostStatus;
use wrenn_cpserver::ca::CertificateAuthority;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;

/// How often the agents under test heartbeat.
const BEAT: Duration = Duration::from_millis(100);

/// Makes the control plane refuse the agent's JWT from its next heartbeat on (the
/// refresh token stays as it is).
async fn refuse_jwt(creds: &Credentials) {
    let current = creds.get();
    creds
        .replace(HostCredentials {
            jwt: "not-a-jwt".into(),
            ..current
        })
        .await
        .unwrap();
}

async fn registered_agent(cp: &ControlPlaneUnderTest, creds: &Credentials) -> TestAgent {
    TestAgent::start_with(Setup {
        registered: Some((cp.url.clone(), creds.clone(), BEAT)),
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn registration_stores_credentials_and_the_host_comes_online() {
    let cp = ControlPlaneUnderTest::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets").join("host-credentials.json");
    let creds = cp.register(&file).await;

    let stored = HostCredentials::load(&file).unwrap().expect("file written");
    assert_eq!(stored, creds.get());
    assert!(stored.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(
        stored
            .ca_cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let host = cp.store.get_host(stored.host_id).await.unwrap();
    assert_eq!(host.status, HostStatus::Online);
    assert_eq!(host.address, "127.0.0.1:50051");
    assert_eq!(host.arch, std::env::consts::ARCH);
    assert!(host.cpu_cores >= 1 && host.memory_mb > 0, "{host:?}");

    // The token was single use.
    let again = ControlPlane::new(&cp.url).unwrap();
    let (_, token) = cp.pending_host().await;
    let machine = machine_report(dir.path());
    again
        .register(&token, "127.0.0.1:1", machine.clone())
        .await
        .unwrap();
    let err = again
        .register(&token, "127.0.0.1:1", machine)
        .await
        .unwrap_err();
    assert!(err.is_refused(), "{err}");
}

#[tokio::test]
async fn a_registered_agent_heartbeats_and_refreshes_a_refused_jwt() {
    let cp = ControlPlaneUnderTest::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host-credentials.json");
    let creds = cp.register(&file).await;
    let id = creds.host_id();
    let agent = registered_agent(&cp, &creds).await;
    cp.wait_for_heartbeat(id).await;

    // The JWT stops being accepted: the next beat is refused, the agent refreshes,
    // keeps the new tokens (in memory and in the file) and carries on beating.
    let old = creds.get();
    let fingerprint = cp.store.get_host(id).await.unwrap().cert_fingerprint;
    refuse_jwt(&creds).await;
    eventually("the credentials are refreshed", || async {
        creds.get().refresh_token != old.refresh_token
    })
    .await;
    let new = creds.get();
    assert_ne!(new.jwt, "not-a-jwt");
    assert_ne!(
        new.cert_pem, old.cert_pem,
        "a new certificate comes with it"
    );
    assert_eq!(HostCredentials::load(&file).unwrap(), Some(new));
    assert_ne!(
        cp.store.get_host(id).await.unwrap().cert_fingerprint,
        fingerprint
    );
    cp.wait_for_heartbeat(id).await;
    agent.handle.shutdown().await;
}

#[tokio::test]
async fn a_refused_refresh_token_pauses_every_sandbox_and_stops_the_heartbeat() {
    let cp = ControlPlaneUnderTest::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = cp.register(&dir.path().join("host-credentials.json")).await;
    let id = creds.host_id();
    let agent = registered_agent(&cp, &creds).await;
    let sandbox = agent.create(0).await;
    cp.wait_for_heartbeat(id).await;

    // Both the JWT and the refresh token are refused.
    let current = creds.get();
    let spent = cp
        .store
        .get_valid_refresh_token(
            &OpaqueToken::parse(&current.refresh_token).unwrap().hash(),
            Utc::now(),
        )
        .await
        .unwrap()
        .expect("a valid refresh token");
    assert!(cp.store.revoke_refresh_token(spent.id).await.unwrap());
    refuse_jwt(&creds).await;

    eventually("the sandbox is paused", || async {
        agent.status(sandbox).await == Some(pb::SandboxStatus::Paused)
    })
    .await;
    // The heartbeat has stopped: the host's last beat no longer moves.
    let last = cp.last_heartbeat(id).await;
    tokio::time::sleep(BEAT * 10).await;
    assert_eq!(cp.last_heartbeat(id).await, last);
    assert!(!agent.handle.is_terminating(), "the agent keeps serving");
    agent.handle.shutdown().await;
}

#[tokio::test]
async fn a_deleted_host_removes_its_credentials_and_shuts_the_agent_down() {
    let cp = ControlPlaneUnderTest::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host-credentials.json");
    let creds = cp.register(&file).await;
    let agent = registered_agent(&cp, &creds).await;
    cp.wait_for_heartbeat(creds.host_id()).await;

    assert!(cp.store.delete_host(creds.host_id()).await.unwrap());
    tokio::time::timeout(Duration::from_secs(30), agent.handle.wait())
        .await
        .expect("the agent shuts down");
    assert!(!file.exists(), "credentials removed");
}

#[tokio::test]
async fn an_unreachable_control_plane_pauses_sandboxes_after_two_silent_intervals() {
    // A port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let creds = Credentials::in_memory(HostCredentials::with_jwt(HostId::new(), "jwt"));
    // Slow enough that the sandbox runs before two intervals pass unanswered.
    let agent = TestAgent::start_with(Setup {
        registered: Some((url, creds, Duration::from_secs(1))),
        ..Setup::default()
    })
    .await;
    let sandbox = agent.create(0).await;
    eventually("the sandbox is paused", || async {
        agent.status(sandbox).await == Some(pb::SandboxStatus::Paused)
    })
    .await;
    assert!(!agent.handle.is_terminating());
    agent.handle.shutdown().await;
}

#[tokio::test]
async fn a_failed_heartbeat_is_retried_long_before_the_next_interval() {
    // A control plane that answers the first heartbeat 500 and every later one 204.
    let beats = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = beats.clone();
    let app = axum::Router::new().route(
        "/v1/hosts/{id}/heartbeat",
        axum::routing::post(move || {
            let counted = counted.clone();
            async move {
                match counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    _ => axum::http::StatusCode::NO_CONTENT,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let creds = Credentials::in_memory(HostCredentials::with_jwt(HostId::new(), "jwt"));
    // An interval far longer than the test's patience: only a retry can beat twice.
    let agent = TestAgent::start_with(Setup {
        registered: Some((url, creds, Duration::from_secs(3600))),
        ..Setup::default()
    })
    .await;
    eventually("the failed first beat is retried", || async {
        beats.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    // Answered again: back to the interval, so no third beat soon after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(beats.load(std::sync::atomic::Ordering::SeqCst), 2);
    agent.handle.shutdown().await;
}

/// A rustls client of `addr`: trusts `ca_pem`, presents `identity` (cert, key PEMs)
/// if given. Returns the server's certificate (DER) or the handshake error.
async fn handshake(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(addr.ip().to_string()).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: a refused client certificate shows on the first read.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    Ok(conn.peer_certificates().unwrap()[0].to_vec())
}

#[tokio::test]
async fn the_control_plane_reaches_a_registered_agent_over_mutual_tls_only() {
    let cp = ControlPlaneUnderTest::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let creds = cp
        .register_at(&dir.path().join("host-credentials.json"), &addr.to_string())
        .await;
    let id = creds.host_id();
    // The control plane's own channel to the host (mutual TLS, its client certificate).
    let client = cp.ctx.hosts.client(id).await.unwrap();
    let agent = TestAgent::start_with(Setup {
        registered: Some((cp.url.clone(), creds.clone(), BEAT)),
        tls: true,
        listener: Some(listener),
        client: Some(client),
        ..Setup::default()
    })
    .await;

    // Through the control plane's channel, the agent works.
    let sandbox = agent.create(0).await;
    assert_eq!(
        agent.status(sandbox).await,
        Some(pb::SandboxStatus::Running)
    );

    // Cleartext gets nothing.
    let plain = HostAgentServiceClient::connect(format!("http://{addr}")).await;
    match plain {
        Err(_) => {}
        Ok(mut c) => assert!(c.list_sandboxes(pb::ListSandboxesRequest {}).await.is_err()),
    }
    let ca = cp.ca.cert_pem().to_owned();
    let client_cert = cp.ca.issue_client_cert(Utc::now()).unwrap();
    let identity = Some((client_cert.cert_pem.as_str(), client_cert.key_pem.as_str()));
    // The agent's certificate is the one it was issued.
    let served = handshake(addr, &ca, identity).await.expect("handshake");
    let issued = CertificateDer::from_pem_slice(creds.get().cert_pem.as_bytes()).unwrap();
    assert_eq!(served, issued.to_vec());
    // No client certificate, one from another CA, or a host's (server-only)
    // certificate: refused.
    assert!(handshake(addr, &ca, None).await.is_err());
    let other = CertificateAuthority::generate().unwrap();
    let foreign = other.issue_client_cert(Utc::now()).unwrap();
    assert!(
        handshake(addr, &ca, Some((&foreign.cert_pem, &foreign.key_pem)))
            .await
            .is_err()
    );
    let host_cert = cp
        .ca
        .issue_host_cert(HostId::new(), "127.0.0.1:1", Utc::now())
        .unwrap();
    assert!(
        handshake(addr, &ca, Some((&host_cert.cert_pem, &host_cert.key_pem)))
            .await
            .is_err()
    );

    // A refresh brings a new certificate, served from the next connection on.
    let old = creds.get();
    refuse_jwt(&creds).await;
    eventually("the credentials are refreshed", || async {
        creds.get().cert_pem != old.cert_pem
    })
    .await;
    let renewed = CertificateDer::from_pem_slice(creds.get().cert_pem.as_bytes()).unwrap();
    let served = handshake(addr, &ca, identity).await.expect("handshake");
    assert_eq!(served, renewed.to_vec());
    // The control plane still reaches it.
    assert_eq!(
        agent.status(sandbox).await,
        Some(pb::SandboxStatus::Running)
    );
    agent.handle.shutdown().await;
}

#[tokio::test]
async fn the_agent_binary_registers_serves_mutual_tls_and_restarts_from_its_credentials() {
    let cp = ControlPlaneUnderTest::start().await;
    // A short data directory: unix socket paths live under it.
    let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", wrenn_core::testing::unused_listen_port());
    let (id, token) = cp.pending_host().await;

    let agent = AgentProcess::start(&cp, dir.path(), &listen, Some(&token));
    let file = dir.path().join("secrets").join("host-credentials.json");
    // The host goes online when the registration answers; the agent writes its
    // credentials file right after.
    eventually(
        "the host is online and the credentials are stored",
        || async {
            let host = cp.store.get_host(id).await.unwrap();
            host.status == HostStatus::Online
                && host.address == listen
                && matches!(HostCredentials::load(&file), Ok(Some(_)))
        },
    )
    .await;
    let stored = HostCredentials::load(&file)
        .unwrap()
        .expect("credentials stored");
    assert_eq!(stored.host_id, id);
    // The control plane reaches it over mutual TLS.
    let mut client = cp.ctx.hosts.client(id).await.unwrap();
    eventually("the agent answers the control plane", || {
        let mut c = client.clone();
        async move { c.list_sandboxes(pb::ListSandboxesRequest {}).await.is_ok() }
    })
    .await;
    agent.stop();

    // Restarted without the token, it uses the stored credentials: it heartbeats as
    // the same host and serves TLS again.
    let before = cp.last_heartbeat(id).await;
    let agent = AgentProcess::start(&cp, dir.path(), &listen, None);
    eventually("a heartbeat from the restarted agent", || async {
        cp.last_heartbeat(id).await > before
    })
    .await;
    cp.ctx.hosts.evict(id);
    client = cp.ctx.hosts.client(id).await.unwrap();
    eventually("the restarted agent answers the control plane", || {
        let mut c = client.clone();
        async move { c.list_sandboxes(pb::ListSandboxesRequest {}).await.is_ok() }
    })
    .await;
    agent.stop();

    // Restarted with the (spent) token still in its environment, as a service unit
    // would: it does not register again but restarts from its credentials.
    let before = cp.last_heartbeat(id).await;
    let agent = AgentProcess::start(&cp, dir.path(), &listen, Some(&token));
    eventually(
        "a heartbeat from the agent restarted with its spent token",
        || async { cp.last_heartbeat(id).await > before },
    )
    .await;
    assert_eq!(
        HostCredentials::load(&file).unwrap().map(|c| c.host_id),
        Some(id),
        "still the same host"
    );
    agent.stop();
}
