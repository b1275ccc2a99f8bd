//! The process runtime against the real thing: namespaces, cgroups, overlayfs,
//! nftables and the real `wrenn-envd` (built once with cargo). Needs root, as the
//! runtime does.
//! The test binary is the sandbox init program (see `main.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{envd_binary, test_image};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use wrenn_agent::disk;
use wrenn_agent::image::ImageRef;
use wrenn_agent::runtime::process::cgroup::{IoLimits, SandboxCgroup};
use wrenn_agent::runtime::process::{self, ProcessRuntime, ProcessRuntimeOptions, template};
use wrenn_agent::runtime::{EnvdEndpoint, Instance, Runtime, RuntimeError, SandboxConfig};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;
use wrenn_proto::envd::v1::filesystem_client::FilesystemClient;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::envd::v1::{
    ListDirRequest, ProcessConfig, StartRequest, StatRequest, data_event, process_event,
};

/// Options with the default image as the base.
async fn options() -> ProcessRuntimeOptions {
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    ProcessRuntimeOptions {
        base_image: Some(image.reference()),
        ..ProcessRuntimeOptions::default()
    }
}

/// A runtime over a fresh `$WRENN_DIR`.
struct Host {
    runtime: Arc<ProcessRuntime>,
    dir: tempfile::TempDir,
}

impl Host {
    async fn new() -> Self {
        Self::with(ProcessRuntimeOptions::default()).await
    }

    async fn with(mut opts: ProcessRuntimeOptions) -> Self {
        if opts.base_image.is_none() {
            opts.base_image = options().await.base_image;
        }
        let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
        let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
        let runtime = ProcessRuntime::new(Layout::new(dir.path()), envd, opts)
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
            ProcessRuntime::new(Layout::new(self.dir.path()), envd_binary(), options().await)
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
        self.sandbox_with(config(team, template)).await
    }

    async fn sandbox_with(&self, config: SandboxConfig) -> Sandbox {
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
            let handle = tokio::runtime::Handle::current();
            handle.block_on(runtime.destroy(id)).expect("destroy");
            // The teardown after the answer finishes before the test goes on (or ends).
            handle.block_on(runtime.removals_settled());
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
async fn a_sandbox_runs_envd_as_pid_1_on_a_private_overlay_of_the_image() {
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

    // The image's files show through, read-only (the host's do not): changes stay in
    // the sandbox.
    let image_root = test_image().rootfs();
    let marker = PathBuf::from(format!("/var/tmp/wrenn-host-marker-{id}"));
    std::fs::write(&marker, "from the host").unwrap();
    let seen = sb
        .sh(&format!("cat {} 2>/dev/null", marker.display()))
        .await;
    let changed = sb
        .sh(&format!(
            "echo changed > {} && rm -f /etc/hostname && echo sandbox > /etc/wrenn-{id}",
            marker.display()
        ))
        .await;
    let host_marker = std::fs::read_to_string(&marker).unwrap();
    std::fs::remove_file(&marker).unwrap();
    assert_ne!(seen.1, 0, "a host file is visible in the sandbox: {seen:?}");
    assert_eq!(changed.1, 0);
    assert_eq!(host_marker, "from the host");
    assert_eq!(
        sb.ok(&format!("cat {}", marker.display())).await,
        "changed\n"
    );
    assert!(
        !Path::new(&format!("/etc/wrenn-{id}")).exists()
            && !image_root.join(format!("etc/wrenn-{id}")).exists(),
        "a sandbox write reached the host or the image"
    );
    assert!(
        image_root.join("etc/hostname").exists(),
        "the image is untouched"
    );
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
                .join(format!("disk/upper/etc/wrenn-{id}"))
        )
        .unwrap(),
        "sandbox\n",
        "writes land in the sandbox's upper layer"
    );
    assert_eq!(
        sb.ok("cat /etc/os-release").await,
        std::fs::read_to_string(image_root.join("etc/os-release")).unwrap()
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
            "ls -A {} 2>/dev/null | wc -l",
            host_env.layout().root().display()
        ))
        .await
        .trim(),
        "0"
    );
    // /tmp is the root filesystem's, on the capsule's sized disk (not host memory).
    sb.ok("echo scratch > /tmp/scratch").await;
    assert!(
        host_env
            .layout()
            .sandbox_dir(id)
            .join("disk/upper/tmp/scratch")
            .exists(),
        "/tmp is on the capsule's disk"
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
        .join("disk/upper/root/counter");
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
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(host_env.layout().snapshot_dir(id).join("sandbox.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["image"]["rootfs"],
        test_image().rootfs().display().to_string(),
        "the record names the image build the upper layer was written over"
    );
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
            .join("disk.ext4")
            .is_file(),
        "the disk moved into the snapshot"
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
        "the image base is there"
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            host_env
                .layout()
                .template_dir(team, first)
                .join("template.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["base"]["image"]["rootfs"],
        test_image().rootfs().display().to_string(),
        "the template records the image build it sits on: {manifest}"
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

    let firewall = host("nft", &["list", "table", "inet", "wrenn"]);
    assert!(
        firewall.contains("ip saddr 10.200.0.0/16 ip daddr != 10.200.0.0/16 masquerade"),
        "{firewall}"
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
    // Unprivileged ICMP (a datagram socket; no CAP_NET_RAW) reaches the gateway, which
    // the firewall lets capsules ping.
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
    // Every process got SIGKILL before destroy answered (a frozen one included): none
    // runs again. Waiting for them and removing the rest happens after answering.
    assert!(
        wait_until(|| pids.iter().all(|p| exited(*p))),
        "processes survived"
    );
    assert!(!host_env.layout().sandbox_dir(id).exists());
    runtime.removals_settled().await;
    assert!(!cgroup.exists());
    assert!(!Path::new("/run/netns").join(&net.netns).exists());
    // The kernel deletes the veth pair with the namespace, after destroy answered.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Path::new("/sys/class/net").join(&net.veth).exists() {
        assert!(Instant::now() < deadline, "veth {} left", net.veth);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_nothing_left_in_removing(runtime.layout());
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
    restarted.removals_settled().await;
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
        ..options().await
    };
    let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
    let runtime = ProcessRuntime::new(Layout::new(dir.path()), envd, options)
        .await
        .unwrap();
    let config = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);

    let err = wrenn_core::report::error_chain(&runtime.create(&config).await.unwrap_err());
    assert!(err.contains("exited during start"), "{err}");
    assert!(
        err.contains("__wrenn-sandbox-init"),
        "the log tail is reported: {err}"
    );
    let id = config.id;
    assert!(!runtime.layout().sandbox_dir(id).exists());
    assert!(
        wait_until(|| loops_under(&runtime.layout().sandbox_dir(id)).is_empty()),
        "the disk's loop device was left bound"
    );
    assert!(!runtime.sandbox_cgroup(id).exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists()
    );
}

/// Processes whose command line starts with `argv0`.
fn processes_started_as(argv0: &Path) -> Vec<i32> {
    let mut prefix = argv0.as_os_str().as_encoded_bytes().to_vec();
    prefix.push(0);
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(&prefix))
        })
        .filter(|pid| !exited(*pid))
        .collect()
}

/// The scheduling policy of a process (`policy` in `/proc/{pid}/sched`: 0 normal,
/// 5 idle).
fn scheduling_policy(pid: i32) -> String {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/sched")).unwrap_or_default();
    sched
        .lines()
        .find_map(|l| l.strip_prefix("policy"))
        .map(|v| v.trim_start_matches([' ', ':']).trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_init_programs_wait_at_idle_priority_and_leave_with_the_runtime() {
    // A name of their own, to tell this runtime's init programs from other tests'.
    let names = tempfile::tempdir().unwrap();
    let program = names.path().join("spare-init-under-test");
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &program).unwrap();
    let host_env = Host::with(ProcessRuntimeOptions {
        spare_inits: 2,
        init_program: Some(program.clone()),
        ..Default::default()
    })
    .await;
    assert!(
        wait_until(|| host_env.runtime.spare_inits() == 2),
        "the spares never started"
    );
    let spares = processes_started_as(&program);
    assert_eq!(spares.len(), 2, "{spares:?}");
    for pid in &spares {
        assert_eq!(
            scheduling_policy(*pid),
            "5",
            "spare {pid} is not SCHED_IDLE"
        );
    }

    // A capsule starts from a spare, which goes back to normal priority.
    let sb = host_env.sandbox().await;
    assert_eq!(
        sb.ok("grep ^policy /proc/self/sched")
            .await
            .split_whitespace()
            .last(),
        Some("0")
    );
    assert!(
        spares.iter().any(|pid| scheduling_policy(*pid) == "0"),
        "no spare was used"
    );
    assert!(
        wait_until(|| host_env.runtime.spare_inits() == 2),
        "the spares were not replaced"
    );
    drop(sb);

    // Spares belong to no capsule: they exit with the runtime.
    let waiting: Vec<i32> = processes_started_as(&program)
        .into_iter()
        .filter(|pid| scheduling_policy(*pid) == "5")
        .collect();
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    drop(host_env);
    assert!(
        wait_until(|| waiting.iter().all(|pid| exited(*pid))),
        "spare init programs outlived their runtime"
    );
}

/// The sandbox ids with a directory under `sandboxes/`.
fn sandbox_dirs(layout: &Layout) -> Vec<SandboxId> {
    std::fs::read_dir(layout.sandboxes_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_capsules_wait_at_idle_priority_and_a_create_gives_one_its_identity() {
    const DISK_MB: u32 = 1024;
    let host_env = Host::with(ProcessRuntimeOptions {
        warm_capsules: 1,
        disk_pool_size_mb: DISK_MB,
        disk_pool_depth: 2,
        ..Default::default()
    })
    .await;
    let runtime = host_env.runtime.clone();
    let layout = host_env.layout().clone();
    // Only once the agent has swept leftovers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runtime.warm_capsules(), 0);
    Arc::clone(&runtime).start_background();
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime.warm_capsules() < 1 {
        assert!(Instant::now() < deadline, "no capsule became warm");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warm_ids = sandbox_dirs(&layout);
    assert_eq!(warm_ids.len(), 1, "{warm_ids:?}");
    let provisional = warm_ids[0];
    let warm_cgroup = runtime.sandbox_cgroup(provisional);
    let warm_pids = warm_cgroup.pids();
    assert!(!warm_pids.is_empty());
    for tid in warm_cgroup.threads() {
        assert_eq!(
            scheduling_policy(tid),
            "5",
            "warm thread {tid} is not SCHED_IDLE"
        );
    }

    // A create that fits (built-in template, pooled disk size) takes it.
    let mut wanted = sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), DISK_MB);
    wanted.vcpus = 2;
    wanted.memory_mb = 384;
    let sb = host_env.sandbox_with(wanted).await;
    let id = sb.id();
    let cgroup = runtime.sandbox_cgroup(id);
    assert_eq!(
        cgroup.pids(),
        warm_pids,
        "the warm capsule's processes run it"
    );
    assert!(!warm_cgroup.exists());
    assert!(!layout.sandbox_dir(provisional).exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(provisional))
            .exists()
    );
    assert!(
        Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists()
    );
    assert!(runtime.id_map(id).is_some());
    assert!(runtime.id_map(provisional).is_none());
    // Its identity, limits and priority are the create's.
    assert_eq!(sb.ok("hostname").await.trim(), id.to_string());
    assert_eq!(
        cgroup.memory_limit().unwrap(),
        384 * 1024 * 1024,
        "memory limit"
    );
    for tid in cgroup.threads() {
        assert_eq!(scheduling_policy(tid), "0", "claimed thread {tid} is idle");
    }
    assert_eq!(
        sb.ok("echo hello > /root/f && cat /root/f").await,
        "hello\n"
    );
    // It is recorded like any capsule: an agent that restarts adopts it.
    assert!(
        layout
            .sandbox_dir(id)
            .join(process::state::STATE_FILE)
            .is_file()
    );

    // Another is booted in its place; a create that does not fit boots its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime.warm_capsules() < 1 {
        assert!(
            Instant::now() < deadline,
            "the warm capsule was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = host_env
        .sandbox_with(sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), 2048))
        .await;
    assert_eq!(runtime.warm_capsules(), 1);
    assert_ne!(runtime.sandbox_cgroup(other.id()).pids(), warm_pids);
    drop(other);
    drop(sb);

    // Warm capsules belong to no one: they go with the runtime.
    let warm = sandbox_dirs(&layout);
    assert_eq!(warm.len(), 1, "{warm:?}");
    let warm_cgroup = runtime.sandbox_cgroup(warm[0]);
    let warm_pids = warm_cgroup.pids();
    runtime.removals_settled().await;
    drop(runtime);
    drop(host_env);
    assert!(
        wait_until(|| warm_pids.iter().all(|pid| exited(*pid))),
        "a warm capsule outlived its runtime"
    );
    assert!(!warm_cgroup.exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(warm[0]))
            .exists()
    );
    assert!(!host_mounts().contains(&warm[0].to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_image_capsule_is_debian_as_wrenn_user_without_the_hosts_files() {
    let host_env = Host::new().await;
    let mut config = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);
    config.default_user = "wrenn-user".into();
    let id = config.id;
    // Marker files on the host, where a capsule on the host's root would see them.
    let markers = [
        PathBuf::from(format!("/root/wrenn-image-marker-{id}")),
        PathBuf::from(format!("/etc/wrenn-image-marker-{id}")),
    ];
    for m in &markers {
        std::fs::write(m, "host secret").unwrap();
    }
    let sb = host_env.sandbox_with(config).await;
    let probe = sb
        .sh(&format!(
            "id -un; pwd; echo $HOME; sudo -n true && echo sudo-ok; sudo -n id -u; \
             git --version >/dev/null && python3 -c 'print(\"py-ok\")'; \
             . /etc/os-release; echo $ID $VERSION_CODENAME; \
             sudo -n ls -a /root /etc | grep -c wrenn-image-marker-{id} || true"
        ))
        .await;
    // The files API (envd's Filesystem service) does not see them either.
    let mut files = FilesystemClient::new(channel(&sb.instance).await);
    let mut seen_by_files_api = Vec::new();
    for m in &markers {
        let stat = files
            .stat(StatRequest {
                path: m.display().to_string(),
            })
            .await;
        seen_by_files_api.push(stat.map(|_| ()).map_err(|s| s.code()));
    }
    let listing = files
        .list_dir(ListDirRequest {
            path: "/home".into(),
            depth: 1,
        })
        .await
        .map(|r| r.into_inner().entries);
    for m in &markers {
        std::fs::remove_file(m).unwrap();
    }
    assert_eq!(
        probe,
        (
            "wrenn-user\n/home/wrenn-user\n/home/wrenn-user\nsudo-ok\n0\npy-ok\ndebian bookworm\n0\n"
                .into(),
            0
        )
    );
    for result in seen_by_files_api {
        assert_eq!(result, Err(tonic::Code::NotFound));
    }
    let listing = listing.expect("list /home");
    assert_eq!(
        listing
            .iter()
            .map(|e| (e.name.as_str(), e.owner.as_str()))
            .collect::<Vec<_>>(),
        vec![("wrenn-user", "wrenn-user")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_image_is_required_and_templates_on_the_host_root_are_refused() {
    let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
    let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let err = ProcessRuntime::new(
        layout.clone(),
        envd.clone(),
        ProcessRuntimeOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Unsupported(m) if m.contains("wrenn image build")),
        "{err}"
    );
    let gone = ImageRef {
        hash: "0".repeat(64),
        rootfs: dir.path().join("no-such-build/rootfs"),
    };
    let err = ProcessRuntime::new(
        layout.clone(),
        envd.clone(),
        ProcessRuntimeOptions {
            base_image: Some(gone.clone()),
            ..ProcessRuntimeOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Unsupported(m) if m.contains("gone")),
        "{err}"
    );

    let host_env = Host::new().await;
    let team = TeamId::new();
    let write_template = |template: TemplateId, base: serde_json::Value| {
        let dir = host_env.layout().template_dir(team, template);
        std::fs::create_dir_all(dir.join("layers/0/etc")).unwrap();
        let manifest = serde_json::json!({
            "format": "wrenn-process-template/1",
            "base": base,
            "layers": ["layers/0"],
        });
        std::fs::write(dir.join("template.json"), manifest.to_string()).unwrap();
    };
    let on_host = TemplateId::new();
    write_template(on_host, serde_json::json!("host"));
    let on_gone_image = TemplateId::new();
    write_template(on_gone_image, serde_json::json!({ "image": gone }));
    for (template, expected) in [(on_host, "older Wrenn"), (on_gone_image, "gone")] {
        let config = config(team, template);
        let err = host_env.runtime.create(&config).await.unwrap_err();
        assert!(
            matches!(&err, RuntimeError::FailedPrecondition(m) if m.contains(expected)),
            "{err}"
        );
        assert!(!host_env.layout().sandbox_dir(config.id).exists());
    }
}

// ---- Disks: the writable layer lives on a sized ext4 file on a loop device ----

const MIB: u64 = 1024 * 1024;

/// Loop devices bound to files under `dir` (canonical, as the kernel names them).
fn loops_under(dir: &Path) -> Vec<disk::loopdev::Bound> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    disk::loopdev::bound_under(&dir).unwrap()
}

/// Mounts at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    disk::mount::mounts_under(&dir)
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point)
        .collect()
}

/// Polls `check` for up to 5 s (loop devices unbind themselves asynchronously).
fn wait_until(check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn sized(mut config: SandboxConfig, disk_size_mb: u32) -> SandboxConfig {
    config.disk_size_mb = disk_size_mb;
    config
}

/// `df -B1 /` inside: (size, used) in bytes.
async fn df_root(sb: &Sandbox) -> (u64, u64) {
    let out = sb.ok("df -B1 / | tail -n 1").await;
    let fields: Vec<&str> = out.split_whitespace().collect();
    (fields[1].parse().unwrap(), fields[2].parse().unwrap())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_df_shows_its_size_and_writes_past_it_fail_with_enospc_without_touching_the_host() {
    let host_env = Host::new().await;
    let config = sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), 128);
    let mut sb = Sandbox::guard(&host_env.runtime, config.clone());
    sb.instance = host_env.runtime.create(&config).await.unwrap();

    let (size, _) = df_root(&sb).await;
    assert!(
        size > 112 * MIB && size <= 128 * MIB,
        "df / shows {size} bytes for a 128 MiB disk"
    );
    let (out, code) = sb
        .sh("dd if=/dev/zero of=/root/big bs=1M count=256 2>&1; echo dd=$?")
        .await;
    assert_ne!(code, 1, "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    assert!(!out.contains("dd=0"), "{out}");
    let written = sb.ok("stat -c %s /root/big").await;
    let written: u64 = written.trim().parse().unwrap();
    assert!(written > 100 * MIB && written <= 128 * MIB, "{written}");

    // The host file never grows past the disk's size.
    let file = host_env.layout().sandbox_dir(sb.id()).join(disk::DISK_FILE);
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&file).unwrap()) * 512;
    assert!(
        allocated <= 128 * MIB,
        "{allocated} bytes allocated on the host"
    );
    let stats = host_env.runtime.stats(&sb.instance).await.unwrap();
    assert!(
        stats.disk_bytes >= written && stats.disk_bytes <= 128 * MIB,
        "disk_bytes {} for {written} written",
        stats.disk_bytes
    );

    // Freeing space makes the disk usable again.
    sb.ok("rm /root/big && echo fine > /root/after").await;
    assert_eq!(sb.ok("cat /root/after").await, "fine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_sizes_below_the_minimum_or_above_the_free_space_are_refused_before_anything_exists() {
    let host_env = Host::with(ProcessRuntimeOptions {
        disk_space_check: disk::SpaceCheck::FreeSpace,
        ..Default::default()
    })
    .await;
    let st = rustix::fs::statvfs(host_env.layout().sandboxes_dir().as_path()).unwrap();
    let free_mb = st.f_bavail * st.f_frsize / MIB;
    let above_free = u32::try_from(free_mb + 2048).unwrap();
    for size in [0, 32, disk::MIN_SIZE_MB - 1, above_free, u32::MAX] {
        let config = sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), size);
        let err = host_env.runtime.create(&config).await.unwrap_err();
        assert!(
            matches!(&err, RuntimeError::FailedPrecondition(m) if m.contains("disk_size_mb")),
            "{size}: {err}"
        );
        let dir = host_env.layout().sandbox_dir(config.id);
        assert!(!dir.exists());
        assert!(loops_under(&dir).is_empty());
        assert!(!host_env.runtime.sandbox_cgroup(config.id).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_files_survive_hibernate_and_restore_on_the_same_disk() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let id = sb.id();
    sb.ok("echo kept > /root/on-disk && chmod 4755 /root/on-disk")
        .await;
    let (size_before, _) = df_root(&sb).await;
    let sandbox_dir = host_env.layout().sandbox_dir(id);

    host_env.runtime.hibernate(&sb.instance).await.unwrap();
    assert!(mounts_under(&sandbox_dir).is_empty());
    assert!(
        loops_under(&sandbox_dir).is_empty(),
        "the device is unbound"
    );
    let saved = host_env.layout().snapshot_dir(id).join(disk::DISK_FILE);
    assert!(saved.is_file());
    assert!(loops_under(&host_env.layout().snapshot_dir(id)).is_empty());

    let instance = host_env.runtime.restore(&sb.config).await.unwrap();
    assert_eq!(
        run(&instance, "cat /root/on-disk").await,
        ("kept\n".into(), 0)
    );
    assert_eq!(
        run(&instance, "stat -c %a /root/on-disk").await,
        ("4755\n".into(), 0),
        "set-uid bits survive (the disk is not nosuid)"
    );
    let (out, _) = run(&instance, "df -B1 / | tail -n 1").await;
    let size_after: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(size_after, size_before);
    assert!(!saved.exists());
    assert_eq!(
        mounts_under(&sandbox_dir).len(),
        1,
        "the disk is mounted again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_snapshot_copies_the_disk_upper_into_a_template_new_capsules_see() {
    let host_env = Host::new().await;
    let team = TeamId::new();
    let template = TemplateId::new();
    let original = host_env.sandbox().await;
    original.ok("echo layered > /root/from-disk").await;
    host_env
        .runtime
        .snapshot(&original.instance, team, template)
        .await
        .unwrap();
    let child = host_env.sandbox_from(team, template).await;
    assert_eq!(child.ok("cat /root/from-disk").await, "layered\n");
    child.ok("echo child > /root/from-disk").await;
    assert_eq!(original.ok("cat /root/from-disk").await, "layered\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_destroy_leaves_no_loop_device_mount_or_file() {
    let host_env = Host::new().await;
    // Larger than the free space, smaller than the disk: accepted by default (sparse).
    let st = rustix::fs::statvfs(host_env.layout().sandboxes_dir().as_path()).unwrap();
    let (free_mb, capacity_mb) = (
        st.f_bavail * st.f_frsize / MIB,
        st.f_blocks * st.f_frsize / MIB,
    );
    let size = u32::try_from((free_mb + 1024).min(capacity_mb)).unwrap();
    let config = sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), size);
    let instance = host_env.runtime.create(&config).await.unwrap();
    let id = instance.id;
    let dir = host_env.layout().sandbox_dir(id);
    let device = host_env.runtime.disk_device(id).unwrap();
    assert_eq!(
        disk::loopdev::backing_file(device.number),
        Some(dir.canonicalize().unwrap().join(disk::DISK_FILE))
    );
    let mount_point = dir.canonicalize().unwrap().join(disk::MOUNT_DIR);
    assert_eq!(mounts_under(&dir), vec![mount_point.clone()]);
    // `nodev`, but not `nosuid`: set-uid programs copied up (sudo after an upgrade)
    // keep working.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == mount_point.to_str())
        .unwrap();
    let options: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    assert!(options.contains(&"nodev"), "{line}");
    assert!(!options.contains(&"nosuid"), "{line}");
    assert!(line.contains(" - ext4 /dev/loop"), "{line}");

    // Dirty data in the page cache is dropped, not written out by the unmount.
    run(
        &instance,
        "dd if=/dev/urandom of=/root/dirty bs=1M count=200 2>/dev/null",
    )
    .await;
    let file = dir.join(disk::DISK_FILE);
    let allocated_before =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&file).unwrap()) * 512;
    let started = Instant::now();
    host_env.runtime.destroy(id).await.unwrap();
    eprintln!(
        "destroy after writing 200 MiB ({} MiB on the host file) took {:?}",
        allocated_before / MIB,
        started.elapsed()
    );
    assert!(
        !dir.exists(),
        "destroy answers once the directory is out of the way"
    );
    host_env.runtime.removals_settled().await;
    assert_nothing_left_in_removing(host_env.layout());
}

/// Background removals ([`ProcessRuntime::removals_settled`] awaited) left no
/// directory, mount or bound loop device in `removing/`.
fn assert_nothing_left_in_removing(layout: &Layout) {
    let removing = layout.root().join("removing");
    let left: Vec<_> = std::fs::read_dir(&removing)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in removing/: {left:?}");
    assert!(mounts_under(&removing).is_empty());
    assert!(
        wait_until(|| loops_under(&removing).is_empty()),
        "loop device still bound: {:?}",
        loops_under(&removing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_sweep_after_a_crash_cleans_our_leftover_mounts_and_loop_devices_only() {
    let host_env = Host::new().await;
    let running = host_env.sandbox().await;
    let kept = host_env.sandbox().await;

    // A crash halfway through a removal: a disk bound (without autoclear) and mounted
    // in a sandbox directory that is no longer listed as a sandbox.
    let half = SandboxId::new();
    let half_dir = host_env.layout().sandbox_dir(half);
    let stray = half_dir.join(disk::DISK_FILE);
    std::fs::create_dir_all(half_dir.join(disk::MOUNT_DIR)).unwrap();
    std::fs::copy(
        host_env
            .layout()
            .sandbox_dir(running.id())
            .join(disk::DISK_FILE),
        &stray,
    )
    .unwrap_or_default();
    // Someone else's loop device and mount, outside `$WRENN_DIR`.
    let foreign = tempfile::Builder::new()
        .prefix("disk-helper-foreign")
        .tempdir()
        .unwrap();
    let foreign_file = foreign.path().join("other.img");
    let foreign_mount = foreign.path().join("mnt");
    std::fs::create_dir(&foreign_mount).unwrap();
    for (file, mount) in [
        (&stray, half_dir.join(disk::MOUNT_DIR)),
        (&foreign_file, foreign_mount.clone()),
    ] {
        let _ = std::fs::remove_file(file);
        let ok = Command::new("truncate")
            .arg("-s64M")
            .arg(file)
            .status()
            .unwrap()
            .success()
            && Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(file)
                .status()
                .unwrap()
                .success()
            && Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(file)
                .arg(&mount)
                .status()
                .unwrap()
                .success();
        assert!(ok, "setting up {}", file.display());
    }
    std::fs::remove_dir_all(&half_dir).unwrap_or_default();
    assert_eq!(loops_under(&half_dir).len(), 1);
    let foreign_loops = loops_under(foreign.path());
    assert_eq!(foreign_loops.len(), 1);

    // A new agent knows nothing of `running`.
    let restarted = host_env.restarted().await;
    let swept = restarted.sweep(&[kept.id()]).await.unwrap();
    assert!(
        swept.contains(&running.id()) && swept.contains(&half),
        "{swept:?}"
    );
    assert!(!swept.contains(&kept.id()));
    for id in [running.id(), half] {
        let dir = host_env.layout().sandbox_dir(id);
        assert!(mounts_under(&dir).is_empty(), "{id}");
        assert!(
            wait_until(|| loops_under(&dir).is_empty()),
            "{id}: {:?}",
            loops_under(&dir)
        );
    }
    assert_eq!(
        kept.ok("echo still here > /root/x && cat /root/x").await,
        "still here\n"
    );
    assert_eq!(
        mounts_under(&host_env.layout().sandbox_dir(kept.id())).len(),
        1
    );

    // Other people's devices and mounts are untouched.
    assert_eq!(loops_under(foreign.path()), foreign_loops);
    assert_eq!(mounts_under(&foreign_mount).len(), 1);
    assert!(
        Command::new("umount")
            .arg(&foreign_mount)
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_until(|| loops_under(foreign.path()).is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pool_hands_out_ready_disks_and_refills_in_the_background() {
    let host_env = Host::with(ProcessRuntimeOptions {
        disk_pool_size_mb: 1024,
        disk_pool_depth: 2,
        ..Default::default()
    })
    .await;
    let pool = host_env.runtime.disk_pool();
    assert!(wait_until(|| pool.ready() == 2), "the pool never filled");
    let refills_before = pool.refill_times().len();

    let mut sandboxes = Vec::new();
    for _ in 0..3 {
        let config = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);
        let mut sb = Sandbox::guard(&host_env.runtime, config.clone());
        let started = Instant::now();
        sb.instance = host_env.runtime.create(&config).await.unwrap();
        eprintln!("create with a 1 GiB disk took {:?}", started.elapsed());
        let (size, _) = df_root(&sb).await;
        assert!(size > 1000 * MIB && size <= 1024 * MIB, "{size}");
        sandboxes.push(sb);
    }
    // Taken disks are replaced (the third create may have been served by a refill or
    // formatted on demand).
    assert!(wait_until(|| pool.ready() == 2), "the pool did not refill");
    let refills = pool.refill_times();
    assert!(refills.len() >= refills_before + 2, "{refills:?}");
    eprintln!("pool refill times (format + bind + mount): {refills:?}");
    // The pool's files live in its own directory, not among the sandboxes.
    let pool_files = std::fs::read_dir(process::disk_pool_dir(host_env.layout()))
        .unwrap()
        .count();
    assert_eq!(pool_files, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_io_limits_are_set_on_the_capsule_device() {
    let io = IoLimits {
        weight: 300,
        read_bps: Some(50 * MIB),
        write_bps: Some(20 * MIB),
        read_iops: Some(3000),
        write_iops: None,
    };
    let host_env = Host::with(ProcessRuntimeOptions {
        io,
        ..Default::default()
    })
    .await;
    let sb = host_env.sandbox().await;
    let device = host_env.runtime.disk_device(sb.id()).unwrap();
    let dev = format!("{}:{}", device.major, device.minor);
    assert_eq!(sb.instance.metadata.get("disk_device"), Some(&dev));
    match host_env.runtime.sandbox_cgroup(sb.id()) {
        SandboxCgroup::V1 {
            blkio: Some(blkio), ..
        } => {
            let read = |f: &str| std::fs::read_to_string(blkio.join(f)).unwrap();
            assert_eq!(
                read("blkio.throttle.read_bps_device"),
                format!("{dev} {}\n", 50 * MIB)
            );
            assert_eq!(
                read("blkio.throttle.write_bps_device"),
                format!("{dev} {}\n", 20 * MIB)
            );
            assert_eq!(
                read("blkio.throttle.read_iops_device"),
                format!("{dev} 3000\n")
            );
            assert_eq!(
                read("blkio.throttle.write_iops_device"),
                "",
                "None = no rule"
            );
            if blkio.join("blkio.weight").exists() {
                assert_eq!(read("blkio.weight"), "300\n");
            }
            // The sandbox's processes are in that cgroup, so its direct I/O is throttled.
            let mut procs: Vec<i32> = read("cgroup.procs")
                .lines()
                .map(|p| p.parse().unwrap())
                .collect();
            procs.sort();
            let mut all = host_env.runtime.sandbox_cgroup(sb.id()).pids();
            all.sort();
            assert!(!procs.is_empty());
            assert_eq!(procs, all);
            let (out, _) = sb
                .sh("dd if=/dev/zero of=/root/d bs=1M count=40 oflag=direct 2>&1 | tail -n 1")
                .await;
            eprintln!("direct write of 40 MiB at 20 MiB/s: {out}");
            let secs: f64 = out
                .split(',')
                .nth(1)
                .and_then(|s| s.trim().split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("dd output: {out}"));
            assert!(secs >= 1.5, "40 MiB at 20 MiB/s took {secs} s");
        }
        SandboxCgroup::V2 { dir } => {
            let max = std::fs::read_to_string(dir.join("io.max")).unwrap();
            assert!(max.contains(&dev), "{max}");
        }
        other => panic!("no I/O controller: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_a_sandbox_hibernated_before_disks_restores_into_a_new_disk() {
    let host_env = Host::new().await;
    let config = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);
    let snapshot = host_env.layout().snapshot_dir(config.id);
    std::fs::create_dir_all(snapshot.join("upper/root")).unwrap();
    std::fs::write(snapshot.join("upper/root/old-note"), "from before\n").unwrap();
    template::write_record(
        &snapshot,
        &template::HibernationRecord {
            config: (&config).into(),
            hibernated_at: "2026-01-01T00:00:00Z".into(),
            image: None,
        },
    )
    .unwrap();
    let mut sb = Sandbox::guard(&host_env.runtime, config.clone());
    sb.instance = host_env.runtime.restore(&config).await.unwrap();
    assert_eq!(sb.ok("cat /root/old-note").await, "from before\n");
    let (size, _) = df_root(&sb).await;
    assert!(size <= u64::from(config.disk_size_mb) * MIB, "{size}");
    assert!(!snapshot.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_timings_attach_mount_and_format() {
    let dir = tempfile::Builder::new()
        .prefix("wr-disk")
        .tempdir()
        .unwrap();
    let mkfs = disk::ext4::find_mkfs().unwrap();
    let mut report = Vec::new();
    for gib in [1u32, 5, 20] {
        let file = dir.path().join(format!("{gib}.ext4"));
        let started = Instant::now();
        disk::ext4::format(&mkfs, &file, disk::size_bytes(gib * 1024))
            .await
            .unwrap();
        let took = started.elapsed();
        let allocated =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&file).unwrap()) * 512;
        report.push(format!(
            "mkfs {gib} GiB: {took:?} ({} KiB allocated)",
            allocated / 1024
        ));
    }
    let file = dir.path().join("20.ext4");
    let target = dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let (mut attach, mut unmount) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let started = Instant::now();
        let device = disk::MountedDisk::open(&file)
            .unwrap()
            .place(&target)
            .unwrap();
        attach.push(started.elapsed());
        assert!(device.direct_io, "loop device without direct I/O");
        let usage = disk::ext4::usage(&target).unwrap();
        assert!(usage.total_bytes > 19 * 1024 * MIB, "{usage:?}");
        assert!(target.join("upper").is_dir() && target.join("work").is_dir());
        let started = Instant::now();
        disk::unmount(&target).unwrap();
        disk::wait_released(device.number, &file, Duration::from_secs(5)).unwrap();
        unmount.push(started.elapsed());
    }
    attach.sort();
    unmount.sort();
    report.push(format!(
        "attach+mount (20 GiB, in-process): p50 {:?} p99 {:?}",
        percentile(&attach, 0.5),
        percentile(&attach, 0.99)
    ));
    report.push(format!(
        "unmount+unbind: p50 {:?} p99 {:?}",
        percentile(&unmount, 0.5),
        percentile(&unmount, 0.99)
    ));

    // A disk copied from a blank: a sparse file of the full size holding only the
    // blank's few MiB of metadata, a filesystem that mounts and has its full size.
    let blanks =
        std::sync::Arc::new(disk::blank::Blanks::new(&dir.path().join("blank"), &mkfs).unwrap());
    let copy = dir.path().join("copied.ext4");
    let started = Instant::now();
    blanks.make(&copy, 20 * 1024).await.unwrap();
    let first = started.elapsed();
    std::fs::remove_file(&copy).unwrap();
    let started = Instant::now();
    blanks.make(&copy, 20 * 1024).await.unwrap();
    let copied = started.elapsed();
    report.push(format!(
        "blank 20 GiB disk: first (mkfs) {first:?}, then copied in {copied:?}"
    ));
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), disk::size_bytes(20 * 1024));
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 64 * MIB,
        "the copy is sparse"
    );
    let target = dir.path().join("copied");
    std::fs::create_dir(&target).unwrap();
    disk::MountedDisk::open(&copy)
        .unwrap()
        .place(&target)
        .unwrap();
    let usage = disk::ext4::usage(&target).unwrap();
    assert!(usage.total_bytes > 19 * 1024 * MIB, "{usage:?}");
    assert!(target.join(disk::UPPER_DIR).is_dir());
    disk::unmount(&target).unwrap();

    // A pooled disk: what create pays (rename + move_mount).
    let pool_dir = dir.path().join("pool");
    let pool = disk::pool::DiskPool::start(&pool_dir, blanks, 20 * 1024, 4).unwrap();
    assert!(wait_until(|| pool.ready() == 4), "the pool never filled");
    let mut handout = Vec::new();
    for i in 0..4 {
        let place = dir.path().join(format!("sb{i}"));
        std::fs::create_dir(&place).unwrap();
        let started = Instant::now();
        let pooled = pool.take().unwrap();
        std::fs::rename(&pooled.file, place.join(disk::DISK_FILE)).unwrap();
        pooled.disk.place(&place).unwrap();
        handout.push(started.elapsed());
        assert!(place.join("upper").is_dir());
        disk::unmount(&place).unwrap();
    }
    handout.sort();
    report.push(format!(
        "pooled disk handout (rename + move_mount): p50 {:?} max {:?}",
        percentile(&handout, 0.5),
        handout[handout.len() - 1]
    ));
    assert!(wait_until(|| pool.ready() == 4), "the pool did not refill");
    let refills = pool.refill_times();
    report.push(format!("pool refill per 20 GiB disk: {refills:?}"));
    drop(pool);
    assert!(wait_until(|| loops_under(dir.path()).is_empty()));
    // The figures are a report (the benchmarks hold the targets), not an assertion.
    eprintln!("{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_a_restored_sandbox_snapshots_into_a_template_new_capsules_see() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    sb.ok("echo restored > /root/note").await;
    host_env.runtime.hibernate(&sb.instance).await.unwrap();
    let instance = host_env.runtime.restore(&sb.config).await.unwrap();
    let team = TeamId::new();
    let template = TemplateId::new();
    host_env
        .runtime
        .snapshot(&instance, team, template)
        .await
        .unwrap();
    let child = host_env.sandbox_from(team, template).await;
    assert_eq!(child.ok("cat /root/note").await, "restored\n");
}

#[test]
fn disk_many_loop_devices_bound_at_once_each_get_their_own() {
    // Concurrent binds race for the device `LOOP_CTL_GET_FREE` offers; each must end
    // up with a device of its own (the loser retries), none may fail.
    let dir = tempfile::Builder::new()
        .prefix("wr-loops")
        .tempdir()
        .unwrap();
    let binds: Vec<_> = (0..12)
        .map(|i| {
            let file = dir.path().join(format!("{i}.img"));
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&file)
                    .unwrap();
                f.set_len(64 * MIB).unwrap();
                disk::loopdev::attach(&f, disk::loopdev::AttachOptions::default())
            })
        })
        .collect();
    let devices: Vec<_> = binds
        .into_iter()
        .map(|t| t.join().unwrap().expect("every bind succeeds"))
        .collect();
    let mut numbers: Vec<u32> = devices.iter().map(|d| d.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), devices.len(), "a device was bound twice");
    drop(devices);
    assert!(wait_until(|| loops_under(dir.path()).is_empty()));
}
