//! A `wrenn dev` of the real binary on a free loopback port, driven over its API with
//! the API key it prints; stopped (SIGTERM, as a user would) when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

/// A running `wrenn dev`.
pub(crate) struct Dev {
    child: Child,
    /// `http://127.0.0.1:{port}`.
    pub(crate) base: String,
    /// The API key it printed.
    pub(crate) key: String,
    /// Its listen port.
    pub(crate) port: u16,
    /// A client for it.
    pub(crate) http: Client,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SIGTERM: the agent hibernates what is left and the server shuts down.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `wrenn dev` with the scenario's settings.
pub(crate) fn start_dev() -> Dev {
    start_dev_with(&[])
}

/// Starts `wrenn dev` with the scenario's settings plus `env`.
pub(crate) fn start_dev_with(env: &[(&str, &str)]) -> Dev {
    // The default image, built once per machine and shared through WRENN_IMAGE_CACHE.
    wrenn_agent::image::ensure_shared_for_tests().expect("the default image");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = wrenn_core::testing::unused_listen_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .args(["dev", "--dir"])
        .arg(dir.path().join("state"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("WRENN_HIBERNATE_AFTER_SECS", "2")
        // Team snapshots every second, so stats and usage fill within a test.
        .env("WRENN_METRICS_SAMPLE_INTERVAL_SECS", "1")
        // A VM's first create waits for the warm snapshot the agent makes at start (a
        // guest boot: seconds under TCG); the API then still answers `201 running`.
        .env("WRENN_CREATE_WAIT_MS", "60000")
        // Pause, resume and destroy answer settled when the agent is done within the
        // grace: generous here, so that a loaded CI machine still shows the outcome.
        .env("WRENN_LIFECYCLE_WAIT_MS", "30000")
        .env(
            wrenn_agent::image::CACHE_ENV,
            wrenn_agent::image::test_store_dir(),
        )
        .env("RUST_LOG", "warn")
        // The shipped templates (a pip install) are built only where a test asks.
        .env("WRENN_DEV_BUILD_TEMPLATES", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start wrenn dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut key = None;
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if let Some(k) = line.strip_prefix("export WRENN_API_KEY=") {
            key = Some(k.to_owned());
            break;
        }
    }
    // Keep reading what else it prints, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    Dev {
        child,
        base: format!("http://127.0.0.1:{port}"),
        port,
        key: key.expect("wrenn dev printed an API key"),
        http: Client::new(),
        _dir: dir,
    }
}

impl Dev {
    /// The state directory of this `wrenn dev`.
    pub(crate) fn state_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("state")
    }

    /// A JWT of the development admin (a platform admin), logged in with the
    /// credentials `wrenn dev` keeps in its directory.
    pub(crate) async fn admin_token(&self) -> String {
        let creds: Value = serde_json::from_slice(
            &std::fs::read(self.state_dir().join("dev-credentials.json")).expect("credentials"),
        )
        .expect("credentials JSON");
        let resp = self
            .http
            .post(format!("{}/v1/auth/login", self.base))
            .json(&json!({"email": creds["email"], "password": creds["password"]}))
            .send()
            .await
            .expect("login");
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("login body");
        body["token"].as_str().expect("token").to_owned()
    }

    pub(crate) fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub(crate) async fn status(&self, id: &str) -> String {
        let (s, v) = self
            .call(Method::GET, &format!("/v1/capsules/{id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v["status"].as_str().unwrap_or_default().to_owned()
    }

    pub(crate) async fn wait_for(&self, id: &str, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.status(id).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("capsule {id} is {last}, expected {want} within {within:?}");
    }

    pub(crate) async fn create(&self, body: Value) -> String {
        let (s, v) = self.call(Method::POST, "/v1/capsules", Some(body)).await;
        // The answer waits for the start (WRENN_CREATE_WAIT_MS): ready to use.
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["status"], "running", "{v}");
        let id = v["id"].as_str().expect("id").to_owned();
        self.wait_for(&id, "running", Duration::from_secs(30)).await;
        id
    }

    pub(crate) async fn exec(&self, id: &str, cmd: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/capsules/{id}/exec"),
            Some(json!({"cmd": "/bin/sh", "args": ["-c", cmd]})),
        )
        .await
    }

    pub(crate) async fn sh(&self, id: &str, cmd: &str) -> String {
        let (s, v) = self.exec(id, cmd).await;
        assert_eq!(s, 200, "{cmd}: {v}");
        assert_eq!(v["exit_code"], 0, "{cmd}: {v}");
        v["stdout"].as_str().unwrap_or_default().to_owned()
    }
}
