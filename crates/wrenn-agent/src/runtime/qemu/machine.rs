//! One QEMU process: a `microvm` machine with the capsule's kernel, initramfs, root
//! disk and network, its console appended to a host file, and a QMP session.
//!
//! QEMU runs inside the capsule's network namespace (it joins it between `fork` and
//! `exec`), so its TAP backend opens the namespace's `tap0`, under its own seccomp
//! filter (`-sandbox`); it dies with the agent
//! (parent-death signal), so no VM runs unwatched — an agent that restarts finds only
//! hibernated capsules on disk ([`super::QemuRuntime`]).
//!
//! Memory snapshots are QEMU migrations into a file: [`Machine::save`] stops the vCPUs
//! and writes memory and device state; a new QEMU started with `-incoming defer`
//! [`load`](Machine::load)s it and continues. The command line of both must describe
//! the same machine, which [`MachineSpec`] guarantees by being the one source of it.

use crate::runtime::error_chain;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::network::tap::{GUEST_MAC, TAP_NAME};
use crate::runtime::vm::accel::Accel;
use crate::runtime::vm::qmp::{
    Cont, Migrate, MigrateIncoming, Qmp, QmpError, QueryMigrate, QueryStatus, Quit, Stop,
};

/// QEMU's `-sandbox` (seccomp) setting for every capsule VM.
const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny";
/// How long QEMU may take to open its QMP socket.
const QMP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a save or load may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `quit` may take before QEMU is killed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a machine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// QEMU could not be started.
    #[error("start QEMU")]
    Spawn(#[source] std::io::Error),
    /// QEMU exited.
    #[error("QEMU exited ({0})")]
    Exited(String),
    /// QEMU did not open its QMP socket in time.
    #[error("QEMU did not open its QMP socket within {0:?}")]
    NoQmp(Duration),
    /// A QMP exchange failed.
    #[error("QMP")]
    Qmp(#[from] QmpError),
    /// A migration (save or load) failed or took too long.
    #[error("memory snapshot: {0}")]
    Migration(String),
}

/// Everything that describes one capsule's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// The virtual CPU model (`-cpu`).
    pub cpu: String,
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// The root disk (qcow2; the guest finds it by its serial, `wrenn-root`).
    pub disk: PathBuf,
    /// envd's read-only disk (raw ext4; serial `wrenn-envd`), if any.
    pub envd_disk: Option<PathBuf>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory (MiB).
    pub memory_mb: u32,
    /// The network namespace QEMU joins (`/run/netns/…`), whose `tap0` it uses; `None`
    /// for a machine without network.
    pub netns: Option<PathBuf>,
    /// Host file the serial console is appended to.
    pub serial_log: PathBuf,
    /// QMP socket path.
    pub qmp_socket: PathBuf,
    /// QEMU's pid file.
    pub pid_file: PathBuf,
}

impl MachineSpec {
    /// QEMU's arguments; `incoming` adds `-incoming defer` (a machine waiting for a
    /// memory snapshot).
    pub fn args(&self, incoming: bool) -> Vec<String> {
        let mut args: Vec<String> = [
            "-M",
            "microvm",
            "-accel",
            self.accel.as_str(),
            "-cpu",
            &self.cpu,
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend([
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            self.vcpus.to_string(),
        ]);
        args.extend(
            [
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                // QEMU's seccomp filter: no obsolete system calls, no privilege changes,
                // no scheduler or affinity changes. Spawning stays allowed: memory
                // snapshots are written through `exec:`.
                "-sandbox",
                SANDBOX,
            ]
            .map(str::to_owned),
        );
        args.extend([
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
            "-drive".into(),
            format!(
                "id=root,file={},format=qcow2,if=none,cache=writeback,discard=unmap",
                qemu_path(&self.disk)
            ),
            "-device".into(),
            "virtio-blk-device,drive=root,serial=wrenn-root".into(),
        ]);
        if let Some(envd_disk) = &self.envd_disk {
            args.extend([
                "-drive".into(),
                format!(
                    "id=envd,file={},format=raw,if=none,readonly=on",
                    qemu_path(envd_disk)
                ),
                "-device".into(),
                "virtio-blk-device,drive=envd,serial=wrenn-envd".into(),
            ]);
        }
        if self.netns.is_some() {
            args.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={TAP_NAME},script=no,downscript=no,vhost=off"),
                "-device".into(),
                format!("virtio-net-device,netdev=net0,mac={GUEST_MAC}"),
            ]);
        }
        args.extend([
            "-chardev".into(),
            format!(
                "file,id=console,path={},append=on",
                qemu_path(&self.serial_log)
            ),
            "-serial".into(),
            "chardev:console".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qemu_path(&self.qmp_socket)),
            "-pidfile".into(),
            self.pid_file.display().to_string(),
        ]);
        if incoming {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        args
    }
}

/// A path inside a QEMU option value: commas are doubled (QEMU's escape).
fn qemu_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// A path inside a `sh -c` command: single-quoted.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// A running QEMU and its QMP session.
#[derive(Debug)]
pub struct Machine {
    child: Child,
    qmp: Qmp,
    pid: u32,
}

impl Machine {
    /// Starts QEMU for `spec` (waiting for a memory snapshot when `incoming`) and
    /// connects to its QMP socket.
    pub async fn start(spec: &MachineSpec, incoming: bool) -> Result<Self, MachineError> {
        let _ = std::fs::remove_file(&spec.qmp_socket);
        let mut command = Command::new(&spec.qemu);
        command
            .args(spec.args(incoming))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&spec.serial_log)
                    .map_err(MachineError::Spawn)?,
            ))
            .kill_on_drop(true);
        let netns = match &spec.netns {
            Some(path) => Some(std::fs::File::open(path).map_err(MachineError::Spawn)?),
            None => None,
        };
        let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: between fork and exec only async-signal-safe calls (`setns`, `prctl`).
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = netns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(MachineError::Spawn)?;
        drop(netns);
        let pid = child.id().unwrap_or(0);
        let deadline = Instant::now() + QMP_TIMEOUT;
        let qmp = loop {
            if let Some(status) = child.try_wait().map_err(MachineError::Spawn)? {
                return Err(MachineError::Exited(status.to_string()));
            }
            if spec.qmp_socket.exists() {
                match Qmp::connect(&spec.qmp_socket).await {
                    Ok(qmp) => break qmp,
                    Err(QmpError::Io(_)) if Instant::now() < deadline => {}
                    Err(e) => {
                        let _ = child.start_kill();
                        return Err(e.into());
                    }
                }
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(MachineError::NoQmp(QMP_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Ok(Self { child, qmp, pid })
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether QEMU still runs (`None`) or how it ended.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(error_chain(&e)),
        }
    }

    /// What a failed QMP exchange means: a QEMU that gives up on a snapshot may close
    /// QMP mid-command (a broken pipe, not a clean close), and then its exit is the
    /// reason; else the QMP error.
    async fn exit_or(&mut self, e: QmpError) -> MachineError {
        match tokio::time::timeout(Duration::from_secs(2), self.wait()).await {
            Ok(exit) => MachineError::Exited(exit),
            Err(_) => e.into(),
        }
    }

    /// Resolves when QEMU has exited, with how it ended.
    pub async fn wait(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => error_chain(&e),
        }
    }

    /// Stops the vCPUs.
    pub async fn stop(&mut self) -> Result<(), MachineError> {
        self.qmp.execute(&Stop).await?;
        Ok(())
    }

    /// Runs the vCPUs (again).
    pub async fn cont(&mut self) -> Result<(), MachineError> {
        self.qmp.execute(&Cont).await?;
        Ok(())
    }

    /// Stops the vCPUs and writes memory and device state to `memory` (through a
    /// temporary file renamed when complete). The machine stays stopped.
    pub async fn save(&mut self, memory: &Path) -> Result<(), MachineError> {
        self.stop().await?;
        let partial = memory.with_extension("partial");
        let _ = std::fs::remove_file(&partial);
        self.qmp
            .execute(&Migrate {
                uri: format!("exec:cat > {}", shell_quote(&partial)),
            })
            .await?;
        self.wait_migration("postmigrate").await?;
        std::fs::rename(&partial, memory)
            .map_err(|e| MachineError::Migration(format!("keep the snapshot: {}", error_chain(&e))))
    }

    /// Loads memory and device state from `memory` into a machine started
    /// `incoming`; the vCPUs stay stopped until [`cont`](Self::cont).
    pub async fn load(&mut self, memory: &Path) -> Result<(), MachineError> {
        if !memory.is_file() {
            return Err(MachineError::Migration(format!(
                "no memory snapshot at {}",
                memory.display()
            )));
        }
        let incoming = self
            .qmp
            .execute(&MigrateIncoming {
                uri: format!("exec:cat {}", shell_quote(memory)),
            })
            .await;
        if let Err(e) = incoming {
            return Err(self.exit_or(e).await);
        }
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        loop {
            // A snapshot QEMU cannot load makes it exit with the reason on stderr.
            if let Some(exit) = self.exited() {
                return Err(MachineError::Exited(exit));
            }
            match self.qmp.execute(&QueryStatus).await {
                Ok(status) if status.status == "inmigrate" => {}
                Ok(status) if status.status == "paused" => return Ok(()),
                Ok(status) => {
                    return Err(MachineError::Migration(format!(
                        "the machine is {} after loading",
                        status.status
                    )));
                }
                Err(QmpError::Closed) => {
                    let exit = self.wait().await;
                    return Err(MachineError::Exited(exit));
                }
                Err(e) => return Err(self.exit_or(e).await),
            }
            if Instant::now() >= deadline {
                return Err(MachineError::Migration(format!(
                    "not loaded within {MIGRATION_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the outgoing migration completed (the run state is `done`) or failed.
    async fn wait_migration(&mut self, done: &str) -> Result<(), MachineError> {
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        loop {
            if let Some(exit) = self.exited() {
                return Err(MachineError::Exited(exit));
            }
            let info = self.qmp.execute(&QueryMigrate).await?;
            match info.status.as_deref() {
                Some("failed") | Some("cancelled") => {
                    return Err(MachineError::Migration(
                        info.error_desc
                            .unwrap_or_else(|| "the migration failed".to_owned()),
                    ));
                }
                Some("completed") => {
                    let status = self.qmp.execute(&QueryStatus).await?;
                    if status.status == done {
                        return Ok(());
                    }
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(MachineError::Migration(format!(
                    "not finished within {MIGRATION_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asks QEMU to exit and waits (killing it if it takes too long).
    pub async fn quit(mut self) {
        let asked = tokio::time::timeout(QUIT_TIMEOUT, self.qmp.execute(&Quit)).await;
        if !matches!(asked, Ok(Ok(_)) | Ok(Err(QmpError::Closed))) {
            let _ = self.child.start_kill();
        }
        if tokio::time::timeout(QUIT_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }

    /// Kills QEMU (`SIGKILL`) and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MachineSpec {
        MachineSpec {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            cpu: Accel::Tcg.cpu().into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initramfs.cpio".into(),
            cmdline: "console=ttyS0".into(),
            disk: "/s/a,b/disk.qcow2".into(),
            envd_disk: Some("/vm/envd.ext4".into()),
            vcpus: 2,
            memory_mb: 512,
            netns: Some("/run/netns/wrenn-x".into()),
            serial_log: "/s/serial.log".into(),
            qmp_socket: "/s/qmp.sock".into(),
            pid_file: "/s/qemu.pid".into(),
        }
    }

    #[test]
    fn a_machine_and_its_restore_have_one_command_line_but_for_incoming() {
        let boot = spec().args(false);
        let restore = spec().args(true);
        assert_eq!(restore[..boot.len()], boot[..]);
        assert_eq!(restore[boot.len()..], ["-incoming", "defer"]);
        let line = boot.join(" ");
        assert!(
            line.contains(
                "-accel tcg -cpu qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16 -m 512 -smp 2"
            ),
            "{line}"
        );
        assert!(
            line.contains("file=/s/a,,b/disk.qcow2,format=qcow2"),
            "{line}"
        );
        assert!(line.contains("ifname=tap0"), "{line}");
        assert!(line.contains(&format!("mac={GUEST_MAC}")), "{line}");
        assert!(line.contains("-sandbox on,"), "{line}");
    }

    #[test]
    fn snapshot_paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
