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

/// Agent `n`'s share of the host: its own cgroup parent, address range, firewall
/// table, veth prefix and uid ranges.
fn share(n: u32) -> Vec<(&'static str, String)> {
    let pid = std::process::id();
    vec![
        ("WRENN_CGROUP_PARENT", format!("wrenn-share-{pid}-{n}")),
        ("WRENN_CAPSULE_NETWORK", format!("10.{}.0.0/16", 240 + n)),
        ("WRENN_FIREWALL_TABLE", format!("wrenn_share_{pid}_{n}")),
        ("WRENN_VETH_PREFIX", format!("ws{n}v")),
        (
            "WRENN_CAPSULE_ID_BASE",
            format!("{}", (1u64 << 31) + u64::from(n) * 64 * 65536),
        ),
        ("WRENN_CAPSULE_ID_RANGES", "64".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_sharing_a_host_each_keep_to_their_own_share_of_it() {
    let cp = ControlPlaneUnderTest::start().await;
    let dirs = [
        tempfile::Builder::new().prefix("sa").tempdir().unwrap(),
        tempfile::Builder::new().prefix("sb").tempdir().unwrap(),
    ];
    let shares = [share(1), share(2)];
    let mut hosts = Vec::new();
    let mut agents = Vec::new();
    for (dir, share) in dirs.iter().zip(&shares) {
        let listen = format!("127.0.0.1:{}", wrenn_core::testing::unused_listen_port());
        let (id, token) = cp.pending_host().await;
        let env: Vec<(&str, &str)> = share.iter().map(|(k, v)| (*k, v.as_str())).collect();
        agents.push(AgentProcess::start_with(
            &cp,
            dir.path(),
            &listen,
            Some(&token),
            &env,
        ));
        eventually("the host registers and comes online", || async {
            cp.store.get_host(id).await.unwrap().status == HostStatus::Online
        })
        .await;
        hosts.push(id);
    }
    let api = Api {
        cp: &cp,
        key: team_key(&cp, "share@example.com").await,
        http: Client::new(),
    };
    // One capsule on each agent (the other drained while it is placed).
    let mut capsules = Vec::new();
    for (i, &host) in hosts.iter().enumerate() {
        let other = hosts[1 - i];
        assert!(
            cp.store
                .set_host_status_if(other, HostStatus::Online, HostStatus::Draining)
                .await
                .unwrap()
        );
        let (id, placed) = api.create(json!({})).await;
        assert_eq!(placed, host);
        assert!(
            cp.store
                .set_host_status_if(other, HostStatus::Draining, HostStatus::Online)
                .await
                .unwrap()
        );
        capsules.push(id);
    }

    let mut addresses = Vec::new();
    for (n, (&id, share)) in capsules.iter().zip(&shares).enumerate() {
        let get = |k: &str| share.iter().find(|(name, _)| *name == k).unwrap().1.clone();
        // Its address comes from its agent's range.
        let ip = cp.store.get_sandbox(id).await.unwrap().host_ip;
        assert!(
            ip.starts_with(&format!("10.{}.", 241 + n)),
            "capsule {n} got {ip}"
        );
        addresses.push(ip);
        // Its cgroups sit under its agent's parent, in every hierarchy.
        let parent = get("WRENN_CGROUP_PARENT");
        assert!(
            std::path::Path::new(&format!("/sys/fs/cgroup/pids/{parent}/{id}")).is_dir()
                || std::path::Path::new(&format!("/sys/fs/cgroup/{parent}/{id}")).is_dir(),
            "capsule {n}'s cgroup is under {parent}"
        );
        // Its root is a host uid from its agent's ranges.
        let base: u64 = get("WRENN_CAPSULE_ID_BASE").parse().unwrap();
        let map = api.sh(id, "cat /proc/self/uid_map").await;
        let host_uid: u64 = map.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            (base..base + 64 * 65536).contains(&host_uid),
            "capsule {n}'s uid map {map:?} is outside {base}.."
        );
        // Its agent's firewall is a table of its own.
        let table = get("WRENN_FIREWALL_TABLE");
        let listed = std::process::Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
            .unwrap();
        assert!(listed.status.success(), "table inet {table} exists");
    }

    // Neither capsule reaches the other, whichever agent runs it.
    for (i, &id) in capsules.iter().enumerate() {
        let (s, v) = api
            .call(
                Method::POST,
                &format!("/v1/capsules/{id}/exec"),
                Some(json!({"cmd": "python3", "args": ["-m", "http.server", "8000", "--bind", "0.0.0.0"], "background": true})),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let own = &addresses[i];
        eventually("the capsule's own server answers inside it", || async {
            api.sh(
                id,
                &format!(
                    "timeout 2 bash -c 'echo > /dev/tcp/{own}/8000' && echo open || echo closed"
                ),
            )
            .await
                == "open\n"
        })
        .await;
    }
    for (i, &id) in capsules.iter().enumerate() {
        let peer = &addresses[1 - i];
        let got = api
            .sh(
                id,
                &format!(
                    "timeout 3 bash -c 'echo > /dev/tcp/{peer}/8000' && echo open || echo closed"
                ),
            )
            .await;
        assert_eq!(
            got, "closed\n",
            "capsule {i} reached the other agent's capsule at {peer}"
        );
    }

    for id in &capsules {
        let (s, v) = api
            .call(Method::DELETE, &format!("/v1/capsules/{id}"), None)
            .await;
        assert!(s.is_success(), "{v}");
    }
    for agent in agents {
        agent.stop();
    }
    for share in &shares {
        let get = |k: &str| share.iter().find(|(name, _)| *name == k).unwrap().1.clone();
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &get("WRENN_FIREWALL_TABLE")])
            .output();
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(get("WRENN_CGROUP_PARENT")));
            }
        }
    }
}
