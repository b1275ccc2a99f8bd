//! Template builds end to end through `wrenn dev`: a recipe runs in a real capsule,
//! becomes a platform template whose capsules have the recipe's files and run its
//! start command (reached through the capsule proxy); a failing step and a cancel
//! leave no template and no capsule behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::repo::Store;

use crate::dev::{Dev, start_dev};

/// Admin calls with a platform admin's JWT.
struct Admin<'a> {
    dev: &'a Dev,
    token: String,
}

impl Admin<'_> {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self
            .dev
            .http
            .request(method, format!("{}{path}", self.dev.base))
            .bearer_auth(&self.token);
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

    async fn build(&self, body: Value) -> String {
        let (s, v) = self
            .call(Method::POST, "/v1/admin/builds", Some(body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().expect("build id").to_owned()
    }

    /// Queues `config` with `archive`, as the multipart form.
    async fn build_with_archive(&self, config: Value, archive: Vec<u8>) -> String {
        let form = Form::new()
            .text("config", config.to_string())
            .part("archive", Part::bytes(archive).file_name("context.tar.gz"));
        let resp = self
            .dev
            .http
            .post(format!("{}/v1/admin/builds", self.dev.base))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["id"].as_str().expect("build id").to_owned()
    }

    async fn get(&self, id: &str) -> Value {
        let (s, v) = self
            .call(Method::GET, &format!("/v1/admin/builds/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// Waits until the build satisfies `done`.
    async fn wait(&self, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let b = self.get(id).await;
            if done(&b) {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "build {id} did not get there in {within:?}: {b:#}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn finished(&self, id: &str) -> Value {
        self.wait(id, Duration::from_secs(300), |b| {
            !matches!(b["status"].as_str(), Some("pending" | "running"))
        })
        .await
    }
}

fn logs(build: &Value) -> Vec<String> {
    build["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| l.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The `wrenn dev` database, read alongside it (SQLite, WAL).
async fn store(dev: &Dev) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dev.state_dir().join("wrenn.db").display());
    wrenn_db::connect(&url)
        .await
        .expect("open the dev database")
}

/// Waits until the build capsule `id` is stopped (destroyed).
async fn assert_destroyed(store: &Arc<dyn Store>, build: &Value) {
    let id: SandboxId = build["sandbox_id"]
        .as_str()
        .expect("the build recorded its capsule")
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = store.get_sandbox(id).await.unwrap().status;
        if status == SandboxStatus::Stopped {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "build capsule {id} is still {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn template_names(dev: &Dev) -> Vec<String> {
    let (s, v) = dev.call(Method::GET, "/v1/snapshots", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_becomes_a_template_whose_capsules_have_its_files_and_start_command() {
    let dev = start_dev();
    let admin = Admin {
        token: dev.admin_token().await,
        dev: &dev,
    };
    let db = store(&dev).await;
    let id = admin
        .build(json!({
            "name": "web-demo",
            "recipe": [
                "ENV GREETING=hello from the build",
                "WORKDIR /srv/demo",
                "RUN echo \"$GREETING\" > index.html && echo wrote index.html",
                "test \"$(pwd)\" = /srv/demo",
                "USER root",
                "RUN test \"$(id -un)\" = root && test \"$GREETING\" = 'hello from the build' && touch /root/built-as-root /var/cache/apt/archives/leftover.deb",
                "START python3 -m http.server 8000",
            ],
            "healthcheck": "curl -fsS http://127.0.0.1:8000/index.html",
        }))
        .await;
    let built = admin.finished(&id).await;
    assert_eq!(built["status"], "success", "{built:#}");
    assert_eq!(
        (
            built["current_step"].as_i64(),
            built["total_steps"].as_i64()
        ),
        (Some(7), Some(7))
    );
    let lines = logs(&built);
    for want in [
        "step 1/7: ENV GREETING=hello from the build",
        "step 7/7: START python3 -m http.server 8000",
        "wrote index.html",
        "healthcheck passed (attempt",
        "template \"web-demo\" registered",
        "pre-build (skip_pre_post skips this)",
        "post-build (skip_pre_post skips this)",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "no {want:?} in {lines:#?}"
        );
    }
    assert!(
        built["started_at"].is_string() && built["completed_at"].is_string(),
        "{built}"
    );
    assert_eq!(built["default_env"]["GREETING"], "hello from the build");
    assert_eq!(
        built["default_user"], "root",
        "USER sets the template's user"
    );
    assert_destroyed(&db, &built).await;
    assert!(template_names(&dev).await.contains(&"web-demo".to_owned()));

    // A capsule from the template: the recipe's files and environment, and its start
    // command serving on port 8000, reached through the capsule proxy.
    let cl = dev.create(json!({"template": "web-demo"})).await;
    assert_eq!(
        dev.sh(&cl, "cat /srv/demo/index.html").await,
        "hello from the build\n"
    );
    assert_eq!(
        dev.sh(&cl, "echo \"$GREETING\"").await,
        "hello from the build\n"
    );
    assert_eq!(
        dev.sh(&cl, "id -un; test -f /root/built-as-root").await,
        "root\n"
    );
    assert_eq!(
        dev.sh(
            &cl,
            "test -e /var/cache/apt/archives/leftover.deb || echo cleaned; \
             ls /var/lib/apt/lists | grep -q Packages && echo lists"
        )
        .await,
        "cleaned\nlists\n",
        "the post-build step removed downloaded packages and kept the package lists"
    );
    let name = format!("8000-{cl}.localhost");
    let client = Client::builder()
        .resolve(&name, SocketAddr::from(([127, 0, 0, 1], dev.port)))
        .build()
        .unwrap();
    let url = format!("http://{name}:{}/index.html", dev.port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = client.get(&url).header("X-API-Key", &dev.key).send().await;
        if let Ok(r) = resp
            && r.status() == StatusCode::OK
        {
            assert_eq!(r.text().await.unwrap(), "hello from the build\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the start command does not serve {url}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Started once (one Python process), as the template's start command.
    let procs = dev.sh(&cl, "pgrep -xc python3").await;
    assert_eq!(procs.trim(), "1", "start command processes");

    // While capsules use it, the template cannot be deleted; afterwards it can.
    let (s, v) = admin
        .call(Method::DELETE, "/v1/admin/templates/web-demo", None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = dev
        .call(Method::DELETE, &format!("/v1/capsules/{cl}"), None)
        .await;
    assert!(s.is_success(), "{v}");
    let (s, v) = admin
        .call(Method::DELETE, "/v1/admin/templates/web-demo", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert!(!template_names(&dev).await.contains(&"web-demo".to_owned()));
    let (s, v) = dev
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "web-demo"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_step_or_a_cancel_registers_nothing_and_leaves_no_capsule() {
    let dev = start_dev();
    let admin = Admin {
        token: dev.admin_token().await,
        dev: &dev,
    };
    let db = store(&dev).await;
    // Both run at once (two build workers).
    let failing = admin
        .build(json!({
            "name": "broken",
            "recipe": ["RUN echo about to fail", "RUN echo oops >&2; exit 3", "RUN echo never runs"],
            "skip_pre_post": true,
        }))
        .await;
    let slow = admin
        .build(json!({"name": "sleepy", "recipe": ["RUN echo sleeping; sleep 600"], "skip_pre_post": true}))
        .await;

    let failed = admin.finished(&failing).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(failed["error"], "step 2 exited with status 3", "{failed:#}");
    assert_eq!(failed["current_step"], 2);
    let lines = logs(&failed);
    assert!(lines.iter().any(|l| l == "oops"), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains("never runs")),
        "{lines:#?}"
    );
    assert_destroyed(&db, &failed).await;

    // Cancel while the step runs: the step is killed, the capsule destroyed.
    admin
        .wait(&slow, Duration::from_secs(120), |b| {
            logs(b).iter().any(|l| l == "sleeping")
        })
        .await;
    let (s, v) = admin
        .call(
            Method::POST,
            &format!("/v1/admin/builds/{slow}/cancel"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let cancelled = admin.get(&slow).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_destroyed(&db, &cancelled).await;
    let (s, v) = admin
        .call(
            Method::POST,
            &format!("/v1/admin/builds/{slow}/cancel"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        admin.get(&slow).await["status"],
        "cancelled",
        "stays cancelled"
    );

    let names = template_names(&dev).await;
    assert!(
        !names.contains(&"broken".to_owned()) && !names.contains(&"sleepy".to_owned()),
        "{names:?}"
    );
    let (s, v) = dev
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "sleepy"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

/// A gzip-compressed tar of `files` (path, content, mode), made by the system's `tar`.
fn tar_gz(files: &[(&str, &str, u32)]) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for (name, content, mode) in files {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let out = dir.path().join("context.tar.gz");
    let ok = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar");
    std::fs::read(out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_steps_take_files_from_the_archive_and_skip_pre_post_adds_no_steps() {
    let dev = start_dev();
    let admin = Admin {
        token: dev.admin_token().await,
        dev: &dev,
    };
    let archive = tar_gz(&[
        ("app/main.py", "print('hello from the archive')\n", 0o644),
        ("app/lib/util.py", "X = 1\n", 0o644),
        ("bin/run.sh", "#!/bin/sh\necho running\n", 0o755),
        ("config.toml", "debug = true\n", 0o600),
    ]);
    let id = admin
        .build_with_archive(
            json!({
                "name": "copy-demo",
                "skip_pre_post": true,
                "recipe": [
                    "WORKDIR /opt/app",
                    // A directory's contents, into the working directory.
                    "COPY app ./",
                    // Several sources into a directory that does not exist yet.
                    "COPY bin/run.sh config.toml /etc/demo/",
                    // One file to a new name.
                    "COPY config.toml settings.toml",
                    "RUN --timeout=30s python3 main.py && /etc/demo/run.sh && ls /tmp/build-files",
                    "USER root",
                    "RUN touch /var/cache/apt/archives/kept.deb",
                ],
            }),
            archive,
        )
        .await;
    let built = admin.finished(&id).await;
    assert_eq!(built["status"], "success", "{built:#}");
    let lines = logs(&built);
    for want in [
        "hello from the archive",
        "running",
        "copied app to /opt/app/./",
        "removing /tmp/build-files",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "no {want:?} in {lines:#?}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("pre-build") || l.contains("post-build")),
        "skip_pre_post: {lines:#?}"
    );

    let cl = dev.create(json!({"template": "copy-demo"})).await;
    // Copied files belong to the user the recipe had when it copied them.
    let user = dev.sh(&cl, "stat -c %U /opt/app/main.py").await;
    assert_ne!(user.trim(), "", "owner");
    assert_eq!(
        dev.sh(
            &cl,
            "cat /opt/app/lib/util.py /opt/app/settings.toml; stat -c '%a %U' /etc/demo/run.sh /etc/demo/config.toml /opt/app/lib/util.py"
        )
        .await,
        format!(
            "X = 1\ndebug = true\n755 {u}\n600 {u}\n644 {u}\n",
            u = user.trim()
        )
    );
    assert_eq!(
        dev.sh(
            &cl,
            "test -e /tmp/build-files || echo gone; test -e /var/cache/apt/archives/kept.deb && echo kept"
        )
        .await,
        "gone\nkept\n",
        "the build files are removed; skip_pre_post leaves the package cache alone"
    );

    // A COPY of what the archive does not hold fails the build, with the reason.
    let missing = admin
        .build_with_archive(
            json!({"name": "copy-missing", "skip_pre_post": true, "recipe": ["COPY nope /opt/x"]}),
            tar_gz(&[("here.txt", "x", 0o644)]),
        )
        .await;
    let failed = admin.finished(&missing).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert!(
        logs(&failed)
            .iter()
            .any(|l| l.contains("COPY: nope is not in the build archive")),
        "{failed:#}"
    );
    // A step that outlives its --timeout is killed and fails the build.
    let slow = admin
        .build(json!({"name": "too-slow", "skip_pre_post": true, "recipe": ["RUN --timeout=2s sleep 60"]}))
        .await;
    let timed_out = admin.finished(&slow).await;
    assert_eq!(timed_out["status"], "failed", "{timed_out:#}");
    assert!(
        timed_out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out after 2s; the process was killed"),
        "{timed_out:#}"
    );
}
