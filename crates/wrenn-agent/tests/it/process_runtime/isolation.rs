//! What a capsule sees: envd as pid 1 on a private overlay of the image, its own
//! network with NAT for egress, and the default image's user without the host's files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Host, channel, config, host};
use crate::common::test_image;
use wrenn_agent::runtime::Runtime;
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID};
use wrenn_proto::envd::v1::filesystem_client::FilesystemClient;
use wrenn_proto::envd::v1::{ListDirRequest, StatRequest};

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
