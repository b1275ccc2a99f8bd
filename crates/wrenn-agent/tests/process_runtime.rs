//! The process runtime against the real thing: namespaces, cgroups, overlayfs,
//! iptables and the real `wrenn-envd` (built once with cargo). Needs root, as the
//! runtime does.
//!
//! The test binary itself is the sandbox init program: like every binary embedding the
//! agent, it must run `wrenn_agent::init::main_if_init()` before anything else. libtest
//! owns `main` here, so a constructor in `.init_array` does it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::runtime::{EnvdEndpoint, Instance, Runtime, RuntimeError, SandboxConfig};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::envd::v1::{ProcessConfig, StartRequest, data_event, process_event};

// Runs before libtest's `main`: when the runtime starts this binary as a sandbox's init
// step, this sets the sandbox up and execs envd; otherwise it returns at once.
#[used]
#[allow(unsafe_code)] // `link_section` is an unsafe attribute; the function is plain Rust.
#[unsafe(link_section = ".init_array")]
static SANDBOX_INIT: extern "C" fn() = {
    extern "C" fn sandbox_init() {
        wrenn_agent::init::main_if_init();
    }
    sandbox_init
};

/// Builds `wrenn-envd` next to this test binary (once) and returns its path.
fn envd_binary() -> PathBuf {
    static ENVD: OnceLock<PathBuf> = OnceLock::new();
    ENVD.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "wrenn-envd",
                "--bin",
                "wrenn-envd",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p wrenn-envd");
        assert!(status.success(), "building wrenn-envd failed");
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/process_runtime-… → target/<profile>/wrenn-envd
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
        let envd = profile_dir.join("wrenn-envd");
        assert!(envd.is_file(), "{} missing after the build", envd.display());
        envd
    })
    .clone()
}

/// A runtime over a fresh `$WRENN_DIR`.
struct Host {
    runtime: Arc<ProcessRuntime>,
    dir: tempfile::TempDir,
}

impl Host {
    async fn new() -> Self {
        let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
        let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
        let runtime = ProcessRuntime::new(
            Layout::new(dir.path()),
            envd,
            ProcessRuntimeOptions::default(),
        )
        .await
        .expect("the process runtime needs root, cgroups and overlayfs");
        Self {
            runtime: Arc::new(runtime),
            dir,
        }
    }

    /// Another runtime on the same `$WRENN_DIR`, as after an agent restart.
    async fn restarted(&self) -> Arc<ProcessRuntime> {
        Arc::new(
            ProcessRuntime::new(
                Layout::new(self.dir.path()),
                envd_binary(),
                ProcessRuntimeOptions::default(),
            )
            .await
            .unwrap(),
        )
    }

    fn layout(&self) -> &Layout {
        self.runtime.layout()
    }

    /// Creates a sandbox from the built-in template; it is destroyed when the guard
    /// drops, even if the test fails.
    async fn sandbox(&self) -> Sandbox {
        self.sandbox_from(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID)
            .await
    }

    async fn sandbox_from(&self, team: TeamId, template: TemplateId) -> Sandbox {
        let config = config(team, template);
        let mut guard = Sandbox::guard(&self.runtime, config.clone());
        let started = Instant::now();
        guard.instance = self.runtime.create(&config).await.expect("create");
        eprintln!("create took {:?}", started.elapsed());
        guard
    }
}

fn config(team: TeamId, template: TemplateId) -> SandboxConfig {
    SandboxConfig {
        id: SandboxId::new(),
        team_id: TeamId::new(),
        template_team_id: team,
        template_id: template,
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 1024,
        default_user: "root".into(),
        default_env: BTreeMap::new(),
    }
}

/// A sandbox that is destroyed on drop.
struct Sandbox {
    runtime: Arc<ProcessRuntime>,
    instance: Instance,
    config: SandboxConfig,
}

impl Sandbox {
    /// Destroys sandbox `config.id` on drop, whether or not it was created.
    fn guard(runtime: &Arc<ProcessRuntime>, config: SandboxConfig) -> Self {
        Self {
            runtime: runtime.clone(),
            instance: Instance {
                id: config.id,
                envd: EnvdEndpoint::Unix(PathBuf::new()),
                host_ip: String::new(),
                metadata: BTreeMap::new(),
            },
            config,
        }
    }

    fn id(&self) -> SandboxId {
        self.instance.id
    }

    /// Runs `script` with `/bin/sh -c` inside the sandbox; returns stdout and the exit code.
    async fn sh(&self, script: &str) -> (String, i32) {
        run(&self.instance, script).await
    }

    /// Like [`sh`](Self::sh), asserting success.
    async fn ok(&self, script: &str) -> String {
        let (out, code) = self.sh(script).await;
        assert_eq!(code, 0, "`{script}` failed: {out}");
        out
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let runtime = self.runtime.clone();
        let id = self.instance.id;
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(runtime.destroy(id))
                .expect("destroy");
        });
    }
}

async fn channel(instance: &Instance) -> Channel {
    let EnvdEndpoint::Unix(path) = instance.envd.clone() else {
        panic!("the process runtime serves envd on a unix socket");
    };
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to envd")
}

async fn run(instance: &Instance, script: &str) -> (String, i32) {
    let mut client = ProcessClient::new(channel(instance).await);
    let mut events = client
        .start(StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                ..Default::default()
            }),
            pty: None,
            tag: None,
            stdin: false,
        })
        .await
        .expect("start")
        .into_inner();
    let mut out = Vec::new();
    while let Some(event) = events.message().await.expect("event stream") {
        match event.event {
            Some(process_event::Event::Data(data)) => match data.output {
                Some(data_event::Output::Stdout(bytes)) => out.extend_from_slice(&bytes),
                Some(data_event::Output::Stderr(bytes)) => {
                    eprintln!(
                        "[{}] {}",
                        instance.id,
                        String::from_utf8_lossy(&bytes).trim_end()
                    );
                }
                _ => {}
            },
            Some(process_event::Event::End(end)) => {
                return (String::from_utf8_lossy(&out).into_owned(), end.exit_code);
            }
            _ => {}
        }
    }
    panic!("process stream ended without an end event");
}

fn host(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a process has exited (a zombie waiting for its parent counts as exited).
fn exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_or(true, |status| status.contains("State:\tZ"))
}

/// Sends one ICMP echo request to `addr` from inside the sandbox and reports whether
/// the reply came (an unprivileged ICMP datagram socket, as `ping` uses: sandboxes have
/// no `CAP_NET_RAW`; `net.ipv4.ping_group_range` admits the sandbox's groups).
const ICMP_ECHO: &str = r#"
import socket, struct, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.settimeout(2)
s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"wrenn-ping", (addr, 0))
while True:
    data, (source, _) = s.recvfrom(1024)
    if source == addr and data[0] == 0:
        print("reply from", source)
        break
"#;

fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_runs_envd_as_pid_1_on_a_private_overlay_of_the_host() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let id = sb.id();

    assert_eq!(sb.ok("echo hello").await, "hello\n");
    let pid1 = sb.ok("tr '\\0' ' ' < /proc/1/cmdline").await;
    assert!(pid1.starts_with("wrenn-envd "), "PID 1 is {pid1:?}");
    assert_eq!(sb.ok("hostname").await.trim(), id.to_string());
    assert_eq!(
        sb.ok("cat /proc/sys/kernel/hostname").await.trim(),
        id.to_string()
    );

    // The host's files show through, read-only: changes stay in the sandbox.
    let host_has_hostname = Path::new("/etc/hostname").exists();
    let marker = PathBuf::from(format!("/var/tmp/wrenn-host-marker-{id}"));
    std::fs::write(&marker, "from the host").unwrap();
    let seen = sb.sh(&format!("cat {}", marker.display())).await;
    let changed = sb
        .sh(&format!(
            "echo changed > {} && rm -f /etc/hostname && echo sandbox > /etc/wrenn-{id}",
            marker.display()
        ))
        .await;
    let host_marker = std::fs::read_to_string(&marker).unwrap();
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(seen, ("from the host".into(), 0));
    assert_eq!(changed.1, 0);
    assert_eq!(host_marker, "from the host");
    assert_eq!(
        sb.ok(&format!("cat {}", marker.display())).await,
        "changed\n"
    );
    assert!(
        !Path::new(&format!("/etc/wrenn-{id}")).exists(),
        "a sandbox write reached the host"
    );
    assert_eq!(Path::new("/etc/hostname").exists(), host_has_hostname);
    assert_ne!(
        sb.sh("test -e /etc/hostname").await.1,
        0,
        "deleted inside the sandbox"
    );
    assert_eq!(sb.ok(&format!("cat /etc/wrenn-{id}")).await, "sandbox\n");
    assert_eq!(
        std::fs::read_to_string(
            host_env
                .layout()
                .sandbox_dir(id)
                .join(format!("upper/etc/wrenn-{id}"))
        )
        .unwrap(),
        "sandbox\n",
        "writes land in the sandbox's upper layer"
    );
    assert_eq!(
        sb.ok("cat /etc/os-release").await,
        std::fs::read_to_string("/etc/os-release").unwrap()
    );

    // Private /proc, /tmp and /dev; the agent's directory is hidden.
    let pids = sb.ok("ls /proc | grep -c '^[0-9]'").await;
    assert!(
        pids.trim().parse::<u32>().unwrap() < 10,
        "the sandbox sees host processes: {pids}"
    );
    sb.ok("test -c /dev/null && test -c /dev/urandom && test -e /dev/pts/ptmx && test -d /dev/shm")
        .await;
    assert_eq!(
        sb.ok(&format!(
            "ls -A {} | wc -l",
            host_env.layout().root().display()
        ))
        .await
        .trim(),
        "0"
    );
    sb.ok("echo scratch > /tmp/scratch").await;
    assert!(
        !host_env
            .layout()
            .sandbox_dir(id)
            .join("upper/tmp/scratch")
            .exists(),
        "/tmp is a tmpfs"
    );
    // No mounting and no device nodes for sandboxed root.
    assert_ne!(sb.sh("mount -t tmpfs none /mnt 2>/dev/null").await.1, 0);
    assert_ne!(sb.sh("mknod /root/disk b 254 0 2>/dev/null").await.1, 0);

    // Limits: 256 MiB of memory, one CPU.
    let cgroup = host_env.runtime.sandbox_cgroup(id);
    assert_eq!(cgroup.memory_limit().unwrap(), 256 * 1024 * 1024);
    let envd_pid = cgroup.pids();
    assert!(
        !envd_pid.is_empty(),
        "envd runs inside the sandbox's cgroup"
    );
    if let wrenn_agent::runtime::process::cgroup::SandboxCgroup::V1 { cpu, .. } = &cgroup {
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
                .unwrap()
                .trim(),
            "100000"
        );
    }

    // Usage: some CPU and memory, and the disk use of the upper layer.
    sb.ok("head -c 4000000 /dev/urandom > /root/blob").await;
    let stats = host_env.runtime.stats(&sb.instance).await.unwrap();
    assert!(stats.mem_bytes > 0, "{stats:?}");
    assert!(stats.disk_bytes >= 4_000_000, "{stats:?}");
    assert!(stats.cpu_pct >= 0.0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_the_sandbox_and_resume_continues_with_its_memory() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let counter = host_env
        .layout()
        .sandbox_dir(sb.id())
        .join("upper/root/counter");
    // A shell whose loop variable lives only in memory.
    sb.ok("sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/next; mv /root/next /root/counter; sleep 0.01; done' >/dev/null 2>&1 &")
        .await;
    let read = || -> u64 {
        std::fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while read() < 5 {
        assert!(Instant::now() < deadline, "the counter never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    host_env.runtime.pause(&sb.instance).await.unwrap();
    eprintln!("pause took {:?}", started.elapsed());
    let frozen_at = read();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(read(), frozen_at, "the counter advanced while paused");
    assert!(
        host_env
            .runtime
            .sandbox_cgroup(sb.id())
            .is_frozen()
            .unwrap()
    );

    let started = Instant::now();
    host_env.runtime.resume(&sb.instance).await.unwrap();
    eprintln!("resume took {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = read();
    assert!(
        after > frozen_at,
        "the counter did not continue ({after} <= {frozen_at})"
    );
    assert!(
        after < frozen_at + 200,
        "the counter restarted or jumped instead of continuing ({frozen_at} → {after})"
    );
    assert_eq!(sb.ok("echo alive").await, "alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernate_frees_the_sandbox_and_restore_brings_back_its_files() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let id = sb.id();
    sb.ok("mkdir -p /root/work && echo kept > /root/work/note && sleep 1000 >/dev/null 2>&1 &")
        .await;
    let cgroup = host_env.runtime.sandbox_cgroup(id);

    host_env.runtime.hibernate(&sb.instance).await.unwrap();
    assert!(!host_env.layout().sandbox_dir(id).exists());
    assert!(!cgroup.exists(), "memory is freed: the cgroup is gone");
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists()
    );
    assert!(
        host_env
            .layout()
            .snapshot_dir(id)
            .join("upper/root/work/note")
            .is_file()
    );
    // Hibernated state survives an agent restart.
    let restarted = host_env.restarted().await;
    let listed = restarted.hibernated().await.unwrap();
    assert_eq!(listed, vec![sb.config.clone()]);

    let instance = host_env.runtime.restore(&sb.config).await.unwrap();
    assert_eq!(
        run(&instance, "cat /root/work/note").await,
        ("kept\n".into(), 0)
    );
    let (procs, _) = run(&instance, "cat /proc/[0-9]*/comm 2>/dev/null").await;
    assert!(
        !procs.contains("sleep"),
        "processes do not survive hibernation: {procs}"
    );
    assert!(host_env.runtime.hibernated().await.unwrap().is_empty());
    assert!(!host_env.layout().snapshot_dir(id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_a_template_that_new_sandboxes_start_from() {
    let host_env = Host::new().await;
    let team = TeamId::new();
    let first = TemplateId::new();
    let second = TemplateId::new();

    let original = host_env.sandbox().await;
    original
        .ok("mkdir -p /opt/wrenn && echo one > /opt/wrenn/one && rm /etc/os-release")
        .await;
    let size = host_env
        .runtime
        .snapshot(&original.instance, team, first)
        .await
        .unwrap();
    assert!(size > 0);
    assert!(
        host_env
            .layout()
            .template_dir(team, first)
            .join("template.json")
            .is_file()
    );
    assert_eq!(original.ok("echo still running").await, "still running\n");

    let child = host_env.sandbox_from(team, first).await;
    assert_eq!(child.ok("cat /opt/wrenn/one").await, "one\n");
    assert_ne!(
        child.sh("test -e /etc/os-release").await.1,
        0,
        "deletions carry over"
    );
    assert!(
        child.ok("ls /usr/bin").await.contains("sh"),
        "the host base is there"
    );
    child.ok("echo two > /opt/wrenn/two").await;

    // A template of a template stands alone: deleting its parent does not matter.
    host_env
        .runtime
        .snapshot(&child.instance, team, second)
        .await
        .unwrap();
    drop(child);
    std::fs::remove_dir_all(host_env.layout().template_dir(team, first)).unwrap();
    let grandchild = host_env.sandbox_from(team, second).await;
    assert_eq!(
        grandchild.ok("cat /opt/wrenn/one /opt/wrenn/two").await,
        "one\ntwo\n"
    );

    // Snapshotting onto an existing template is refused.
    let err = host_env
        .runtime
        .snapshot(&grandchild.instance, team, second)
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::FailedPrecondition(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_has_its_own_network_with_nat_for_egress() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let net = host_env
        .runtime
        .network(sb.id())
        .expect("network of a running sandbox");
    assert_eq!(sb.instance.host_ip, net.sandbox_addr.to_string());

    let nat = host(
        "iptables",
        &["-w", "5", "-t", "nat", "-S", "WRENN-PROC-POST"],
    );
    assert!(
        nat.contains("-s 10.200.0.0/16 ! -d 10.200.0.0/16 -j MASQUERADE"),
        "{nat}"
    );
    assert!(
        host("iptables", &["-w", "5", "-t", "nat", "-S", "POSTROUTING"])
            .contains("-j WRENN-PROC-POST")
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let host_link = host("ip", &["-4", "-o", "addr", "show", "dev", &net.veth]);
    assert!(
        host_link.contains(&format!("{}/30", net.host_addr)),
        "{host_link}"
    );

    let routes = host("ip", &["-n", &net.netns, "route"]);
    assert!(
        routes.contains(&format!("default via {} dev eth0", net.host_addr)),
        "{routes}"
    );
    let inside = sb.ok("cat /proc/net/route").await;
    assert!(
        inside.lines().any(|l| l.starts_with("eth0\t00000000")),
        "{inside}"
    );
    let ping = sb
        .ok(&format!("python3 -c '{ICMP_ECHO}' {}", net.host_addr))
        .await;
    assert_eq!(
        ping.trim(),
        format!("reply from {}", net.host_addr),
        "the sandbox reaches the host end of its veth"
    );

    // The agent reaches services in the sandbox at host_ip (what the port proxy does).
    sb.ok("python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 &")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect((sb.instance.host_ip.as_str(), 8080)).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!(
                "cannot reach the sandbox at {}:8080: {e}",
                sb.instance.host_ip
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_removes_processes_mounts_network_cgroups_and_directories() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let id = sb.id();
    let runtime = host_env.runtime.clone();
    let net = runtime.network(id).unwrap();
    let cgroup = runtime.sandbox_cgroup(id);
    let pids = cgroup.pids();
    sb.ok("sleep 1000 >/dev/null 2>&1 &").await;
    runtime.pause(&sb.instance).await.unwrap();

    runtime.destroy(id).await.unwrap();
    assert!(pids.iter().all(|p| exited(*p)), "processes survived");
    assert!(!cgroup.exists());
    assert!(!Path::new("/run/netns").join(&net.netns).exists());
    assert!(!Path::new("/sys/class/net").join(&net.veth).exists());
    assert!(!host_env.layout().sandbox_dir(id).exists());
    assert!(!host_mounts().contains(&id.to_string()));
    assert!(matches!(
        runtime.stats(&sb.instance).await,
        Err(RuntimeError::NotFound(_))
    ));
    // Idempotent (the guard destroys it again).
    runtime.destroy(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_after_an_agent_crash_removes_leftovers_but_keeps_hibernated_sandboxes() {
    let host_env = Host::new().await;
    let leftover = host_env.sandbox().await;
    let kept = host_env.sandbox().await;
    let hibernated = host_env.sandbox().await;
    hibernated.ok("echo zzz > /root/dream").await;
    host_env
        .runtime
        .hibernate(&hibernated.instance)
        .await
        .unwrap();
    let leftover_cgroup = host_env.runtime.sandbox_cgroup(leftover.id());
    let leftover_pids = leftover_cgroup.pids();

    // A new agent knows nothing of the running sandboxes.
    let restarted = host_env.restarted().await;
    let swept = restarted.sweep(&[kept.id()]).await.unwrap();
    assert_eq!(swept, vec![leftover.id()]);
    assert!(
        leftover_pids.iter().all(|p| exited(*p)),
        "processes survived the sweep"
    );
    assert!(!leftover_cgroup.exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(leftover.id()))
            .exists()
    );
    assert!(!host_env.layout().sandbox_dir(leftover.id()).exists());

    assert_eq!(kept.ok("echo kept").await, "kept\n");
    let listed = restarted.hibernated().await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![hibernated.id()]
    );
    let instance = restarted.restore(&hibernated.config).await.unwrap();
    assert_eq!(run(&instance, "cat /root/dream").await, ("zzz\n".into(), 0));
    restarted.destroy(hibernated.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_leaves_nothing_behind() {
    let host_env = Host::new().await;
    let runtime = &host_env.runtime;
    let unknown = config(TeamId::new(), TemplateId::new());
    let err = runtime.create(&unknown).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::TemplateNotFound(t) if t == unknown.template_id),
        "{err}"
    );
    let id = unknown.id;
    assert!(!host_env.layout().sandbox_dir(id).exists());
    assert!(!runtime.sandbox_cgroup(id).exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists()
    );

    let mut no_cpu = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);
    no_cpu.vcpus = 0;
    assert!(matches!(
        runtime.create(&no_cpu).await,
        Err(RuntimeError::FailedPrecondition(_))
    ));
    assert!(!host_env.layout().sandbox_dir(no_cpu.id).exists());

    let sb = host_env.sandbox().await;
    let twice = runtime.create(&sb.config).await.unwrap_err();
    assert!(
        matches!(twice, RuntimeError::FailedPrecondition(_)),
        "{twice}"
    );
    assert_eq!(sb.ok("echo unharmed").await, "unharmed\n");

    let missing = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);
    assert!(matches!(
        runtime.restore(&missing).await,
        Err(RuntimeError::NotFound(_))
    ));
    runtime.destroy(missing.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_fails_to_start_reports_why_and_leaves_nothing_behind() {
    let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
    let options = ProcessRuntimeOptions {
        // Not an init program: `sh` tries to run a script named after the init argument.
        init_program: Some("/bin/sh".into()),
        ..Default::default()
    };
    let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
    let runtime = ProcessRuntime::new(Layout::new(dir.path()), envd, options)
        .await
        .unwrap();
    let config = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);

    let err = runtime.create(&config).await.unwrap_err().to_string();
    assert!(err.contains("exited during start"), "{err}");
    assert!(
        err.contains("__wrenn-sandbox-init"),
        "the log tail is reported: {err}"
    );
    let id = config.id;
    assert!(!runtime.layout().sandbox_dir(id).exists());
    assert!(!runtime.sandbox_cgroup(id).exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists()
    );
}
