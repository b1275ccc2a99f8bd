//! Liveness, re-adoption and admission end to end: the real `wrenn` binary (`wrenn
//! dev`: control plane + in-process agent + process runtime + envd) on loopback,
//! driven over its public HTTP API while capsules are killed, stopped and the whole
//! process is crashed from the host.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use wrenn_agent::runtime::process::cgroup::CgroupDriver;
use wrenn_agent::runtime::process::{ProcessRuntime, state};

struct Dev {
    child: Child,
    base: String,
    key: String,
    http: Client,
}

impl Drop for Dev {
    fn drop(&mut self) {
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

/// `wrenn dev` on `dir` and `port`, with fast health checks and a team quota of 3.
fn start_dev(dir: &Path, port: u16) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .args(["dev", "--dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("WRENN_TEAM_MAX_CAPSULES", "3")
        // No shipped-template build taking host capacity in the background.
        .env("WRENN_DEV_BUILD_TEMPLATES", "0")
        .env("WRENN_HEALTH_INTERVAL_SECS", "1")
        .env("WRENN_HEALTH_TIMEOUT_SECS", "1")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
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
    // Keep reading, so that what it prints later never hits a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Dev {
        child,
        base: format!("http://127.0.0.1:{port}"),
        key: key.expect("wrenn dev printed an API key"),
        http: Client::new(),
    }
}

impl Dev {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", &self.key);
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

    async fn capsule(&self, id: &str) -> Value {
        let (s, v) = self
            .call(Method::GET, &format!("/v1/capsules/{id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    async fn wait_for(&self, id: &str, want: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.capsule(id).await;
            if v["status"] == want {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "capsule {id} is {}, expected {want} within {within:?}",
                v["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create(&self) -> String {
        let (s, v) = self
            .call(Method::POST, "/v1/capsules", Some(json!({})))
            .await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().expect("id").to_owned();
        self.wait_for(&id, "running", Duration::from_secs(30)).await;
        id
    }

    async fn exec(&self, id: &str, cmd: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/capsules/{id}/exec"),
            Some(json!({"cmd": "/bin/sh", "args": ["-c", cmd]})),
        )
        .await
    }
}

/// The host pid of capsule `id`'s PID 1 (found through its cgroup).
fn pid1(id: &str) -> i32 {
    let cgroup = CgroupDriver::detect()
        .unwrap()
        .sandbox("wrenn-sandboxes", id);
    state::find_pid1(&cgroup).expect("PID 1 in the capsule's cgroup")
}

fn kill(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Nothing of capsule `id` is left on the host. The agent answers (and records the
/// outcome) once every process of the capsule is killed; the cgroups, network and
/// directory go in the background right after, so this waits a while for them.
fn assert_gone(dir: &Path, id: &str) {
    let cgroup = CgroupDriver::detect()
        .unwrap()
        .sandbox("wrenn-sandboxes", id);
    let sandbox: wrenn_core::id::SandboxId = id.parse().expect("capsule id");
    let netns = Path::new("/run/netns").join(ProcessRuntime::netns_name(sandbox));
    let sandbox_dir = dir.join("sandboxes").join(id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (cgroup.exists() || netns.exists() || sandbox_dir.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!cgroup.exists(), "cgroup of {id} left");
    assert!(!netns.exists(), "netns of {id} left");
    assert!(!sandbox_dir.exists(), "the directory of {id} is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_admission_and_adoption_through_wrenn_dev() {
    let tmp = tempfile::Builder::new().prefix("wrle").tempdir().unwrap();
    let dir = tmp.path().join("state");
    let port = wrenn_core::testing::unused_listen_port();
    let dev = start_dev(&dir, port);

    // Too big for this host: refused at once, nothing created.
    let (s, v) = dev
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"memory_mb": 32768, "vcpus": 16})),
        )
        .await;
    let host_mb = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        / 1024;
    if host_mb < 32768 + 1024 {
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "capsule_too_large", "{v}");
        let (_, list) = dev.call(Method::GET, "/v1/capsules", None).await;
        assert_eq!(list, json!([]), "nothing was created");
    }

    // A capsule holding every vCPU the host admits (CPUs × the default overcommit of
    // 4): the next one is refused at once with 429, not accepted and failed later.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let vcpu_limit = cpus * 4;
    if vcpu_limit <= wrenn_core::validate::MAX_VCPUS as u64 {
        let (s, v) = dev
            .call(
                Method::POST,
                "/v1/capsules",
                Some(json!({"vcpus": vcpu_limit, "memory_mb": 256})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let hog = v["id"].as_str().unwrap().to_owned();
        dev.wait_for(&hog, "running", Duration::from_secs(30)).await;
        let (s, v) = dev
            .call(Method::POST, "/v1/capsules", Some(json!({})))
            .await;
        assert_eq!(s, 429, "{v}");
        assert_eq!(v["error"]["code"], "insufficient_capacity", "{v}");
        let (_, list) = dev.call(Method::GET, "/v1/capsules", None).await;
        assert_eq!(
            list.as_array().map(Vec::len),
            Some(1),
            "nothing was created: {list}"
        );
        let (s, v) = dev
            .call(Method::DELETE, &format!("/v1/capsules/{hog}"), None)
            .await;
        assert!(s.is_success(), "{v}");
        dev.wait_for(&hog, "stopped", Duration::from_secs(30)).await;
    }

    // kill -9 of a capsule's PID 1: error with the reason within moments, 409s, no
    // leftovers.
    let victim = dev.create().await;
    let killed = Instant::now();
    kill(pid1(&victim), "-KILL");
    let row = dev
        .wait_for(&victim, "error", Duration::from_secs(10))
        .await;
    eprintln!("kill -9 → row error after {:?}", killed.elapsed());
    let reason = row["metadata"]["error"].as_str().unwrap_or_default();
    assert!(reason.contains("SIGKILL"), "{row}");
    let (s, v) = dev.exec(&victim, "true").await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "invalid_state", "{v}");
    assert_gone(&dir, &victim);

    // A stopped (hung) envd is caught by the health checks; a paused capsule is not.
    let hung = dev.create().await;
    let paused = dev.create().await;
    let (s, v) = dev
        .call(Method::POST, &format!("/v1/capsules/{paused}/pause"), None)
        .await;
    assert!(s.is_success(), "{v}");
    dev.wait_for(&paused, "paused", Duration::from_secs(10))
        .await;
    let stopped = Instant::now();
    kill(pid1(&hung), "-STOP");
    let row = dev.wait_for(&hung, "error", Duration::from_secs(20)).await;
    eprintln!("SIGSTOP → row error after {:?}", stopped.elapsed());
    assert!(
        row["metadata"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("health checks"),
        "{row}"
    );
    assert_gone(&dir, &hung);
    assert_eq!(dev.capsule(&paused).await["status"], "paused");

    // Team quota 3: errored capsules do not count, so two more fit and the third not.
    let (s, v) = dev
        .call(Method::POST, &format!("/v1/capsules/{paused}/resume"), None)
        .await;
    assert!(s.is_success(), "{v}");
    dev.wait_for(&paused, "running", Duration::from_secs(10))
        .await;
    let survivor = dev.create().await;
    let doomed = dev.create().await;
    let (s, v) = dev
        .call(Method::POST, "/v1/capsules", Some(json!({})))
        .await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");

    // Crash the whole platform; while it is down one capsule's init dies.
    let (s, v) = dev
        .exec(
            &survivor,
            "sleep 1000 >/dev/null 2>&1 & echo $! > /tmp/survivor",
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let doomed_pid1 = pid1(&doomed);
    let mut dev = dev;
    dev.child.kill().expect("kill -9 wrenn dev");
    dev.child.wait().unwrap();
    kill(doomed_pid1, "-KILL");
    std::mem::forget(dev);

    // A process the killed one forked may hold its listening socket until it execs;
    // an operator restarting it would wait for the port too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let holders = Command::new("ss")
                .args(["-ltnp", &format!("sport = :{port}")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!("port {port} still taken 30 s after the kill: {holders}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dev = start_dev(&dir, port);
    // The survivor was adopted: exec works and its process is still there.
    let (s, v) = dev
        .exec(&survivor, "kill -0 $(cat /tmp/survivor) && echo survived")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stdout"], "survived\n", "{v}");
    assert_eq!(dev.capsule(&survivor).await["status"], "running");
    // The one that died meanwhile is reported.
    let row = dev
        .wait_for(&doomed, "error", Duration::from_secs(20))
        .await;
    assert!(
        row["metadata"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("while the host agent was down"),
        "{row}"
    );
    assert_gone(&dir, &doomed);
    for id in [&survivor, &paused] {
        let _ = dev
            .call(Method::DELETE, &format!("/v1/capsules/{id}"), None)
            .await;
    }
}
