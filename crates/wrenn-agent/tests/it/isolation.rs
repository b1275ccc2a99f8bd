//! The process runtime as a security boundary, probed from inside real capsules: user
//! namespace and id mapping, idmapped storage, seccomp, capabilities, masked `/proc`,
//! no host paths, what the envd socket is, and that ordinary tools (sudo, python3, git)
//! still work. Needs root, as the runtime does.
//!
//! Capsules run on the default image (see `common::test_image`); the test binary is
//! their init program (see `main.rs`).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{envd_binary, test_image};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use wrenn_agent::init::seccomp::MAX_ALLOWED_NR;
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::runtime::{EnvdEndpoint, Instance, Runtime, SandboxConfig};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::envd::v1::{ProcessConfig, Pty, StartRequest, data_event, process_event};

struct Host {
    runtime: Arc<ProcessRuntime>,
    _dir: tempfile::TempDir,
}

impl Host {
    async fn new() -> Self {
        let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
        let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
        let image = tokio::task::spawn_blocking(test_image).await.unwrap();
        let runtime = ProcessRuntime::new(
            Layout::new(dir.path()),
            envd,
            ProcessRuntimeOptions {
                base_image: Some(image.reference()),
                ..ProcessRuntimeOptions::default()
            },
        )
        .await
        .expect("the process runtime needs root, cgroups and overlayfs");
        Self {
            runtime: Arc::new(runtime),
            _dir: dir,
        }
    }

    fn layout(&self) -> &Layout {
        self.runtime.layout()
    }

    async fn sandbox(&self) -> Sandbox {
        self.sandbox_from(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID)
            .await
    }

    async fn sandbox_from(&self, team: TeamId, template: TemplateId) -> Sandbox {
        let config = SandboxConfig {
            id: SandboxId::new(),
            team_id: TeamId::new(),
            template_team_id: team,
            template_id: template,
            vcpus: 1,
            memory_mb: 256,
            disk_size_mb: 1024,
            default_user: "root".into(),
            default_env: BTreeMap::new(),
        };
        let mut sandbox = Sandbox {
            runtime: self.runtime.clone(),
            instance: Instance {
                id: config.id,
                envd: EnvdEndpoint::Unix(PathBuf::new()),
                host_ip: String::new(),
                metadata: BTreeMap::new(),
            },
            config: config.clone(),
        };
        sandbox.instance = self.runtime.create(&config).await.expect("create");
        sandbox
    }

    /// The Debian template with sudo, python3 and git: the built-in one, on the default
    /// image.
    fn debian_template(&self) -> Option<(TeamId, TemplateId)> {
        Some((PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID))
    }
}

/// A capsule destroyed on drop.
struct Sandbox {
    runtime: Arc<ProcessRuntime>,
    instance: Instance,
    config: SandboxConfig,
}

impl Sandbox {
    fn id(&self) -> SandboxId {
        self.instance.id
    }

    async fn sh(&self, script: &str) -> (String, i32) {
        run(&self.instance, None, script).await
    }

    async fn ok(&self, script: &str) -> String {
        let (out, code) = self.sh(script).await;
        assert_eq!(code, 0, "`{script}` failed: {out}");
        out
    }

    async fn ok_as(&self, user: &str, script: &str) -> String {
        let (out, code) = run(&self.instance, Some(user), script).await;
        assert_eq!(code, 0, "`{script}` as {user} failed: {out}");
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

/// Runs `script` with `/bin/sh -c` (as `user`, default root); stdout (stderr is
/// appended) and the exit code.
async fn run(instance: &Instance, user: Option<&str>, script: &str) -> (String, i32) {
    let mut client = ProcessClient::new(channel(instance).await);
    let mut events = client
        .start(StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                user: user.map(str::to_owned),
                cwd: Some("/".into()),
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
    let mut err = Vec::new();
    while let Some(event) = events.message().await.expect("event stream") {
        match event.event {
            Some(process_event::Event::Data(data)) => match data.output {
                Some(data_event::Output::Stdout(bytes)) => out.extend_from_slice(&bytes),
                Some(data_event::Output::Stderr(bytes)) => err.extend_from_slice(&bytes),
                _ => {}
            },
            Some(process_event::Event::End(end)) => {
                if end.exit_code != 0 {
                    out.extend_from_slice(b"\n[stderr] ");
                    out.extend_from_slice(&err);
                }
                return (String::from_utf8_lossy(&out).into_owned(), end.exit_code);
            }
            _ => {}
        }
    }
    panic!("process stream ended without an end event");
}

/// Runs `script` on a terminal (cols × rows); the terminal output and the exit code.
async fn run_on_terminal(instance: &Instance, script: &str, cols: u32, rows: u32) -> (String, i32) {
    let mut client = ProcessClient::new(channel(instance).await);
    let mut events = client
        .start(StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                cwd: Some("/".into()),
                ..Default::default()
            }),
            pty: Some(Pty { cols, rows }),
            tag: None,
            stdin: false,
        })
        .await
        .expect("start")
        .into_inner();
    let mut out = Vec::new();
    while let Some(event) = events.message().await.expect("event stream") {
        match event.event {
            Some(process_event::Event::Data(data)) => {
                if let Some(data_event::Output::Pty(bytes)) = data.output {
                    out.extend_from_slice(&bytes);
                }
            }
            Some(process_event::Event::End(end)) => {
                return (String::from_utf8_lossy(&out).into_owned(), end.exit_code);
            }
            _ => {}
        }
    }
    panic!("process stream ended without an end event");
}

/// `/proc/self/status` field `name` of a shell in the capsule.
async fn status_field(sb: &Sandbox, name: &str) -> String {
    sb.ok(&format!("grep '^{name}:' /proc/self/status | cut -f2"))
        .await
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_each_capsule_maps_root_to_its_own_unprivileged_id_range() {
    let host = Host::new().await;
    let a = host.sandbox().await;
    let b = host.sandbox().await;

    let map_a = a.ok("cat /proc/self/uid_map").await;
    let map_b = b.ok("cat /proc/self/uid_map").await;
    let fields =
        |map: &str| -> Vec<u64> { map.split_whitespace().map(|f| f.parse().unwrap()).collect() };
    let (fa, fb) = (fields(&map_a), fields(&map_b));
    assert_eq!(fa.len(), 3, "one mapping: {map_a}");
    assert_eq!((fa[0], fa[2]), (0, 65536), "{map_a}");
    assert_eq!((fb[0], fb[2]), (0, 65536), "{map_b}");
    assert!(fa[1] >= 65536 && fb[1] >= 65536, "{map_a} / {map_b}");
    assert_ne!(fa[1], fb[1], "two live capsules share an id range");
    assert_eq!(a.ok("cat /proc/self/gid_map").await, map_a);
    assert_eq!(a.ok("cat /proc/self/setgroups").await.trim(), "allow");
    let recorded = host.runtime.id_map(a.id()).expect("a range");
    assert_eq!(u64::from(recorded.host_base), fa[1]);

    // Capsule root is root inside, and nobody on the host: its processes run as the
    // range's first id.
    assert_eq!(a.ok("id -u").await.trim(), "0");
    let pid = host.runtime.sandbox_cgroup(a.id()).pids()[0];
    let host_uid = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    assert_eq!(u64::from(host_uid), fa[1]);

    // The range is freed once the capsule's processes are gone (right after destroy
    // answers) and reused.
    let freed = recorded.host_base;
    drop(a);
    host.runtime.removals_settled().await;
    let c = host.sandbox().await;
    assert_eq!(host.runtime.id_map(c.id()).unwrap().host_base, freed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_files_on_disk_keep_capsule_ids_and_host_files_look_root_owned() {
    let host = Host::new().await;
    let sb = host.sandbox().await;
    assert_eq!(
        sb.ok("stat -c %u:%g /etc/passwd /usr/bin").await,
        "0:0\n0:0\n"
    );
    sb.ok("echo mine > /root/by-root && mkdir -p /srv/u && chown 1000:1000 /srv/u")
        .await;
    sb.ok("python3 -c 'import os; os.setgid(1000); os.setuid(1000); open(\"/srv/u/by-user\", \"w\").write(\"x\")'")
        .await;
    let upper = host.layout().sandbox_dir(sb.id()).join("disk/upper");
    let by_root = std::fs::metadata(upper.join("root/by-root")).unwrap();
    assert_eq!(
        (by_root.uid(), by_root.gid()),
        (0, 0),
        "capsule root → uid 0 on disk"
    );
    let by_user = std::fs::metadata(upper.join("srv/u/by-user")).unwrap();
    assert_eq!((by_user.uid(), by_user.gid()), (1000, 1000));
    assert_eq!(sb.ok("stat -c %u /srv/u/by-user").await.trim(), "1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_layers_work_in_later_capsules_whatever_their_range() {
    let host = Host::new().await;
    let (team, template) = (TeamId::new(), TemplateId::new());
    // Another capsule holds the first range, so the hibernated one comes back elsewhere.
    let first = host.sandbox().await;
    let sb = host.sandbox().await;
    let range_before = host.runtime.id_map(sb.id()).unwrap().host_base;
    sb.ok("mkdir /srv/u && echo data > /srv/u/f && chown -R 1000:1000 /srv/u")
        .await;
    host.runtime
        .snapshot(&sb.instance, team, template)
        .await
        .unwrap();
    host.runtime.hibernate(&sb.instance).await.unwrap();
    drop(first);
    let _blocker = host.sandbox().await;
    let _other = host.sandbox().await;
    let restored = host.runtime.restore(&sb.config).await.unwrap();
    let range_after = host.runtime.id_map(sb.id()).unwrap().host_base;
    assert_ne!(range_before, range_after, "restored into another range");
    let (owner, code) = run(&restored, None, "stat -c %u:%g /srv/u/f && cat /srv/u/f").await;
    assert_eq!((owner.as_str(), code), ("1000:1000\ndata\n", 0));
    let (_, code) = run(&restored, Some("root"), "echo more >> /srv/u/f").await;
    assert_eq!(code, 0);

    let child = host.sandbox_from(team, template).await;
    assert_eq!(child.ok("stat -c %u:%g /srv/u/f").await, "1000:1000\n");
    host.runtime.destroy(sb.id()).await.unwrap();
    host.runtime.removals_settled().await;
}

/// Python that calls system calls through `ctypes` and prints `name result` lines
/// (`ok` or the errno name).
const SYSCALL_PROBE: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def probe(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *args)
    e = ctypes.get_errno()
    print(name, "ok" if r >= 0 else errno.errorcode.get(e, str(e)))
L = ctypes.c_long
S = ctypes.c_char_p
params = ctypes.create_string_buffer(120)
probe("unshare_user", 272, L(0x10000000))
probe("unshare_mount", 272, L(0x20000))
probe("setns", 308, L(-1), L(0))
probe("mount", 165, S(b"none"), S(b"/mnt"), S(b"tmpfs"), L(0), L(0))
probe("fsopen", 430, S(b"tmpfs"), L(0))
probe("add_key", 248, S(b"user"), S(b"wrenn-probe"), S(b"x"), L(1), L(-4))
probe("keyctl", 250, L(0), L(-4), L(0))
probe("bpf", 321, L(0), L(0), L(0))
probe("io_uring_setup", 425, L(1), params)
probe("perf_event_open", 298, L(0), L(0), L(-1), L(-1), L(0))
probe("userfaultfd", 323, L(1))
probe("kcmp", 312, L(os.getpid()), L(os.getpid()), L(0), L(0), L(0))
probe("open_by_handle_at", 304, L(-1), L(0), L(0))
probe("pidfd_getfd", 438, L(-1), L(0), L(0))
probe("personality_exec", 135, L(0x0400000))
probe("personality_query", 135, L(0xffffffff))
probe("clone3", 435, L(0), L(0))
probe("x32_getpid", 0x40000000 | 39)
probe("beyond_cut_off", CUT_OFF + 1, L(0))
probe("getpid", 39)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_seccomp_denies_a_syscall_of_every_dangerous_family() {
    let host = Host::new().await;
    let sb = host.sandbox().await;
    assert_eq!(status_field(&sb, "Seccomp").await, "2");
    assert_eq!(
        status_field(&sb, "NoNewPrivs").await,
        "0",
        "set-uid programs work"
    );
    let pid1 = sb.ok("grep '^Seccomp:' /proc/1/status | cut -f2").await;
    assert_eq!(pid1.trim(), "2", "envd itself is filtered");

    let script = SYSCALL_PROBE.replace("CUT_OFF", &MAX_ALLOWED_NR.to_string());
    let out = sb.ok(&format!("python3 -c '{script}'")).await;
    let results: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    let expected = [
        ("unshare_user", "EPERM"),
        ("unshare_mount", "EPERM"),
        ("setns", "EPERM"),
        ("mount", "EPERM"),
        ("fsopen", "EPERM"),
        ("add_key", "EPERM"),
        ("keyctl", "EPERM"),
        ("bpf", "EPERM"),
        ("io_uring_setup", "EPERM"),
        ("perf_event_open", "EPERM"),
        ("userfaultfd", "EPERM"),
        ("kcmp", "EPERM"),
        ("open_by_handle_at", "EPERM"),
        ("pidfd_getfd", "EPERM"),
        ("personality_exec", "EPERM"),
        ("personality_query", "ok"),
        ("clone3", "ENOSYS"),
        ("x32_getpid", "ENOSYS"),
        ("beyond_cut_off", "ENOSYS"),
        ("getpid", "ok"),
    ];
    for (name, want) in expected {
        assert_eq!(results.get(name).copied(), Some(want), "{name}: {out}");
    }
    // The same calls through the usual tools.
    let (_, code) = sb.sh("unshare -U -r true").await;
    assert_ne!(code, 0, "unshare -U -r succeeded");
    let (_, code) = sb.sh("unshare -m true").await;
    assert_ne!(code, 0);
    let (_, code) = sb.sh("mount -t tmpfs none /mnt").await;
    assert_ne!(code, 0);
    // Fork, exec, threads and ptrace of one's own children still work.
    sb.ok("python3 -c 'import os, threading; t = threading.Thread(target=print); t.start(); t.join(); os.wait() if os.fork() else os._exit(0)'")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_envd_still_serves_terminals_and_processes_under_the_filter() {
    let host = Host::new().await;
    let sb = host.sandbox().await;
    let (out, code) = run_on_terminal(&sb.instance, "tty; stty size; id -u", 100, 30).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("30 100"), "{out}");
    // The terminal belongs to capsule root and the tty group, as seen inside.
    let owner = sb
        .ok("python3 -c 'import os, pty; m, s = pty.openpty(); st = os.fstat(s); print(st.st_uid, st.st_gid, oct(st.st_mode & 0o777))'")
        .await;
    assert_eq!(owner.trim(), "0 5 0o620");
    // Background processes, pipes and /dev/shm.
    sb.ok("sleep 30 >/dev/null 2>&1 & echo x | cat > /dev/shm/x && test -s /dev/shm/x")
        .await;
    let shm = sb.ok("df -k /dev/shm | tail -1").await;
    let size_kib: u64 = shm.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(size_kib, 128 * 1024, "/dev/shm is half of 256 MiB: {shm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_the_kernel_keyring_is_not_shared_with_the_host() {
    let host = Host::new().await;
    let sb = host.sandbox().await;
    let description = format!("wrenn-isolation-{}", sb.id());
    let key = host_add_key(&description);
    let host_keys = std::fs::read_to_string("/proc/keys").unwrap();
    assert!(host_keys.contains(&description), "the host has the key");

    assert_eq!(
        sb.ok("wc -c < /proc/keys").await.trim(),
        "0",
        "/proc/keys is masked"
    );
    let search = format!(
        "import ctypes, errno; libc = ctypes.CDLL(None, use_errno=True); \
         r = libc.syscall(250, 10, -4, b\"user\", b\"{description}\", 0); \
         print(r, errno.errorcode.get(ctypes.get_errno()))"
    );
    let out = sb.ok(&format!("python3 -c '{search}'")).await;
    assert_eq!(
        out.trim(),
        "-1 EPERM",
        "keyctl(KEYCTL_SEARCH) in the capsule"
    );
    host_unlink_key(key);
}

/// Adds a `user` key to the host's user keyring; returns its serial.
#[allow(unsafe_code)]
fn host_add_key(description: &str) -> i64 {
    let kind = c"user";
    let desc = std::ffi::CString::new(description).unwrap();
    let payload = b"secret";
    // SAFETY: valid NUL-terminated strings and a payload buffer with its length.
    let serial = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            -4i64, // KEY_SPEC_USER_KEYRING
        )
    };
    assert!(
        serial > 0,
        "add_key on the host: {}",
        std::io::Error::last_os_error()
    );
    serial
}

#[allow(unsafe_code)]
fn host_unlink_key(serial: i64) {
    // SAFETY: KEYCTL_UNLINK (9) takes two integers.
    unsafe {
        libc::syscall(libc::SYS_keyctl, 9i64, serial, -4i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_capabilities_are_reduced_and_namespaces_are_not_the_capsules() {
    let host = Host::new().await;
    let sb = host.sandbox().await;
    for pid in ["self", "1"] {
        let field = |name: &str| format!("grep '^{name}:' /proc/{pid}/status | cut -f2");
        let bounding = u64::from_str_radix(sb.ok(&field("CapBnd")).await.trim(), 16).unwrap();
        for (name, bit) in [
            ("net_raw", 13),
            ("sys_admin", 21),
            ("mknod", 27),
            ("setfcap", 31),
        ] {
            assert_eq!(bounding & (1 << bit), 0, "{pid}: CapBnd has {name}");
        }
        for (name, bit) in [("chown", 0), ("setuid", 7), ("net_bind_service", 10)] {
            assert_ne!(bounding & (1 << bit), 0, "{pid}: CapBnd lacks {name}");
        }
        assert_eq!(sb.ok(&field("CapInh")).await.trim(), "0000000000000000");
        assert_eq!(sb.ok(&field("CapAmb")).await.trim(), "0000000000000000");
    }
    // Root of its user namespace, which owns none of its other namespaces.
    let (_, code) = sb.sh("hostname changed").await;
    assert_ne!(code, 0, "the hostname changed");
    assert_eq!(sb.ok("hostname").await.trim(), sb.id().to_string());
    let (_, code) = sb.sh("ip addr add 10.99.99.99/32 dev eth0").await;
    assert_ne!(code, 0, "the capsule re-addressed its interface");
    let (_, code) = sb.sh("echo 1 > /proc/sys/net/ipv4/ip_forward").await;
    assert_ne!(code, 0);
    // Unprivileged ping sockets are allowed for the capsule's groups.
    let range = sb.ok("cat /proc/sys/net/ipv4/ping_group_range").await;
    let base = host.runtime.id_map(sb.id()).unwrap().host_base;
    let fields: Vec<&str> = range.split_whitespace().collect();
    assert_eq!(fields.len(), 2, "{range}");
    assert!(
        // Shown in the capsule's user namespace: 0..65535 (or unmapped values on older
        // kernels).
        fields == ["0", "65535"] || fields[0] == base.to_string(),
        "{range}"
    );
    sb.ok("python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)'")
        .await;
    let (_, code) = sb
        .sh("python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)'")
        .await;
    assert_ne!(code, 0, "raw sockets need CAP_NET_RAW");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_proc_and_sys_are_masked_like_runc() {
    let host = Host::new().await;
    let sb = host.sandbox().await;
    for file in ["kcore", "keys", "timer_list", "sched_debug"] {
        if Path::new("/proc").join(file).exists() {
            assert_eq!(
                sb.ok(&format!("wc -c < /proc/{file}")).await.trim(),
                "0",
                "/proc/{file}"
            );
        }
    }
    for dir in [
        "/proc/acpi",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ] {
        if Path::new(dir).is_dir() {
            assert_eq!(
                sb.ok(&format!("ls -A {dir} | wc -l")).await.trim(),
                "0",
                "{dir}"
            );
        }
    }
    for path in ["/proc/sys/kernel/domainname", "/proc/sysrq-trigger"] {
        let (_, code) = sb.sh(&format!("echo x > {path}")).await;
        assert_ne!(code, 0, "{path} is writable");
    }
    let mounts = sb.ok("cat /proc/self/mounts").await;
    for ro in [
        "/proc/sys ",
        "/proc/bus ",
        "/proc/fs ",
        "/proc/irq ",
        "/sys ",
    ] {
        let line = mounts.lines().find(|l| l.contains(&format!(" {ro}")));
        if let Some(line) = line {
            assert!(line.contains(" ro,") || line.contains(" ro "), "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_no_host_path_shows_in_the_capsules_mount_table() {
    let host = Host::new().await;
    let sb = host.sandbox().await;
    let sandbox_dir = host.layout().sandbox_dir(sb.id());
    let envd = envd_binary();
    for table in [
        "/proc/self/mountinfo",
        "/proc/self/mounts",
        "/proc/1/mountinfo",
        "/proc/self/cgroup",
    ] {
        let text = sb.ok(&format!("cat {table}")).await;
        for host_path in [
            host.layout().root().to_string_lossy().into_owned(),
            sandbox_dir.to_string_lossy().into_owned(),
            envd.to_string_lossy().into_owned(),
            "/var/".to_owned(),
            "/tmp/".to_owned(),
            "/work/".to_owned(),
            "/run/netns".to_owned(),
        ] {
            assert!(
                !text.contains(&host_path),
                "{table} shows {host_path}:\n{text}"
            );
        }
        if table.ends_with("cgroup") {
            assert!(
                text.lines().all(|l| l.ends_with(":/")),
                "the capsule's cgroups are its cgroup namespace's root: {text}"
            );
        } else {
            assert!(
                text.contains("lowerdir="),
                "the root overlay is listed: {text}"
            );
        }
    }
    // The agent's directory is invisible, not just empty.
    let (_, code) = sb
        .sh(&format!("test -e {}", host.layout().root().display()))
        .await;
    assert_ne!(code, 0, "$WRENN_DIR is visible");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_the_envd_socket_lives_where_the_capsule_cannot_reach() {
    let host = Host::new().await;
    let sb = host.sandbox().await;
    let socket = host.runtime.envd_socket(sb.id());
    let EnvdEndpoint::Unix(endpoint) = &sb.instance.envd else {
        panic!("unix endpoint expected");
    };
    assert_eq!(endpoint, &socket);
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(meta.uid(), 0, "bound by host root");
    let dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!((dir.uid(), dir.permissions().mode() & 0o777), (0, 0o700));
    // Nothing named like it inside; envd serves on an inherited descriptor.
    let (_, code) = sb.sh("test -e /run/wrenn/envd.sock || ls /run/wrenn").await;
    assert_ne!(code, 0, "the old socket directory is in the capsule");
    let cmdline = sb.ok("tr '\\0' ' ' < /proc/1/cmdline").await;
    assert!(cmdline.contains("--listen-fd"), "{cmdline}");

    // The capsule's writable layer is on the host; a symlink planted there is never
    // followed by the agent (usage, snapshot).
    sb.ok("ln -s / /root/escape && ln -s /etc/shadow /root/shadow")
        .await;
    let stats = host.runtime.stats(&sb.instance).await.unwrap();
    assert!(
        stats.disk_bytes < 64 << 20,
        "the agent followed a symlink: {stats:?}"
    );
    let (team, template) = (TeamId::new(), TemplateId::new());
    host.runtime
        .snapshot(&sb.instance, team, template)
        .await
        .unwrap();
    let copied = host
        .layout()
        .template_dir(team, template)
        .join("layers/0/root/escape");
    assert!(
        std::fs::symlink_metadata(&copied)
            .unwrap()
            .file_type()
            .is_symlink(),
        "copied as a symlink"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_capsule_root_can_neither_trace_envd_nor_open_its_descriptors() {
    let host = Host::new().await;
    let sb = host.sandbox().await;
    // envd (PID 1) holds host descriptors (its log file, its listening socket) and has
    // capsule root's uid: attaching to it, reading its memory or environment, or
    // opening its descriptors would reach the host.
    let out = sb
        .ok(r#"python3 - <<'EOF'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print("attach", libc.ptrace(16, 1, 0, 0), ctypes.get_errno())
for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/fd/2"):
    try:
        open(path, "rb").close()
        print(path, "opened")
    except PermissionError:
        print(path, "denied")
try:
    print("fd", os.readlink("/proc/1/fd/1"))
except PermissionError:
    print("fd denied")
EOF"#)
        .await;
    assert!(
        out.contains("attach -1 1\n"),
        "PTRACE_ATTACH to envd: {out}"
    );
    for denied in [
        "/proc/1/mem denied",
        "/proc/1/environ denied",
        "/proc/1/fd/2 denied",
        "fd denied",
    ] {
        assert!(out.contains(denied), "{denied}: {out}");
    }
    assert!(
        !out.contains(&host.layout().root().display().to_string()),
        "a host path showed: {out}"
    );
    // A process envd starts is dumpable as usual (debuggers work on it).
    assert_eq!(
        sb.ok("python3 -c 'import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))'")
            .await
            .trim(),
        "1"
    );
    assert_eq!(sb.ok("echo still serving").await, "still serving\n");

    // Processes envd starts inherit nothing of it but their stdio: not its listening
    // socket (they could accept the agent's connections), not its log, not whatever
    // the agent's own parent leaked.
    let leaked = sb
        .ok(r#"python3 -c "
import os
for fd in sorted(os.listdir('/proc/self/fd'), key=int):
    if int(fd) > 2:
        try:
            print(fd, os.readlink('/proc/self/fd/' + fd))
        except FileNotFoundError:
            pass
""#)
        .await;
    assert!(
        leaked.lines().all(|l| l.ends_with("/fd")),
        "inherited descriptors: {leaked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_sudo_python_and_git_work_for_a_user_in_a_debian_capsule() {
    let host = Host::new().await;
    let Some((team, template)) = host.debian_template() else {
        return;
    };
    let sb = host.sandbox_from(team, template).await;
    assert!(sb.ok("cat /etc/os-release").await.contains("Debian"));
    sb.ok(
        "id wrenn-user >/dev/null 2>&1 || useradd -m -u 1000 -s /bin/bash wrenn-user; \
         test -f /etc/sudoers.d/wrenn-user || \
         { echo 'wrenn-user ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/wrenn-user; \
           chmod 0440 /etc/sudoers.d/wrenn-user; }; \
         grep -q \"$(hostname)\" /etc/hosts || echo \"127.0.1.1 $(hostname)\" >> /etc/hosts",
    )
    .await;
    assert_eq!(sb.ok_as("wrenn-user", "id -u").await.trim(), "1000");
    assert_eq!(sb.ok_as("wrenn-user", "sudo -n id -u").await.trim(), "0");
    assert_eq!(
        sb.ok_as(
            "wrenn-user",
            "sudo -n sh -c 'echo root-file > /root/f && stat -c %u /root/f'"
        )
        .await
        .trim(),
        "0"
    );
    assert_eq!(
        sb.ok_as("wrenn-user", "python3 -c 'print(6 * 7)'")
            .await
            .trim(),
        "42"
    );
    sb.ok_as(
        "wrenn-user",
        "cd ~ && git init -q repo && cd repo && git -c user.name=w -c user.email=w@x \
         commit -q --allow-empty -m first && git log --oneline | wc -l",
    )
    .await;
    // apt's methods drop privileges to _apt (setgroups + setresuid).
    sb.ok("setpriv --reuid=_apt --regid=nogroup --clear-groups id -u")
        .await;
    // A PTY for the user: devpts gives it the tty group.
    let tty = sb
        .ok_as("wrenn-user", "python3 -c 'import os, pty; m, s = pty.openpty(); st = os.fstat(s); print(st.st_uid, st.st_gid)'")
        .await;
    assert_eq!(tty.trim(), "1000 5");
    let home = host
        .layout()
        .sandbox_dir(sb.id())
        .join("disk/upper/home/wrenn-user/repo/.git/HEAD");
    assert_eq!(
        std::fs::metadata(home).unwrap().uid(),
        1000,
        "on disk as uid 1000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_hardened_create_timings() {
    let host = Host::new().await;
    // Warm up (page cache, first netns).
    drop(host.sandbox().await);
    let mut times = Vec::new();
    for _ in 0..15 {
        let started = Instant::now();
        let sb = host.sandbox().await;
        times.push(started.elapsed());
        drop(sb);
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    eprintln!(
        "hardened create: p50 {:?}, min {:?}, max {max:?} over {} creates",
        p50,
        times[0],
        times.len()
    );
    assert!(p50 < Duration::from_secs(2), "create p50 {p50:?}");
}
