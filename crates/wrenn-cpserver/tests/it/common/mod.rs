//! An in-process control plane for API tests: SQLite (or Postgres) store, a temp
//! `WRENN_DIR`, a recording mailer and the host-agent double, served on loopback.

use std::sync::{Arc, Mutex};

mod own_database;
pub use own_database::OwnDatabase;

use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wrenn_core::auth::{Role, UserClaims, hash_password};

use wrenn_core::config::Config;
use wrenn_core::events::EventBus;
use wrenn_core::id::{TeamId, UserId};
use wrenn_core::model::UserStatus;
use wrenn_core::repo::{NewTeam, NewUser, Store};
use wrenn_core::testing::FakeAgents;
use wrenn_cpserver::Builder;
use wrenn_cpserver::extension::{Email, MailError, Mailer, ServerContext};
use wrenn_db::testing::{TestStore, TestStores};

/// Captures every email instead of sending it.
#[derive(Default)]
pub struct RecordingMailer {
    pub sent: Mutex<Vec<Email>>,
}

impl RecordingMailer {
    /// The last email sent to `to`.
    pub fn last_to(&self, to: &str) -> Option<Email> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e.to == to)
            .cloned()
    }
}

#[async_trait::async_trait]
impl Mailer for RecordingMailer {
    async fn send(&self, email: Email) -> Result<(), MailError> {
        self.sent.lock().unwrap().push(email);
        Ok(())
    }
}

/// Options for [`TestServer::start_with`].
#[derive(Default)]
pub struct Options {
    /// Configure a mailer (otherwise sign-up activates at once).
    pub mailer: bool,
    /// Use Postgres when available (else SQLite).
    pub postgres: bool,
}

/// A running control plane.
pub struct TestServer {
    pub base: String,
    pub ctx: ServerContext,
    /// The host CA the server signs agents' certificates with.
    pub ca: Arc<wrenn_cpserver::ca::CertificateAuthority>,
    pub http: Client,
    pub mailer: Option<Arc<RecordingMailer>>,
    pub agents: Arc<FakeAgents>,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), wrenn_cpserver::ServerError>>,
    replica: Replica,
    /// The configuration variables it was started with (besides `WRENN_DIR`), which
    /// its replicas get too.
    vars: Vec<(String, String)>,
}

/// What a control plane owns besides its server: the first one of a test owns the
/// database and directory its replicas share.
enum Replica {
    First {
        db: TestStore,
        dir: tempfile::TempDir,
    },
    Second,
}

/// A user with a token for their default team.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: UserId,
    pub team: TeamId,
    pub email: String,
    pub password: String,
    pub token: String,
}

impl TestServer {
    /// SQLite, no mailer.
    pub async fn start() -> Self {
        Self::start_with(Options::default())
            .await
            .expect("sqlite is always available")
    }

    /// `None` when Postgres was asked for but is not configured (and not required).
    pub async fn start_with(opts: Options) -> Option<Self> {
        Self::start_with_vars(opts, &[]).await
    }

    /// [`TestServer::start_with`], configured with the variables `vars` besides
    /// `WRENN_DIR` (its replicas get them too).
    pub async fn start_with_vars(opts: Options, vars: &[(&str, &str)]) -> Option<Self> {
        let db = if opts.postgres {
            TestStores::postgres().await?
        } else {
            TestStores::sqlite().await
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, path) = (db.store(), dir.path().to_owned());
        Some(
            Self::serve(
                store,
                &path,
                opts.mailer,
                Replica::First { db, dir },
                vars,
                None,
            )
            .await,
        )
    }

    /// A second control plane on this one's database (its own connection pool) and
    /// secrets: what two replicas behind a load balancer share.
    pub async fn replica(&self) -> Self {
        let Replica::First { db, dir } = &self.replica else {
            panic!("make replicas of the first control plane");
        };
        let store = db.replica().await;
        let vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Self::serve(
            store,
            dir.path(),
            self.mailer.is_some(),
            Replica::Second,
            &vars,
            None,
        )
        .await
    }

    /// SQLite, no mailer, with the configuration variables `env` besides `WRENN_DIR`.
    pub async fn start_with_env(env: &[(&'static str, String)]) -> Self {
        let db = TestStores::sqlite().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, path) = (db.store(), dir.path().to_owned());
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Self::serve(store, &path, false, Replica::First { db, dir }, &vars, None).await
    }

    /// A control plane on `store` and `dir` (which the caller keeps), configured with
    /// `vars` on top of `WRENN_DIR`, on `bus` (else a fresh in-process bus). Starting
    /// another on the same store, directory and bus after stopping this one is a
    /// restart.
    pub async fn start_on(
        store: Arc<dyn Store>,
        dir: &std::path::Path,
        vars: &[(&str, &str)],
        bus: Option<Arc<dyn EventBus>>,
    ) -> Self {
        Self::serve(store, dir, false, Replica::Second, vars, bus).await
    }

    async fn serve(
        store: Arc<dyn Store>,
        dir: &std::path::Path,
        mailer: bool,
        replica: Replica,
        vars: &[(&str, &str)],
        bus: Option<Arc<dyn EventBus>>,
    ) -> Self {
        let wrenn_dir = dir.to_string_lossy().into_owned();
        let config = Config::from_lookup(|k| match k {
            "WRENN_DIR" => Some(wrenn_dir.clone()),
            other => vars
                .iter()
                .find(|(name, _)| *name == other)
                .map(|(_, v)| (*v).to_owned()),
        })
        .expect("config");
        let agents = FakeAgents::new();
        let mut builder = Builder::new(config)
            .with_store(store)
            .with_host_agents(agents.clone());
        if let Some(bus) = bus {
            builder = builder.with_event_bus(bus);
        }
        let mailer = mailer.then(|| Arc::new(RecordingMailer::default()));
        if let Some(m) = &mailer {
            builder = builder.with_mailer(m.clone());
        }
        let server = builder.build().await.expect("build server");
        let ctx = server.context().clone();
        let ca = server.secrets().ca.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let handle = tokio::spawn(server.serve(listener, async move { stop.cancelled().await }));
        Self {
            base,
            ctx,
            ca,
            http: Client::new(),
            mailer,
            agents,
            shutdown,
            handle,
            replica,
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.ctx.store.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with no credentials.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// A request authenticated as `user`.
    pub fn as_user(&self, user: &TestUser, method: Method, path: &str) -> RequestBuilder {
        self.req(method, path).bearer_auth(&user.token)
    }

    /// Creates an active user owning a fresh default team, straight in the store,
    /// and mints a JWT for them (independent of the auth routes).
    pub async fn user(&self, email: &str) -> TestUser {
        self.user_with(email, false).await
    }

    /// Like [`TestServer::user`], as a platform admin when `admin`.
    pub async fn user_with(&self, email: &str, admin: bool) -> TestUser {
        let store = self.store();
        let id = UserId::new();
        let password = "correct horse battery".to_string();
        store
            .create_user(NewUser {
                id,
                email: email.to_lowercase(),
                password_hash: Some(hash_password(&password).expect("hash")),
                name: email.split('@').next().unwrap_or("user").to_string(),
                status: UserStatus::Active,
                is_admin: admin,
            })
            .await
            .expect("create user");
        let team = TeamId::new();
        store
            .create_team(
                NewTeam {
                    id: team,
                    name: format!("{email}'s Team"),
                    slug: wrenn_core::id::new_team_slug(),
                    is_byoc: false,
                },
                id,
                true,
            )
            .await
            .expect("create team");
        let token = self.token_for(id, team, Role::Owner, email, admin);
        TestUser {
            id,
            team,
            email: email.to_lowercase(),
            password,
            token,
        }
    }

    /// A JWT for `user` acting in `team` (membership is still checked server-side).
    pub fn token_for(
        &self,
        user: UserId,
        team: TeamId,
        role: Role,
        email: &str,
        admin: bool,
    ) -> String {
        let claims = UserClaims::new(user, team, role, email, "user", admin);
        self.ctx.auth.jwt().sign_user(&claims).expect("sign")
    }

    /// Stops the server and waits for it.
    /// How many emails were sent to `to`.
    pub fn emails_to(&self, to: &str) -> usize {
        self.mailer.as_ref().map_or(0, |m| {
            m.sent.lock().unwrap().iter().filter(|e| e.to == to).count()
        })
    }

    /// Waits (emails are sent in the background) for the `n`th email to `to` and
    /// returns the token in it.
    pub async fn wait_for_token(&self, to: &str, n: usize) -> String {
        let mailer = self.mailer.as_ref().expect("a control plane with a mailer");
        for _ in 0..100 {
            if self.emails_to(to) >= n {
                let mail = mailer.last_to(to).expect("an email");
                return mail
                    .body
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Token: "))
                    .unwrap_or_else(|| panic!("no token in {:?}", mail.body))
                    .trim()
                    .to_owned();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no email #{n} to {to}");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("join").expect("clean shutdown");
    }

    /// Stops the server and waits for it, keeping what it owns: the database and
    /// directory of the first control plane stay for its replicas until it is
    /// dropped.
    pub async fn halt(&mut self) {
        self.shutdown.cancel();
        (&mut self.handle)
            .await
            .expect("join")
            .expect("clean shutdown");
    }
}

/// Waits up to `within` until lease `name` is held by `holder`; panics otherwise.
pub async fn wait_for_lease(
    store: &Arc<dyn Store>,
    name: &str,
    holder: &str,
    within: std::time::Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = store.lease_holder(name).await.expect("lease holder");
        if now.as_deref() == Some(holder) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is held by {now:?}, not {holder}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Response status and JSON body (Null when empty or not JSON).
pub async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Asserts an error envelope with `status` and `code`.
pub fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "body: {}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {}",
        got.1
    );
}

/// Sends a request; status and JSON body.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    json(req.send().await.expect("request")).await
}

/// A new user who is a `role` member of `team`, with a token acting in that team.
pub async fn member_of(s: &TestServer, team: TeamId, email: &str, role: Role) -> TestUser {
    let u = s.user(email).await;
    s.store()
        .add_member(team, u.id, role)
        .await
        .expect("add member");
    let token = s.token_for(u.id, team, role, email, false);
    TestUser { team, token, ..u }
}

/// An online regular host (registered straight in the store).
pub async fn online_host(store: &Arc<dyn Store>) -> wrenn_core::id::HostId {
    wrenn_core::testing::online_host(store.as_ref()).await
}

/// A team API key created by `creator`, straight in the store.
pub async fn make_key(
    store: &Arc<dyn Store>,
    team: TeamId,
    creator: UserId,
) -> wrenn_core::auth::ApiKey {
    let key = wrenn_core::auth::ApiKey::generate();
    store
        .create_api_key(wrenn_core::model::ApiKey {
            id: wrenn_core::id::ApiKeyId::new(),
            team_id: team,
            name: "k".into(),
            key_hash: key.hash(),
            key_prefix: key.prefix().into(),
            created_by: Some(creator),
            created_at: chrono::Utc::now(),
            last_used: None,
        })
        .await
        .expect("key");
    key
}
