//! A multi-host deployment: the real control plane and two real `wrenn-agent` binaries
//! (process runtime) registered through the registration flow and called over mutual
//! TLS. A capsule's port is reached through the control plane's proxy, and a snapshot
//! template made on one host starts capsules on the other (its files are copied there
//! first, relayed by the control plane), deletions (overlay whiteouts) included.

use crate::common;

use std::net::SocketAddr;

use common::{AgentProcess, ControlPlaneUnderTest, eventually};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use wrenn_core::auth::ApiKey;
use wrenn_core::id::{ApiKeyId, HostId, SandboxId, TeamId, UserId};
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::model::{self, UserStatus};
use wrenn_core::repo::{NewTeam, NewUser};

/// A team with an API key, made in the store as `wrenn dev` makes its own.
async fn team_key(cp: &ControlPlaneUnderTest, email: &str) -> String {
    let user = cp
        .store
        .create_user(NewUser {
            id: UserId::new(),
            email: email.into(),
            password_hash: None,
            name: "Multi".into(),
            status: UserStatus::Active,
            is_admin: false,
        })
        .await
        .unwrap();
    let team = cp
        .store
        .create_team(
            NewTeam {
                id: TeamId::new(),
                name: "Multi".into(),
                slug: wrenn_core::id::new_team_slug(),
                is_byoc: false,
            },
            user.id,
            true,
        )
        .await
        .unwrap();
    let key = ApiKey::generate();
    cp.store
        .create_api_key(model::ApiKey {
            id: ApiKeyId::new(),
            team_id: team.id,
            name: "multi".into(),
            key_hash: key.hash(),
            key_prefix: key.prefix().to_owned(),
            created_by: Some(user.id),
            created_at: chrono::Utc::now(),
            last_used: None,
        })
        .await
        .unwrap();
    key.expose_secret().to_owned()
}

/// The REST API with the team's key.
struct Api<'a> {
    cp: &'a ControlPlaneUnderTest,
    key: String,
    http: Client,
}

impl Api<'_> {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.cp.url))
            .header("X-API-Key", &self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Creates a capsule and waits until it runs; its id and host.
    async fn create(&self, body: Value) -> (SandboxId, HostId) {
        let (s, v) = self.call(Method::POST, "/v1/capsules", Some(body)).await;
        assert!(s.is_success(), "{v}");
        let id: SandboxId = v["id"].as_str().unwrap().parse().unwrap();
        eventually("the capsule runs", || async {
            let (_, v) = self
                .call(Method::GET, &format!("/v1/capsules/{id}"), None)
                .await;
            assert_ne!(v["status"], "error", "{v}");
            v["status"] == "running"
        })
        .await;
        (id, self.cp.store.get_sandbox(id).await.unwrap().host_id)
    }

    async fn sh(&self, id: SandboxId, cmd: &str) -> String {
        let (s, v) = self
            .call(
                Method::POST,
                &format!("/v1/capsules/{id}/exec"),
                Some(json!({"cmd": "/bin/sh", "args": ["-c", cmd]})),
            )
            .await;
        assert_eq!(s, 200, "{cmd}: {v}");
        assert_eq!(v["exit_code"], 0, "{cmd}: {v}");
        v["stdout"].as_str().unwrap_or_default().to_owned()
    }

    /// `GET path` on `port` of capsule `id` through the control plane's proxy.
    async fn proxied(&self, id: SandboxId, port: u16, path: &str) -> (StatusCode, String) {
        let cp: SocketAddr = self.cp.url.trim_start_matches("http://").parse().unwrap();
        let name = format!("{port}-{id}.localhost");
        let client = Client::builder().resolve(&name, cp).build().unwrap();
        let r = client
            .get(format!("http://{name}:{}{path}", cp.port()))
            .header("X-API-Key", &self.key)
            .send()
            .await
            .expect("proxied request");
        (r.status(), r.text().await.unwrap_or_default())
    }
}

/// Starts an agent binary registering as a new host; waits until it is online.
async fn agent(cp: &ControlPlaneUnderTest, dir: &std::path::Path) -> (HostId, AgentProcess) {
    let listen = format!("127.0.0.1:{}", wrenn_core::testing::unused_listen_port());
    let (id, token) = cp.pending_host().await;
    let process = AgentProcess::start(cp, dir, &listen, Some(&token));
    eventually("the host registers and comes online", || async {
        let host = cp.store.get_host(id).await.unwrap();
        host.status == HostStatus::Online && !host.cert_fingerprint.is_empty()
    })
    .await;
    (id, process)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsules_and_templates_work_across_two_registered_hosts() {
    let cp = ControlPlaneUnderTest::start().await;
    // Short data directories: unix socket paths live under them.
    let dirs = [
        tempfile::Builder::new().prefix("wa").tempdir().unwrap(),
        tempfile::Builder::new().prefix("wb").tempdir().unwrap(),
    ];
    let (host_a, agent_a) = agent(&cp, dirs[0].path()).await;
    let (host_b, agent_b) = agent(&cp, dirs[1].path()).await;
    let api = Api {
        cp: &cp,
        key: team_key(&cp, "multi@example.com").await,
        http: Client::new(),
    };

    // A capsule on one host: a file written, a file of the image deleted, a server.
    let (first, made_on) = api.create(json!({})).await;
    let other = if made_on == host_a { host_b } else { host_a };
    api.sh(
        first,
        "echo made-on-one-host > ~/marker && sudo rm /etc/issue",
    )
    .await;
    let (s, v) = api
        .call(
            Method::POST,
            &format!("/v1/capsules/{first}/exec"),
            Some(json!({"cmd": "python3", "args": ["-m", "http.server", "8000", "--bind", "0.0.0.0", "-d", "/home/wrenn-user"], "background": true})),
        )
        .await;
    assert_eq!(s, 202, "{v}");

    // Its port, through the control plane's proxy over the host's mutual TLS.
    eventually("the server answers through the proxy", || async {
        let (s, body) = api.proxied(first, 8000, "/marker").await;
        s == 200 && body == "made-on-one-host\n"
    })
    .await;

    // Another team's key finds no such capsule (404, not 401 or 403: nothing leaks).
    let stranger = Api {
        cp: &cp,
        key: team_key(&cp, "stranger@example.com").await,
        http: Client::new(),
    };
    let (s, body) = stranger.proxied(first, 8000, "/marker").await;
    assert_eq!(s, 404, "{body}");
    let (s, _) = stranger
        .call(Method::GET, &format!("/v1/capsules/{first}"), None)
        .await;
    assert_eq!(s, 404);

    // A snapshot template, made on that host only.
    let (s, v) = api
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"sandbox_id": first.to_string(), "name": "across"})),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let template = cp
        .store
        .get_template_for_team(cp.store.get_sandbox(first).await.unwrap().team_id, "across")
        .await
        .unwrap();
    assert_eq!(
        cp.store.template_hosts(template.id).await.unwrap(),
        vec![made_on]
    );

    // That host takes no new capsules: one from the template lands on the other, which
    // gets the template's files first.
    assert!(
        cp.store
            .set_host_status_if(made_on, HostStatus::Online, HostStatus::Draining)
            .await
            .unwrap()
    );
    let (second, placed_on) = api.create(json!({"template": "across"})).await;
    assert_eq!(placed_on, other, "the draining host takes no new capsule");
    assert_eq!(api.sh(second, "cat ~/marker").await, "made-on-one-host\n");
    assert_eq!(
        api.sh(second, "test -e /etc/issue && echo present || echo deleted")
            .await,
        "deleted\n",
        "the deletion (an overlay whiteout) travelled with the template"
    );
    let mut held = cp.store.template_hosts(template.id).await.unwrap();
    held.sort();
    let mut both = vec![host_a, host_b];
    both.sort();
    assert_eq!(held, both);

    // A second capsule there uses the copy it already has.
    let (third, _) = api.create(json!({"template": "across"})).await;
    assert_eq!(api.sh(third, "cat ~/marker").await, "made-on-one-host\n");

    for id in [first, second, third] {
        let (s, v) = api
            .call(Method::DELETE, &format!("/v1/capsules/{id}"), None)
            .await;
        assert!(s.is_success(), "{v}");
    }
    eventually("every capsule is stopped", || async {
        let mut all = true;
        for id in [first, second, third] {
            all &= cp.store.get_sandbox(id).await.unwrap().status
                == wrenn_core::lifecycle::SandboxStatus::Stopped;
        }
        all
    })
    .await;
    agent_a.stop();
    agent_b.stop();
}
