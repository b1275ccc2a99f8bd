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

mod isolation;
mod lifecycle;
