//! The capsule network matrix against the real thing: capsules of the process runtime,
//! the nftables firewall, the DNS forwarder, and test hosts made on this machine (a
//! network namespace `wrenn-nettest-…` linked to the host by a veth, holding private,
//! CGNAT and documentation-range addresses). No test sends traffic to an address that
//! is not on this machine, except one query to the host's own resolver that the
//! firewall must stop. Needs root, as the runtime does.
//!
//! `ip`, `iptables` and `nft` are used here only to build test hosts and to look at
//! what the runtime did; the runtime itself needs none of them.
//!
//! The test binary is the sandbox init program (see `main.rs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::envd_binary;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tonic::transport::{Channel, Endpoint, Uri};
use wrenn_agent::network::{self, Ipv4Range, Network, NetworkOptions};
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::runtime::{EnvdEndpoint, Instance, Runtime, SandboxConfig};
use wrenn_core::config::EgressConfig;
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId, TeamId};
use wrenn_core::layout::Layout;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::envd::v1::{ProcessConfig, StartRequest, data_event, process_event};

// ---------------------------------------------------------------------------------------
// Capsules
// ---------------------------------------------------------------------------------------

/// A process runtime over a fresh `$WRENN_DIR`.
struct Host {
    runtime: Arc<ProcessRuntime>,
    _dir: tempfile::TempDir,
}

impl Host {
    async fn new() -> Self {
        Self::with(NetworkOptions::default()).await
    }

    async fn with(network: NetworkOptions) -> Self {
        let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
        let dir = tempfile::Builder::new().prefix("wn").tempdir().unwrap();
        let image = tokio::task::spawn_blocking(|| {
            wrenn_agent::image::ensure_shared_for_tests().expect("build the default image")
        })
        .await
        .unwrap();
        let options = ProcessRuntimeOptions {
            network,
            base_image: Some(image.reference()),
            ..Default::default()
        };
        let runtime = ProcessRuntime::new(Layout::new(dir.path()), envd, options)
            .await
            .expect("the process runtime needs root, cgroups, overlayfs and nf_tables");
        Self {
            runtime: Arc::new(runtime),
            _dir: dir,
        }
    }

    async fn capsule(&self) -> Capsule {
        let config = SandboxConfig {
            id: SandboxId::new(),
            team_id: TeamId::new(),
            template_team_id: PLATFORM_TEAM_ID,
            template_id: BUILTIN_TEMPLATE_ID,
            vcpus: 1,
            memory_mb: 256,
            disk_size_mb: 1024,
            default_user: "root".into(),
            default_env: BTreeMap::new(),
        };
        let mut capsule = Capsule {
            runtime: self.runtime.clone(),
            instance: Instance {
                id: config.id,
                envd: EnvdEndpoint::Unix(PathBuf::new()),
                host_ip: String::new(),
                metadata: BTreeMap::new(),
            },
        };
        capsule.instance = self.runtime.create(&config).await.expect("create");
        capsule
    }
}

/// A capsule, destroyed on drop.
struct Capsule {
    runtime: Arc<ProcessRuntime>,
    instance: Instance,
}

impl Capsule {
    fn net(&self) -> network::SandboxNet {
        self.runtime
            .network(self.instance.id)
            .expect("a running capsule's network")
    }

    fn addr(&self) -> Ipv4Addr {
        self.net().sandbox_addr
    }

    fn gateway(&self) -> Ipv4Addr {
        self.net().host_addr
    }

    /// Runs `script` with `/bin/sh -c`; returns stdout+stderr and the exit code.
    async fn sh(&self, script: &str) -> (String, i32) {
        let EnvdEndpoint::Unix(path) = self.instance.envd.clone() else {
            panic!("the process runtime serves envd on a unix socket");
        };
        let channel: Channel = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .expect("connect to envd");
        let mut events = ProcessClient::new(channel)
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
                    Some(data_event::Output::Stdout(b)) | Some(data_event::Output::Stderr(b)) => {
                        out.extend_from_slice(&b)
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

    /// Opens a TCP connection to `addr:port` from inside the capsule and reads what the
    /// server says first; `Err` with the failure otherwise.
    async fn tcp(&self, addr: impl std::fmt::Display, port: u16) -> Result<String, String> {
        let script = format!(
            "python3 -c 'import socket; s = socket.create_connection((\"{addr}\", {port}), timeout=3); \
             print(s.recv(64).decode())' 2>&1"
        );
        match self.sh(&script).await {
            (out, 0) => Ok(out.trim().to_owned()),
            (out, _) => Err(out.trim().lines().last().unwrap_or_default().to_owned()),
        }
    }
}

impl Drop for Capsule {
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

// ---------------------------------------------------------------------------------------
// Listeners that count their clients
// ---------------------------------------------------------------------------------------

/// A TCP server that greets each client with `banner` and counts them.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    fn start(listener: tokio::net::TcpListener, banner: &str) -> Self {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let banner = banner.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(banner.as_bytes()).await;
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    async fn bind(addr: SocketAddr, banner: &str) -> Self {
        Self::start(tokio::net::TcpListener::bind(addr).await.unwrap(), banner)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The host's own address toward the internet (the source of its default route; a
/// connected UDP socket sends nothing).
fn host_address() -> Ipv4Addr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("203.0.113.80:9").unwrap();
    match s.local_addr().unwrap().ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------
// Test hosts on this machine
// ---------------------------------------------------------------------------------------

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace linked to the host by a veth, holding a private address
/// (`172.31.<k>.2`, its link to the host `172.31.<k>.0/30`), a CGNAT one
/// (`100.64.77.<k>`), a link-local one (`169.254.77.<k>`) and a documentation-range
/// one (`198.51.100.<k>`), with host routes to them, and a TCP server on all of them.
struct TestHost {
    k: u8,
    netns: String,
    link: String,
    server: Server,
}

impl TestHost {
    async fn new(k: u8) -> Self {
        let netns = format!("wrenn-nettest-{k}");
        let link = format!("wnt-{k}");
        // Leftovers of an interrupted run.
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["addr", "add", &format!("172.31.{k}.1/30"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", netns.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("172.31.{k}.2/30"), "dev", "eth0"]);
        for other in Self::others(k) {
            inside(&["addr", "add", &format!("{other}/32"), "dev", "eth0"]);
        }
        inside(&["link", "set", "eth0", "up"]);
        inside(&["route", "add", "default", "via", &format!("172.31.{k}.1")]);
        for other in Self::others(k) {
            ip(&[
                "route",
                "replace",
                &format!("{other}/32"),
                "via",
                &format!("172.31.{k}.2"),
            ]);
        }
        // A server in the namespace: bind on a thread that enters it (the socket stays
        // there), serve from the runtime.
        // (A thread of its own: it ends in the test namespace.)
        let path = network::netns_path(&netns);
        let std_listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            let l = std::net::TcpListener::bind("0.0.0.0:7777").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .join()
        .unwrap();
        let server = Server::start(
            tokio::net::TcpListener::from_std(std_listener).unwrap(),
            "hello from the test host",
        );
        Self {
            k,
            netns,
            link,
            server,
        }
    }

    fn others(k: u8) -> [String; 3] {
        [
            format!("198.51.100.{k}"),
            format!("100.64.77.{k}"),
            format!("169.254.77.{k}"),
        ]
    }

    fn private(&self) -> String {
        format!("172.31.{}.2", self.k)
    }

    fn documentation(&self) -> String {
        format!("198.51.100.{}", self.k)
    }

    fn cgnat(&self) -> String {
        format!("100.64.77.{}", self.k)
    }

    fn link_local(&self) -> String {
        format!("169.254.77.{}", self.k)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for other in Self::others(self.k) {
            let _ = Command::new("ip")
                .args(["route", "del", &format!("{other}/32")])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// `iptables -I <chain> 1 -j ACCEPT` with a comment of ours, removed on drop.
struct CompetingAccept {
    chain: &'static str,
    comment: String,
}

impl CompetingAccept {
    fn insert(chain: &'static str) -> Self {
        let comment = format!("wrenn-nettest-{}", std::process::id());
        let status = Command::new("iptables")
            .args([
                "-w",
                "5",
                "-I",
                chain,
                "1",
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "ACCEPT",
            ])
            .status()
            .expect("iptables");
        assert!(
            status.success(),
            "inserting the competing rule into {chain}"
        );
        Self { chain, comment }
    }
}

impl Drop for CompetingAccept {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args([
                "-w",
                "5",
                "-D",
                self.chain,
                "-m",
                "comment",
                "--comment",
                &self.comment,
                "-j",
                "ACCEPT",
            ])
            .status();
    }
}

fn nft_table(name: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "table", "inet", name])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a TCP server on port 7000 in `capsule` that greets with `banner` and logs
/// each client to `/tmp/clients`; waits until the host reaches it.
async fn serve_in(capsule: &Capsule, banner: &str) {
    capsule
        .sh(&format!(
            "python3 -c 'import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind((\"0.0.0.0\", 7000)); s.listen(8)\nwhile True:\n c,a=s.accept(); open(\"/tmp/clients\", \"a\").write(a[0] + \"\\n\"); c.send(b\"{banner}\"); c.close()' \
             >/dev/null 2>&1 &"
        ))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect((capsule.addr(), 7000)).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the host cannot reach the server in the capsule: {e}"),
        }
    }
}

/// The clients the server of [`serve_in`] saw, by address.
async fn clients_of(capsule: &Capsule) -> Vec<String> {
    let (out, _) = capsule.sh("cat /tmp/clients 2>/dev/null").await;
    out.lines().map(str::to_owned).collect()
}

/// Asserts that capsule `from` reaches neither capsule `to` (serving on 7000) nor any
/// of `on_host` at the gateway or the host's address, and that no server saw it.
async fn assert_isolated(from: &Capsule, to: &Capsule, on_host: &[&Server], host_addr: Ipv4Addr) {
    let r = from.tcp(to.addr(), 7000).await;
    assert!(r.is_err(), "capsule → capsule reached {}: {r:?}", to.addr());
    assert!(
        !clients_of(to).await.contains(&from.addr().to_string()),
        "the other capsule's server saw a client"
    );
    for server in on_host {
        let before = server.accepted();
        for target in [from.gateway(), host_addr] {
            let r = from.tcp(target, server.port()).await;
            assert!(
                r.is_err(),
                "capsule → host {target}:{} reached: {r:?}",
                server.port()
            );
        }
        assert_eq!(
            server.accepted(),
            before,
            "a host server saw a capsule client"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_capsules_reach_neither_each_other_nor_the_host_even_past_competing_accept_rules() {
    let host = Host::new().await;
    let a = host.capsule().await;
    let b = host.capsule().await;
    let host_addr = host_address();

    // A server in each; the host reaches them (the port proxy's path).
    serve_in(&a, "from a").await;
    serve_in(&b, "from b").await;
    assert_eq!(
        b.tcp("127.0.0.1", 7000).await.as_deref(),
        Ok("from b"),
        "it works inside"
    );

    // Host servers: on every address, on the capsule's gateway, on the host's address.
    let any = Server::bind("0.0.0.0:0".parse().unwrap(), "host any").await;
    let on_gateway = Server::bind(SocketAddr::new(a.gateway().into(), 0), "host gateway").await;
    let on_host_addr = Server::bind(SocketAddr::new(host_addr.into(), 0), "host address").await;
    assert!(
        tokio::net::TcpStream::connect((host_addr, any.port()))
            .await
            .is_ok(),
        "the host servers work"
    );
    // `connect` returns once the kernel has the connection; the server's task counts
    // it when it accepts it, maybe later: the baseline includes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while any.accepted() == 0 {
        assert!(
            Instant::now() < deadline,
            "the host's connection was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let any_accepted = any.accepted();

    let r = a.tcp(b.addr(), 7000).await;
    assert!(r.is_err(), "capsule A reached capsule B: {r:?}");
    assert!(!clients_of(&b).await.contains(&a.addr().to_string()));
    for (server, target) in [
        (&any, a.gateway()),
        (&any, host_addr),
        (&on_gateway, a.gateway()),
        (&on_host_addr, host_addr),
    ] {
        let r = a.tcp(target, server.port()).await;
        assert!(
            r.is_err(),
            "capsule → host {target}:{} reached: {r:?}",
            server.port()
        );
    }
    assert_eq!(any.accepted(), any_accepted);
    assert_eq!(on_gateway.accepted() + on_host_addr.accepted(), 0);

    // Docker-style ACCEPT rules inserted first into FORWARD and INPUT change nothing:
    // a drop in our table is final.
    {
        let _forward = CompetingAccept::insert("FORWARD");
        let _input = CompetingAccept::insert("INPUT");
        assert_isolated(&a, &b, &[&any, &on_gateway], host_addr).await;
        assert_isolated(&b, &a, &[&any, &on_host_addr], host_addr).await;
        assert_eq!(any.accepted(), any_accepted);
    }
    // Still: the host reaches the capsules (the port proxy's path).
    assert!(
        tokio::net::TcpStream::connect((b.addr(), 7000))
            .await
            .is_ok()
    );
    assert!(
        tokio::net::TcpStream::connect((a.addr(), 7000))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_egress_drops_private_cgnat_and_link_local_and_allows_documentation_ranges() {
    let test_host = TestHost::new(41).await;
    let host = Host::new().await;
    let capsule = host.capsule().await;

    assert_eq!(
        capsule
            .tcp(test_host.documentation(), 7777)
            .await
            .as_deref(),
        Ok("hello from the test host"),
        "documentation ranges (where package mirrors may sit) are allowed"
    );
    let reached = test_host.server.accepted();
    for blocked in [
        test_host.private(),
        test_host.cgnat(),
        test_host.link_local(),
    ] {
        let r = capsule.tcp(&blocked, 7777).await;
        assert!(r.is_err(), "capsule reached {blocked}: {r:?}");
    }
    assert_eq!(
        test_host.server.accepted(),
        reached,
        "the test host saw a blocked client"
    );
    // The host itself reaches them all (the block is for capsules only).
    for addr in [
        test_host.private(),
        test_host.cgnat(),
        test_host.documentation(),
    ] {
        let addr: Ipv4Addr = addr.parse().unwrap();
        assert!(
            tokio::net::TcpStream::connect((addr, 7777)).await.is_ok(),
            "{addr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_egress_allow_list_lets_a_capsule_reach_an_otherwise_blocked_private_host() {
    let test_host = TestHost::new(42).await;
    let table = format!("wrenn_nettest_allow_{}", std::process::id());
    let host = Host::with(NetworkOptions {
        range: Ipv4Range::new(Ipv4Addr::new(10, 202, 0, 0), 16).unwrap(),
        table: table.clone(),
        egress: EgressConfig {
            allow: vec![format!("172.31.{}.0/24", test_host.k).parse().unwrap()],
            deny: vec![test_host.documentation().parse().unwrap()],
        },
        ..Default::default()
    })
    .await;
    let capsule = host.capsule().await;
    let result = async {
        let private = capsule.tcp(test_host.private(), 7777).await;
        let documentation = capsule.tcp(test_host.documentation(), 7777).await;
        let cgnat = capsule.tcp(test_host.cgnat(), 7777).await;
        (private, documentation, cgnat)
    }
    .await;
    drop(capsule);
    drop(host);
    network::delete_firewall(&table).await.unwrap();
    assert!(nft_table(&table).is_empty(), "the test table is gone");

    let (private, documentation, cgnat) = result;
    assert_eq!(
        private.as_deref(),
        Ok("hello from the test host"),
        "allowed"
    );
    assert!(
        documentation.is_err(),
        "WRENN_EGRESS_DENY beats the default allow: {documentation:?}"
    );
    assert!(
        cgnat.is_err(),
        "the rest of the default deny holds: {cgnat:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_capsules_resolve_names_through_the_forwarder_not_the_private_resolver() {
    let host = Host::new().await;
    let capsule = host.capsule().await;
    let gateway = capsule.gateway();

    let (resolv, code) = capsule.sh("cat /etc/resolv.conf").await;
    assert_eq!(code, 0);
    assert!(
        resolv.contains(&format!("nameserver {gateway}\n")),
        "{resolv}"
    );
    // A plain file of the capsule's root (written at every start; no host path
    // behind it), not writable by its users.
    assert_eq!(
        capsule.sh("stat -c %u:%a /etc/resolv.conf").await.0.trim(),
        "0:644"
    );
    assert_ne!(
        capsule
            .sh(
                "setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo x > /etc/resolv.conf'"
            )
            .await
            .1,
        0,
        "users cannot redirect the capsule's DNS"
    );

    let (hosts, code) = capsule.sh("getent hosts deb.debian.org").await;
    assert_eq!(code, 0, "resolving through the forwarder: {hosts}");
    let expected = Command::new("getent")
        .args(["hosts", "deb.debian.org"])
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout);
    let first = expected.split_whitespace().next().unwrap_or("(none)");
    assert!(
        hosts.contains(first),
        "capsule {hosts:?} vs host {expected:?}"
    );

    // The same over TCP, and the host's resolver is not reachable directly.
    let query = r#"
import socket, struct, sys
server, tcp = sys.argv[1], sys.argv[2] == "tcp"
q = struct.pack("!HHHHHH", 0x5752, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in "deb.debian.org".split(".")) + b"\0"
q += struct.pack("!HH", 1, 1)
if tcp:
    s = socket.create_connection((server, 53), timeout=3)
    s.sendall(struct.pack("!H", len(q)) + q)
    n = struct.unpack("!H", s.recv(2))[0]
    a = s.recv(n)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, (server, 53))
    a = s.recv(4096)
ok = a[:2] == q[:2] and a[3] & 15 == 0 and struct.unpack("!H", a[6:8])[0] > 0
print("answers" if ok else "bad answer")
"#;
    let (_, code) = capsule
        .sh(&format!("cat > /root/dnsq.py <<'EOF'\n{query}\nEOF"))
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        capsule
            .sh(&format!("python3 /root/dnsq.py {gateway} tcp"))
            .await,
        ("answers\n".into(), 0)
    );
    assert_eq!(
        capsule
            .sh(&format!("python3 /root/dnsq.py {gateway} udp"))
            .await,
        ("answers\n".into(), 0)
    );
    let resolver = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("nameserver ")
                .map(str::trim)
                .map(str::to_owned)
        })
        .expect("the host has a resolver");
    let direct = capsule
        .sh(&format!("python3 /root/dnsq.py {resolver} udp"))
        .await;
    assert_ne!(
        direct.1, 0,
        "the capsule reached the host's resolver {resolver} directly: {direct:?}"
    );
    let direct = capsule
        .sh(&format!("python3 /root/dnsq.py {resolver} tcp"))
        .await;
    assert_ne!(
        direct.1, 0,
        "the capsule reached the host's resolver {resolver} over TCP: {direct:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_teardown_leaves_no_namespace_veth_listener_or_rule() {
    let host = Host::new().await;
    let capsule = host.capsule().await;
    let net = capsule.net();
    let id = capsule.instance.id;
    assert!(network::netns_path(&net.netns).exists());
    assert!(Path::new("/sys/class/net").join(&net.veth).exists());
    assert!(host.runtime.networking().serves_dns(&net.netns));
    // One table for all capsules: nothing in it names a capsule.
    let table = nft_table("wrenn");
    assert!(!table.is_empty(), "our table exists");
    assert!(!table.contains(&net.veth) && !table.contains(&net.sandbox_addr.to_string()));

    let started = Instant::now();
    host.runtime.destroy(id).await.unwrap();
    eprintln!("destroy took {:?}", started.elapsed());
    std::mem::forget(capsule); // destroyed already
    // The network goes right after destroy answers (its processes are killed first).
    host.runtime.removals_settled().await;

    assert!(
        !network::netns_path(&net.netns).exists(),
        "namespace file left"
    );
    assert!(!ip(&["netns", "list"]).contains(&net.netns));
    assert!(!host.runtime.networking().serves_dns(&net.netns));
    // The DNS sockets are closed: the gateway's port 53 can be bound again.
    for _ in 0..2 {
        let udp = std::net::UdpSocket::bind((net.host_addr, 53));
        // The address itself may already be gone with the veth: that is fine too.
        if let Err(e) = &udp {
            assert_eq!(e.kind(), std::io::ErrorKind::AddrNotAvailable, "{e}");
        }
    }
    // The kernel removes the veth pair with the namespace, in the background.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new("/sys/class/net").join(&net.veth).exists() {
        assert!(Instant::now() < deadline, "veth {} left", net.veth);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("veth gone {:?} after destroy started", started.elapsed());
    assert_eq!(
        nft_table("wrenn"),
        table,
        "the firewall does not change per capsule"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_the_firewall_is_one_table_of_ours_that_nft_reads_back() {
    let table = format!("network_{}", std::process::id());
    let options = NetworkOptions {
        range: Ipv4Range::new(Ipv4Addr::new(10, 203, 0, 0), 16).unwrap(),
        table: table.clone(),
        egress: EgressConfig {
            allow: vec!["10.9.0.0/16".parse().unwrap()],
            deny: vec!["0.0.0.0/0".parse().unwrap()],
        },
        ..Default::default()
    };
    let network = Network::new(options).await.unwrap();
    network.reassert().await.unwrap();
    let listed = nft_table(&table);
    drop(network);
    network::delete_firewall(&table).await.unwrap();
    let gone = nft_table(&table);
    eprintln!("{listed}");
    for line in [
        "type filter hook prerouting priority mangle; policy accept;",
        "iifname \"wrenn-v*\" fib saddr . iif oif 0 counter packets 0 bytes 0 drop",
        "type filter hook input priority filter - 5; policy accept;",
        "meta nfproto ipv6 iifname \"wrenn-v*\" counter packets 0 bytes 0 drop",
        "iifname \"wrenn-v*\" ip saddr 10.203.0.0/16 jump capsule_to_host",
        "ct state established,related accept",
        "ip daddr 10.203.0.0/16 udp dport 53 accept",
        "ip daddr 10.203.0.0/16 tcp dport 53 accept",
        "ip daddr 10.203.0.0/16 icmp type echo-request accept",
        "type filter hook forward priority filter - 5; policy accept;",
        "iifname \"wrenn-v*\" ip saddr 10.203.0.0/16 jump egress",
        "oifname \"wrenn-v*\" ip daddr 10.203.0.0/16 ct state established,related accept",
        "oifname \"wrenn-v*\" ip daddr 10.203.0.0/16 counter packets 0 bytes 0 drop",
        "ip daddr 10.203.0.0/16 counter packets 0 bytes 0 reject with icmpx admin-prohibited",
        "ip daddr 10.9.0.0/16 accept",
        "ip daddr 0.0.0.0/0 counter packets 0 bytes 0 reject with icmpx admin-prohibited",
        "ip daddr 169.254.0.0/16 counter packets 0 bytes 0 reject with icmpx admin-prohibited",
        "ip6 daddr fc00::/7 counter packets 0 bytes 0 reject with icmpx admin-prohibited",
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip saddr 10.203.0.0/16 ip daddr != 10.203.0.0/16 masquerade",
    ] {
        assert!(listed.contains(line), "missing {line:?} in:\n{listed}");
    }
    // The host's own network (from netlink) is denied, the documentation ranges are not.
    let host_net = format!("{}", host_address());
    let host_net = host_net.rsplit_once('.').unwrap().0;
    assert!(
        listed.contains(&format!("ip daddr {host_net}.0/")),
        "{listed}"
    );
    assert!(!listed.contains("203.0.113.0") && !listed.contains("198.51.100.0"));
    // The allow comes before the catch-all deny (most specific first).
    assert!(listed.find("10.9.0.0/16 accept") < listed.find("0.0.0.0/0 counter"));
    assert!(gone.is_empty(), "deleted: {gone}");
}

/// Asks `server` (UDP) for `name`'s address; true if an answer with records came back.
async fn resolves(server: Ipv4Addr, name: &str) -> bool {
    let mut q = vec![0x57, 0x52, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    socket.send_to(&q, (server, 53)).await.unwrap();
    let mut answer = [0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut answer)).await {
        Ok(Ok(n)) => n > 12 && answer[..2] == q[..2] && answer[3] & 15 == 0 && answer[7] > 0,
        _ => false,
    }
}

/// Host interfaces whose name starts with `prefix`.
fn host_interfaces(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_spare_networks_are_ready_configured_and_vanish_with_the_agent() {
    let prefix = "wrspare-v";
    let network = Network::new(NetworkOptions {
        range: Ipv4Range::new(Ipv4Addr::new(10, 205, 0, 0), 16).unwrap(),
        table: format!("wrenn_nettest_spare_{}", std::process::id()),
        interface_prefix: prefix.into(),
        spare_networks: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while network.spares_ready() < 2 {
        assert!(
            Instant::now() < deadline,
            "spare networks never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each spare holds a slot: its host end exists, addressed and up.
    assert_eq!(host_interfaces(prefix).len(), 2);

    // A prepared capsule network is a spare, named: already addressed inside.
    let name = format!("wrenn-netspare-{}", std::process::id());
    let net = network.attach(&name, &name).await.unwrap();
    assert!(net.veth.starts_with(prefix));
    let inside = Command::new("ip")
        .args(["-n", &name, "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let inside = String::from_utf8_lossy(&inside.stdout);
    assert!(
        inside.contains(&format!("{}/30", net.sandbox_addr)),
        "{inside}"
    );
    assert!(
        resolves(net.host_addr, "deb.debian.org").await,
        "the forwarder answers"
    );
    network.remove(&name).await.unwrap();

    // The agent goes away: its spares (unnamed namespaces) take their veths along.
    drop(network);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host_interfaces(prefix).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            host_interfaces(prefix)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    network::delete_firewall(&format!("wrenn_nettest_spare_{}", std::process::id()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_a_restarted_agent_adopts_a_capsule_network_and_serves_its_dns() {
    let name = format!("wrenn-netadopt-{}", std::process::id());
    let first = Network::new(NetworkOptions::default()).await.unwrap();
    let net = first.attach(&name, &name).await.unwrap();
    assert!(
        resolves(net.host_addr, "deb.debian.org").await,
        "the forwarder answers"
    );
    let recorded = serde_json::to_string(&net).unwrap();
    drop(first); // the agent goes away; the namespace and veth stay

    let second = Network::new(NetworkOptions::default()).await.unwrap();
    let net: network::SandboxNet = serde_json::from_str(&recorded).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match second.adopt(&net, &name).await {
            Ok(()) => break,
            // The first agent's sockets close as its tasks wind down.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("adopt: {e}"),
        }
    }
    assert!(second.serves_dns(&name));
    assert!(
        resolves(net.host_addr, "deb.debian.org").await,
        "served again"
    );
    second.remove(&name).await.unwrap();
    assert!(!network::netns_path(&name).exists());
    let missing = second.adopt(&net, &name).await.unwrap_err();
    let missing = wrenn_core::report::error_chain(&missing);
    assert!(missing.contains(&name), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_setup_and_teardown_timings() {
    let network = Network::new(NetworkOptions::default()).await.unwrap();
    let mut create = Vec::new();
    let mut attach = Vec::new();
    let mut remove = Vec::new();
    for i in 0..30 {
        let name = format!("wrenn-nettime-{}-{i}", std::process::id());
        let t = Instant::now();
        let claimed = network.prepare(&name).await.unwrap();
        create.push(t.elapsed());
        let t = Instant::now();
        let net = network.serve(claimed, &name).await.unwrap();
        attach.push(t.elapsed());
        assert!(Path::new("/sys/class/net").join(&net.veth).exists());
        let t = Instant::now();
        network.remove(&name).await.unwrap();
        remove.push(t.elapsed());
        assert!(!network::netns_path(&name).exists());
    }
    drop(network);
    // The same inside whole capsules: create (network setup overlaps the cgroups and
    // envd's start) and destroy (network removal is an unmount).
    let host = Host::new().await;
    let mut capsule_create = Vec::new();
    let mut capsule_destroy = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let capsule = host.capsule().await;
        capsule_create.push(t.elapsed());
        let t = Instant::now();
        host.runtime.destroy(capsule.instance.id).await.unwrap();
        capsule_destroy.push(t.elapsed());
        std::mem::forget(capsule);
    }
    host.runtime.removals_settled().await;
    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize]
    };
    eprintln!(
        "capsule create p50 {:?} p90 {:?}; destroy p50 {:?} p90 {:?}",
        p(&mut capsule_create, 0.5),
        p(&mut capsule_create, 0.9),
        p(&mut capsule_destroy, 0.5),
        p(&mut capsule_destroy, 0.9)
    );
    eprintln!(
        "prepare (a spare named, else netns + veth + addresses) p50 {:?} p90 {:?}; serve DNS p50 {:?} p90 {:?}; \
         remove p50 {:?} p90 {:?}",
        p(&mut create, 0.5),
        p(&mut create, 0.9),
        p(&mut attach, 0.5),
        p(&mut attach, 0.9),
        p(&mut remove, 0.5),
        p(&mut remove, 0.9)
    );
}
