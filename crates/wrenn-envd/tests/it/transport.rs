//! envd over TCP and over a unix socket in-process, and the `wrenn-envd` binary: its
//! flags, serving on a socket, graceful SIGTERM, and reaping orphans as PID 1.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Envd, collect, sh, within};
use futures::StreamExt;
use wrenn_proto::envd::v1::{
    HealthRequest, ReadFileRequest, WriteFileHeader, WriteFileRequest,
    process_client::ProcessClient, system_client::SystemClient, write_file_request,
};

const BINARY: &str = env!("CARGO_BIN_EXE_wrenn-envd");

/// A child process that is killed (its whole process group) if the test fails first.
struct Spawned(std::process::Child);

impl Spawned {
    fn new(command: &mut Command) -> Self {
        use std::os::unix::process::CommandExt;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Self(child)
    }

    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(&self.0)
    }

    fn terminate(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::TERM).unwrap();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = rustix::process::kill_process_group(self.pid(), rustix::process::Signal::KILL);
            let _ = self.0.wait();
        }
    }
}

async fn exercise(envd: &mut Envd) {
    let health = envd
        .system
        .health(HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    let run = collect(envd.start(sh("echo over the wire")).await.unwrap()).await;
    assert_eq!(run.stdout(), "over the wire\n");
    let path = envd.path("wire.txt");
    let messages = vec![
        WriteFileRequest {
            msg: Some(write_file_request::Msg::Header(WriteFileHeader {
                path: path.clone(),
                ..Default::default()
            })),
        },
        WriteFileRequest {
            msg: Some(write_file_request::Msg::Data(b"payload".to_vec().into())),
        },
    ];
    envd.fs
        .write_file(futures::stream::iter(messages))
        .await
        .unwrap();
    let mut stream = envd
        .fs
        .read_file(ReadFileRequest { path })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().data, &b"payload"[..]);
}

#[tokio::test]
async fn serves_over_tcp_on_loopback() {
    let mut envd = Envd::tcp().await;
    assert!(
        matches!(envd.server.local_addr(), wrenn_envd::BoundAddr::Tcp(addr) if addr.port() != 0)
    );
    exercise(&mut envd).await;
}

#[tokio::test]
async fn serves_over_a_unix_socket_and_removes_it_at_shutdown() {
    let mut envd = Envd::unix().await;
    exercise(&mut envd).await;
    let socket = envd.dir.path().join("envd.sock");
    assert!(socket.exists());
    let Envd { server, dir, .. } = envd;
    within(server.shutdown()).await.unwrap();
    assert!(!socket.exists());
    drop(dir);
}

#[tokio::test]
async fn shutdown_ends_the_processes_envd_started() {
    let mut envd = Envd::unix().await;
    let mut stream = envd.start(sh("echo up; exec sleep 100")).await.unwrap();
    let mut seen = common::Collected::default();
    common::collect_until(&mut stream, &mut seen, |c| c.stdout == b"up\n").await;
    let pid = seen.pid;
    let Envd { server, .. } = envd;
    within(server.shutdown()).await.unwrap();
    within(async {
        while Path::new(&format!("/proc/{pid}")).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[test]
fn the_binary_prints_its_version() {
    let output = Command::new(BINARY).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("wrenn-envd {}", env!("CARGO_PKG_VERSION"))
    );
    let conflicting = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--socket", "/tmp/x.sock"])
        .output()
        .unwrap();
    assert!(!conflicting.status.success(), "one listen flag at a time");
}

async fn wait_for_health(socket: &Path) -> tonic::transport::Channel {
    within(async {
        loop {
            if let Ok(channel) = wrenn_envd::client::connect_unix(socket).await {
                if SystemClient::new(channel.clone())
                    .health(HealthRequest {})
                    .await
                    .is_ok()
                {
                    return channel;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Waits for the child without blocking the runtime (the test's client connections
/// must keep running to see envd's graceful goodbye).
async fn wait_for_exit(child: &mut Spawned) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "envd did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_binary_serves_on_a_socket_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("envd.sock");
    let mut child = Spawned::new(Command::new(BINARY).arg("--socket").arg(&socket));
    let channel = wait_for_health(&socket).await;
    let stream = ProcessClient::new(channel)
        .start(sh("echo from the binary"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(collect(stream).await.stdout(), "from the binary\n");

    child.terminate();
    let started = Instant::now();
    let status = wait_for_exit(&mut child).await;
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket is removed at shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "graceful, not cut off after the grace period"
    );
}

#[tokio::test]
async fn the_binary_serves_on_an_inherited_listening_socket() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // A duplicate without close-on-exec is what the child inherits.
    let inheritable = rustix::io::dup(&listener).unwrap();
    let child = Spawned::new(
        Command::new(BINARY)
            .arg("--listen-fd")
            .arg(inheritable.as_raw_fd().to_string()),
    );
    drop(inheritable);
    drop(listener);
    let channel = wait_for_health(&socket).await;
    let stream = ProcessClient::new(channel)
        .start(sh("echo inherited"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(collect(stream).await.stdout(), "inherited\n");
    child.terminate();
    let mut child = child;
    assert!(wait_for_exit(&mut child).await.success());

    let not_a_socket = Command::new(BINARY)
        .args(["--listen-fd", "0"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !not_a_socket.success(),
        "stdin is refused as a listening socket"
    );
}

/// Zombie children of `parent` (from /proc).
fn zombies_of(parent: u32) -> Vec<u32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after_comm) = stat.rsplit_once(") ").map(|(_, rest)| rest.to_owned()) else {
            continue;
        };
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        if fields.first() == Some(&"Z")
            && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        {
            zombies.push(pid);
        }
    }
    zombies
}

/// The pid of the only child of `parent`.
fn child_of(parent: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

#[tokio::test]
async fn as_pid_1_the_binary_reaps_orphans_without_stealing_exit_codes() {
    let unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status();
    if !unshare.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot create a pid namespace here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("envd.sock");
    let child = Spawned::new(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(BINARY)
            .arg("--socket")
            .arg(&socket),
    );
    let channel = wait_for_health(&socket).await;
    let envd_pid = within(async {
        loop {
            if let Some(pid) = child_of(child.0.id()) {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut processes = ProcessClient::new(channel);

    // Each shell leaves a background child behind; they become envd's orphans.
    for round in 0..5 {
        let stream = processes
            .start(sh(&format!("sleep 0.1 & sleep 0.1 & exit {round}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            collect(stream).await.exit_code(),
            round,
            "envd's own exit status is intact"
        );
    }
    within(async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if zombies_of(envd_pid).is_empty() {
                return;
            }
        }
    })
    .await;

    // envd is PID 1 of the namespace: SIGTERM (sent from outside) stops it gracefully.
    let envd = rustix::process::Pid::from_raw(envd_pid as i32).unwrap();
    rustix::process::kill_process(envd, rustix::process::Signal::TERM).unwrap();
    let mut child = child;
    assert!(wait_for_exit(&mut child).await.success());
}
