//! The agent end to end over the QEMU runtime: every capsule a virtual machine booted
//! from the default image's kernel (TCG on hosts where KVM cannot boot guests, as on
//! the machines CI runs on), envd as the guest's PID 1 reached over the capsule's TAP
//! network. Memory survives pause and hibernation, the proxy reaches servers on the
//! guest's address and on its loopback, a template carries a running server into new
//! capsules, the guest's traffic leaves only as its capsule, and nothing is
//! left once capsules are destroyed. Needs root and `qemu-system-x86_64`.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Envd, PATIENCE, command, eventually, shell};
use tonic::Code;
use tonic::transport::Channel;
use wrenn_agent::manager::ManagerSettings;
use wrenn_agent::runtime::Runtime;
use wrenn_agent::runtime::qemu::{QemuRuntime, QemuRuntimeOptions};
use wrenn_agent::{Agent, AgentOptions};
use wrenn_core::id::SandboxId;
use wrenn_core::layout::Layout;
use wrenn_proto::envd::v1 as ev;
use wrenn_proto::hostagent::v1 as pb;

/// Small machines: TCG runs every guest instruction in software.
const MEMORY_MB: u32 = 256;
const DISK_MB: u32 = 2048;

/// Runs `sh -c line` in capsule `id` through the agent: (stdout, exit code).
async fn sh(channel: &Channel, id: SandboxId, line: &str) -> Result<(String, i32), tonic::Status> {
    let ran = Envd::of(channel, id).sh(line).await?;
    Ok((ran.stdout, ran.exit_code))
}

/// Starts `start` in capsule `id` as a background process tagged `tag`.
async fn spawn(
    channel: &Channel,
    id: SandboxId,
    mut start: ev::StartRequest,
    tag: &str,
) -> ev::StartEvent {
    start.tag = Some(tag.into());
    Envd::of(channel, id).spawn(start).await.expect("start")
}

fn create_request(id: SandboxId) -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        memory_mb: MEMORY_MB,
        disk_size_mb: DISK_MB,
        vcpus: 1,
        ..common::create_request(id, 0)
    }
}

fn qemu_installed() -> bool {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .any(|d| d.join("qemu-system-x86_64").is_file());
    if !found {
        assert!(
            std::env::var_os("WRENN_TEST_REQUIRE_SERVICES").is_none(),
            "qemu-system-x86_64 is missing (Debian: apt-get install qemu-system-x86)"
        );
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
    }
    found
}

async fn options() -> QemuRuntimeOptions {
    let image = tokio::task::spawn_blocking(common::test_image)
        .await
        .unwrap();
    QemuRuntimeOptions {
        image: Some(image),
        warm_shape: (1, MEMORY_MB, DISK_MB),
        ..Default::default()
    }
}

/// QEMU processes whose command line names `dir`.
fn qemu_processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("qemu-system-x86_64") && cmdline.contains(&needle)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_over_the_qemu_runtime() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the QEMU runtime needs root (network namespaces, TAP)");
        return;
    }
    if !qemu_installed() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("wq").tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let envd = tokio::task::spawn_blocking(common::envd_binary)
        .await
        .unwrap();
    let result = tokio::spawn(scenario(layout.clone(), envd.clone())).await;
    // Whatever happened, remove every capsule (QEMU, network, files).
    let rt = QemuRuntime::new(layout.clone(), envd, options().await)
        .await
        .unwrap();
    let _ = rt.sweep(&[]).await;
    for config in rt.hibernated().await.unwrap_or_default() {
        let _ = rt.destroy(config.id).await;
    }
    assert!(
        qemu_processes_under(dir.path()).is_empty(),
        "QEMU processes are left"
    );
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(layout: Layout, envd: PathBuf) {
    let started = Instant::now();
    let runtime = QemuRuntime::new(layout.clone(), envd.clone(), options().await)
        .await
        .expect("the QEMU runtime starts (root, QEMU, nf_tables)");
    eprintln!(
        "QEMU runtime ready under {} in {:?}",
        runtime.accel(),
        started.elapsed()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut agent_options = AgentOptions::new(Arc::new(runtime), layout.clone(), listener);
    agent_options.manager = ManagerSettings {
        envd_ready_timeout: Duration::from_secs(60),
        drain_grace: Duration::from_millis(200),
        ..ManagerSettings::default()
    };
    let agent = Agent::start(agent_options).await.unwrap();
    let channel = common::connect_channel(agent.local_addr()).await;
    let c = common::agent_client(&channel);

    // Create (the first one waits for the warm snapshot the agent makes at start) and
    // exec: the guest runs its own kernel, envd is its PID 1.
    let id = SandboxId::new();
    let t = Instant::now();
    let created = c
        .clone()
        .create_sandbox(create_request(id))
        .await
        .expect("create a VM capsule")
        .into_inner();
    eprintln!(
        "first create (warm snapshot made, then restored): {:?}",
        t.elapsed()
    );
    assert_eq!(created.metadata["runtime"], "qemu");
    assert_eq!(
        sh(&channel, id, "echo hi").await.unwrap(),
        ("hi\n".into(), 0)
    );
    let kernel = sh(&channel, id, "uname -r").await.unwrap().0;
    assert!(kernel.contains("cloud-amd64"), "guest kernel {kernel}");
    assert_eq!(
        sh(&channel, id, "cat /proc/1/comm").await.unwrap().0,
        "wrenn-envd\n"
    );
    assert_eq!(
        sh(&channel, id, "hostname").await.unwrap().0.trim(),
        id.to_string()
    );
    let root_size = sh(&channel, id, "df -m / | tail -1 | awk '{print $2}'")
        .await
        .unwrap()
        .0;
    let root_mb: u64 = root_size.trim().parse().unwrap();
    assert!(
        (DISK_MB as u64 * 8 / 10..=DISK_MB as u64).contains(&root_mb),
        "the root file system was grown to the disk: {root_mb} MiB"
    );
    // The guest's clock was set from the host's (it was restored from a snapshot).
    let guest_now: i64 = sh(&channel, id, "date +%s")
        .await
        .unwrap()
        .0
        .trim()
        .parse()
        .unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest_now - host_now).abs() <= 5,
        "guest clock {guest_now}, host {host_now}"
    );

    // A second create restores the warm snapshot at once.
    let second = SandboxId::new();
    let t = Instant::now();
    c.clone()
        .create_sandbox(create_request(second))
        .await
        .unwrap();
    eprintln!("create from the warm snapshot: {:?}", t.elapsed());
    assert_eq!(sh(&channel, second, "echo two").await.unwrap().0, "two\n");
    assert_eq!(
        sh(&channel, second, "hostname").await.unwrap().0.trim(),
        second.to_string(),
        "each capsule restored from the warm snapshot has its own name"
    );

    // The guest reaches DNS through its capsule's forwarder, and leaves only as its
    // capsule: the host's agent port and the other capsule are out of reach.
    let (out, code) = sh(&channel, id, "getent hosts deb.debian.org")
        .await
        .unwrap();
    assert_eq!(code, 0, "DNS from the guest: {out}");
    let gateway = sh(&channel, id, "ip route | awk '/default/ {print $3}'")
        .await
        .unwrap()
        .0;
    assert_eq!(gateway.trim(), "169.254.0.22");
    let agent_port = agent.local_addr().port();
    let probe = |host: String, port: u16| {
        format!(
            "python3 -c \"import socket; s=socket.socket(); s.settimeout(3); print(s.connect_ex(('{host}', {port})))\""
        )
    };
    let host_side = created
        .host_ip
        .trim_end_matches(|ch: char| ch != '.')
        .to_owned();
    let gateway_addr = {
        let last: u8 = created.host_ip.rsplit('.').next().unwrap().parse().unwrap();
        format!("{host_side}{}", last - 1)
    };
    let reach_agent = sh(&channel, id, &probe(gateway_addr, agent_port))
        .await
        .unwrap()
        .0;
    assert_ne!(
        reach_agent.trim(),
        "0",
        "the guest reached the host's agent port"
    );
    let other = c
        .clone()
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sandboxes
        .into_iter()
        .find(|s| s.sandbox_id == second.to_string())
        .unwrap();
    let reach_other = sh(
        &channel,
        id,
        &probe(other.host_ip.clone(), wrenn_proto::ENVD_PORT),
    )
    .await
    .unwrap()
    .0;
    assert_ne!(
        reach_other.trim(),
        "0",
        "the guest reached another capsule's envd"
    );

    // Pause keeps memory — a tmpfs file and a background process — while QEMU is gone.
    sh(&channel, id, "echo kept-in-ram > /dev/shm/note")
        .await
        .unwrap();
    let bg = spawn(
        &channel,
        id,
        shell("n=0; while true; do n=$((n+1)); echo $n > /dev/shm/count; sleep 0.2; done"),
        "counter",
    )
    .await;
    let dir = layout.sandbox_dir(id);
    assert_eq!(qemu_processes_under(&dir).len(), 1, "one QEMU per capsule");
    let t = Instant::now();
    c.clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    eprintln!("pause (memory saved, QEMU gone): {:?}", t.elapsed());
    assert!(
        qemu_processes_under(&dir).is_empty(),
        "a paused VM holds no QEMU"
    );
    assert_eq!(
        sh(&channel, id, "true").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let t = Instant::now();
    c.clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    eprintln!("resume (memory loaded): {:?}", t.elapsed());
    assert_eq!(
        sh(&channel, id, "cat /dev/shm/note").await.unwrap().0,
        "kept-in-ram\n"
    );
    let alive = sh(&channel, id, &format!("kill -0 {} && echo alive", bg.pid))
        .await
        .unwrap()
        .0;
    assert_eq!(
        alive, "alive\n",
        "the background process survived the pause"
    );
    let before: u64 = sh(&channel, id, "cat /dev/shm/count")
        .await
        .unwrap()
        .0
        .trim()
        .parse()
        .unwrap();
    eventually("the counter goes on", || {
        let channel = channel.clone();
        async move {
            sh(&channel, id, "cat /dev/shm/count")
                .await
                .ok()
                .and_then(|(o, _)| o.trim().parse::<u64>().ok())
                .is_some_and(|n| n > before)
        }
    })
    .await;

    // A server in the capsule answers through the agent's proxy.
    spawn(
        &channel,
        id,
        command(
            "/usr/bin/python3",
            &["-m", "http.server", "8123", "--directory", "/dev/shm"],
        ),
        "web",
    )
    .await;
    let http = reqwest::Client::new();
    let proxied = |sb: SandboxId| format!("http://{}/proxy/{sb}/8123/note", agent.local_addr());
    let answers = |url: String| {
        let http = http.clone();
        async move {
            match http.get(&url).send().await {
                Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|t| t == "kept-in-ram\n"),
                _ => false,
            }
        }
    };
    eventually("the proxied server", || answers(proxied(id))).await;
    // One bound to the guest's loopback only answers too (through envd's tunnel).
    spawn(
        &channel,
        id,
        command(
            "/usr/bin/python3",
            &[
                "-m",
                "http.server",
                "8124",
                "--bind",
                "127.0.0.1",
                "--directory",
                "/dev/shm",
            ],
        ),
        "web-loopback",
    )
    .await;
    eventually("the proxied loopback server", || {
        answers(format!(
            "http://{}/proxy/{id}/8124/note",
            agent.local_addr()
        ))
    })
    .await;

    // Snapshot → a capsule from the template resumes the template's processes: the
    // server answers without being started again.
    let team = "00000000-0000-0000-0000-00000000e2e2";
    let tmpl = uuid::Uuid::new_v4().hyphenated().to_string();
    let t = Instant::now();
    c.clone()
        .create_snapshot(pb::CreateSnapshotRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.clone(),
        })
        .await
        .unwrap();
    eprintln!("snapshot into a template: {:?}", t.elapsed());
    assert_eq!(sh(&channel, id, "echo still").await.unwrap().0, "still\n");
    let child = SandboxId::new();
    let mut req = create_request(child);
    req.template_team_id = team.into();
    req.template_id = tmpl.clone();
    let t = Instant::now();
    c.clone().create_sandbox(req).await.unwrap();
    eprintln!("create from the template: {:?}", t.elapsed());
    eventually("the template's server in the new capsule", || {
        answers(proxied(child))
    })
    .await;
    assert_eq!(
        sh(&channel, child, "cat /dev/shm/note").await.unwrap().0,
        "kept-in-ram\n"
    );

    // Hibernate → resume: the VM's memory, processes included, comes back.
    c.clone()
        .hibernate_sandbox(pb::HibernateSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    assert!(layout.snapshot_dir(id).join("memory").is_file());
    assert!(qemu_processes_under(&layout.sandbox_dir(id)).is_empty());
    c.clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let alive = sh(&channel, id, &format!("kill -0 {} && echo alive", bg.pid))
        .await
        .unwrap()
        .0;
    assert_eq!(
        alive, "alive\n",
        "the background process survived hibernation"
    );

    // Destroy everything: no QEMU, namespace or directory is left.
    for sb in [id, second, child] {
        c.clone()
            .destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: sb.to_string(),
            })
            .await
            .unwrap();
        assert_eq!(
            sh(&channel, sb, "true").await.unwrap_err().code(),
            Code::NotFound
        );
        assert!(qemu_processes_under(&layout.sandbox_dir(sb)).is_empty());
        assert!(!layout.sandbox_dir(sb).exists());
        assert!(
            !Path::new("/run/netns")
                .join(wrenn_agent::network::netns_name(&sb.to_string()))
                .exists()
        );
    }
    let deleted = c
        .clone()
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: team.into(),
            template_id: tmpl,
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert!(deleted);

    // Graceful shutdown with a running capsule hibernates it, memory and all; an agent
    // started again on the same directory resumes it with its processes.
    let last = SandboxId::new();
    c.clone()
        .create_sandbox(create_request(last))
        .await
        .unwrap();
    let sleeper = spawn(&channel, last, command("/bin/sleep", &["1000"]), "sleeper").await;
    let kept = tokio::time::timeout(PATIENCE * 4, agent.shutdown())
        .await
        .unwrap();
    assert_eq!(kept, vec![last]);
    assert!(layout.snapshot_dir(last).join("memory").is_file());

    let runtime = QemuRuntime::new(layout.clone(), envd, options().await)
        .await
        .expect("the runtime starts again");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = Agent::start(AgentOptions::new(
        Arc::new(runtime),
        layout.clone(),
        listener,
    ))
    .await
    .unwrap();
    let channel = common::connect_channel(agent.local_addr()).await;
    let c = common::agent_client(&channel);
    c.clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: last.to_string(),
            ..Default::default()
        })
        .await
        .expect("resume after the agent restarted");
    let alive = sh(
        &channel,
        last,
        &format!("kill -0 {} && echo alive", sleeper.pid),
    )
    .await
    .unwrap()
    .0;
    assert_eq!(alive, "alive\n", "the process survived the agent restart");
    c.clone()
        .destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: last.to_string(),
        })
        .await
        .unwrap();
    agent.shutdown().await;
}

/// envd of `instance` answers `Health`.
async fn envd_answers(instance: &wrenn_agent::runtime::Instance) -> bool {
    let wrenn_agent::runtime::EnvdEndpoint::Tcp(addr) = &instance.envd else {
        return false;
    };
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
    else {
        return false;
    };
    wrenn_proto::envd::v1::system_client::SystemClient::new(channel)
        .health(wrenn_proto::envd::v1::HealthRequest {})
        .await
        .is_ok()
}

fn config(id: SandboxId) -> wrenn_agent::runtime::SandboxConfig {
    wrenn_agent::runtime::SandboxConfig {
        id,
        team_id: wrenn_core::id::PLATFORM_TEAM_ID,
        template_team_id: wrenn_core::id::PLATFORM_TEAM_ID,
        template_id: wrenn_core::id::BUILTIN_TEMPLATE_ID,
        vcpus: 1,
        memory_mb: MEMORY_MB,
        disk_size_mb: DISK_MB,
        default_user: String::new(),
        default_env: Default::default(),
    }
}

fn nothing_left_of(layout: &Layout, id: SandboxId) {
    assert!(
        qemu_processes_under(&layout.sandbox_dir(id)).is_empty(),
        "QEMU left"
    );
    assert!(!layout.sandbox_dir(id).exists(), "directory left");
    assert!(
        !Path::new("/run/netns")
            .join(wrenn_agent::network::netns_name(&id.to_string()))
            .exists(),
        "network namespace left"
    );
}

/// Faults end in clear errors and leave nothing running: a guest that does not
/// answer in time, a disk smaller than the image, a memory snapshot that cannot be
/// written (the capsule runs on), a corrupt one on resume (the files stay for
/// inspection), and QEMU killed underneath (reported, then cleaned up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_faults_end_in_clear_errors_and_leave_nothing_running() {
    if !rustix::process::geteuid().is_root() || !qemu_installed() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("wf").tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let envd = tokio::task::spawn_blocking(common::envd_binary)
        .await
        .unwrap();

    // A guest whose envd does not answer within the deadline: `error` with the
    // console's last lines, and nothing of it is left.
    let impatient = QemuRuntime::new(
        layout.clone(),
        envd.clone(),
        QemuRuntimeOptions {
            boot_timeout: Duration::from_millis(300),
            warm_snapshots: false,
            ..options().await
        },
    )
    .await
    .unwrap();
    let id = SandboxId::new();
    let err = wrenn_core::report::error_chain(&impatient.create(&config(id)).await.unwrap_err());
    assert!(err.contains("did not answer within"), "{err}");
    assert!(err.contains("console:"), "{err}");
    nothing_left_of(&layout, id);
    drop(impatient);

    let rt = QemuRuntime::new(layout.clone(), envd, options().await)
        .await
        .unwrap();
    // Bad input: a disk smaller than the image.
    let small = SandboxId::new();
    let err = rt
        .create(&wrenn_agent::runtime::SandboxConfig {
            disk_size_mb: 16,
            ..config(small)
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            wrenn_agent::runtime::RuntimeError::FailedPrecondition(_)
        ),
        "{err:?}"
    );
    nothing_left_of(&layout, small);

    let id = SandboxId::new();
    let instance = rt.create(&config(id)).await.expect("create");
    assert!(envd_answers(&instance).await);

    // A memory snapshot that cannot be written: the pause fails and the capsule runs on.
    let blocked = layout.sandbox_dir(id).join("memory.partial");
    std::fs::create_dir(&blocked).unwrap();
    let err = wrenn_core::report::error_chain(&rt.pause(&instance).await.unwrap_err());
    assert!(err.contains("memory snapshot"), "{err}");
    assert!(envd_answers(&instance).await, "the capsule still runs");
    std::fs::remove_dir(&blocked).unwrap();

    // A corrupt snapshot on resume: an error, and the files are kept.
    rt.pause(&instance).await.expect("pause");
    let memory = layout.sandbox_dir(id).join("memory");
    let size = std::fs::metadata(&memory).unwrap().len();
    std::fs::write(&memory, vec![0x5a; 4096]).unwrap();
    let err = wrenn_core::report::error_chain(&rt.resume(&instance).await.unwrap_err());
    assert!(
        err.contains("QEMU exited") || err.contains("memory snapshot"),
        "{err}"
    );
    assert!(
        size > 4096 && memory.is_file(),
        "the snapshot is kept for inspection"
    );
    assert!(qemu_processes_under(&layout.sandbox_dir(id)).is_empty());
    rt.destroy(id).await.unwrap();
    nothing_left_of(&layout, id);

    // QEMU killed underneath: `wait_exit` reports it; destroy cleans up.
    let id = SandboxId::new();
    let instance = rt.create(&config(id)).await.expect("create");
    let qemu = qemu_processes_under(&layout.sandbox_dir(id));
    assert_eq!(qemu.len(), 1);
    let watch = rt.wait_exit(&instance);
    std::process::Command::new("kill")
        .args(["-KILL", &qemu[0].to_string()])
        .status()
        .unwrap();
    let how = tokio::time::timeout(PATIENCE, watch)
        .await
        .expect("the exit is reported")
        .unwrap();
    assert!(
        how.contains("QEMU exited") && how.contains("signal"),
        "{how}"
    );
    rt.destroy(id).await.unwrap();
    nothing_left_of(&layout, id);
}
