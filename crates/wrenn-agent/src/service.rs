//! The tonic implementation of `hostagent.v1.HostAgentService` (all 34 RPCs).
//!
//! Lifecycle RPCs go to the [`SandboxManager`] (each on its own task, so a cancelled
//! call never leaves a sandbox half-way); process, PTY and file RPCs are forwarded to
//! the sandbox's guest agent (envd) after the manager has checked that the sandbox is
//! RUNNING. Every failure is an [`AgentError`] and is mapped to the status code that
//! `hostagent.proto` documents in one place (`error.rs`).
//!
//! Behaviour worth knowing beyond the proto comments:
//!
//! - **Ids** are validated first: `sandbox_id` must be `cl-` + 25 base36 characters,
//!   team and template ids hyphenated UUIDs (empty = all-zero only where the proto says
//!   so). A malformed id is INVALID_ARGUMENT and touches nothing.
//! - **Exec** collects at most 16 MiB per stream (`truncated` is set beyond) and kills
//!   the process (SIGKILL to its process group, through envd) when `timeout_sec`
//!   (default 30 s) passes — the call then fails with DEADLINE_EXCEEDED — or when the
//!   call is cancelled. **ExecStream** kills on cancellation and on its timeout (ending
//!   with an `end` event whose `error` says so). Stdin bytes are fed concurrently with
//!   reading the output, then stdin is closed.
//! - **StartBackground** processes get a stdin pipe (SendProcessInput works on them);
//!   an empty tag becomes `proc-` + 8 hex characters.
//! - **PtyAttach** reattach (`cmd` empty) replays envd's buffer of recent terminal
//!   output after `started`, so a reconnecting terminal can redraw.
//! - **Files** stream in 64 KiB chunks in both directions and are never buffered whole.
//! - **FlattenRootfs** answers UNIMPLEMENTED: no runtime of this agent can flatten a
//!   disk yet (the process runtime has no block device; its CreateSnapshot already
//!   produces a disk-only template). Ids and the sandbox state are validated first.
//! - **Activity**: every sandbox-scoped RPC except ListSandboxes and the metrics RPCs
//!   bumps `last_active`, and so does every streamed output event.
//! - **Terminate** returns at once and triggers the agent's graceful shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;
use wrenn_core::id::{SandboxId, TeamId, TemplateId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_server::HostAgentService;

use crate::envd::EnvdChannel;
use crate::error::{AgentError, AgentResult};
use crate::manager::{CreateSpec, HibernateCause, Sandbox, SandboxManager};
use crate::metrics::HostSampler;
use crate::runtime::SandboxConfig;

/// Output kept per stream by unary Exec.
pub const EXEC_OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// Exec timeout when the request says 0.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long StartBackground and PtyAttach wait for the `start` event.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Stdin is fed to envd in pieces of at most this size.
const STDIN_CHUNK: usize = wrenn_proto::FILE_CHUNK_SIZE;
/// Events buffered between envd and a streaming caller.
const STREAM_BUFFER: usize = 64;

/// Default vCPUs, memory (MiB) and disk (MiB) of CreateSandbox.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default memory, MiB.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// Default writable disk, MiB.
pub const DEFAULT_DISK_MB: u32 = 20480;
/// Largest vCPU count accepted.
pub const MAX_VCPUS: u32 = 128;
/// Accepted memory range, MiB.
pub const MEMORY_RANGE_MB: (u32, u32) = (64, 1024 * 1024);
/// Accepted disk range, MiB.
pub const DISK_RANGE_MB: (u32, u32) = (64, 16 * 1024 * 1024);

/// The `HostAgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentService {
    manager: Arc<SandboxManager>,
    host: Arc<HostSampler>,
    terminate: CancellationToken,
}

impl AgentService {
    /// A service over `manager`; `terminate` is cancelled by the Terminate RPC (the
    /// server then shuts down gracefully).
    pub fn new(
        manager: Arc<SandboxManager>,
        host: Arc<HostSampler>,
        terminate: CancellationToken,
    ) -> Self {
        Self {
            manager,
            host,
            terminate,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation and conversions
// ---------------------------------------------------------------------------------------

/// Parses a required sandbox id.
pub fn parse_sandbox_id(s: &str) -> AgentResult<SandboxId> {
    if s.is_empty() {
        return Err(AgentError::invalid("sandbox_id is required"));
    }
    s.parse::<SandboxId>().map_err(AgentError::invalid)
}

/// Parses a hyphenated UUID; `empty_is_nil` lets the empty string mean the all-zero UUID.
fn parse_uuid(field: &str, s: &str, empty_is_nil: bool) -> AgentResult<Uuid> {
    if s.is_empty() {
        return if empty_is_nil {
            Ok(Uuid::nil())
        } else {
            Err(AgentError::InvalidArgument(format!("{field} is required")))
        };
    }
    if s.len() != 36 {
        return Err(AgentError::InvalidArgument(format!(
            "invalid {field} {:?}: expected a hyphenated UUID",
            s.chars().take(64).collect::<String>()
        )));
    }
    Uuid::try_parse(s).map_err(|_| {
        AgentError::InvalidArgument(format!("invalid {field} {s:?}: expected a hyphenated UUID"))
    })
}

/// Team and template of a template-creating or -deleting call: both required, and the
/// built-in template's all-zero id is reserved.
fn parse_template_target(team: &str, template: &str) -> AgentResult<(TeamId, TemplateId)> {
    let team = TeamId::from_uuid(parse_uuid("team_id", team, false)?);
    let template = parse_uuid("template_id", template, false)?;
    if template.is_nil() {
        return Err(AgentError::invalid(
            "template_id: the all-zero id is reserved for the built-in template",
        ));
    }
    Ok((team, TemplateId(template)))
}

fn require_path(field: &str, path: &str) -> AgentResult<()> {
    if path.is_empty() {
        return Err(AgentError::InvalidArgument(format!("{field} is required")));
    }
    Ok(())
}

fn require_cmd(cmd: &str) -> AgentResult<()> {
    if cmd.is_empty() {
        return Err(AgentError::invalid("cmd is required"));
    }
    Ok(())
}

/// Checks a process tag: 1 to 64 characters of `A-Za-z0-9._-`.
fn check_tag(tag: &str) -> AgentResult<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "invalid tag {:?}: expected 1 to 64 characters of A-Za-z0-9._-",
            tag.chars().take(80).collect::<String>()
        )))
    }
}

fn generated_tag(prefix: &str) -> String {
    let b: [u8; 4] = rand::random();
    format!("{prefix}-{}", hex::encode(b))
}

fn selector(sel: Option<pb::ProcessSelector>) -> AgentResult<envd::ProcessSelector> {
    use envd::process_selector::Selector as E;
    use pb::process_selector::Selector as P;
    match sel.and_then(|s| s.selector) {
        Some(P::Pid(pid)) => Ok(envd::ProcessSelector {
            selector: Some(E::Pid(pid)),
        }),
        Some(P::Tag(tag)) if !tag.is_empty() => Ok(envd::ProcessSelector {
            selector: Some(E::Tag(tag)),
        }),
        _ => Err(AgentError::invalid(
            "process selector (pid or tag) is required",
        )),
    }
}

fn by_tag(tag: &str) -> envd::ProcessSelector {
    envd::ProcessSelector {
        selector: Some(envd::process_selector::Selector::Tag(tag.to_owned())),
    }
}

fn by_pid(pid: u32) -> envd::ProcessSelector {
    envd::ProcessSelector {
        selector: Some(envd::process_selector::Selector::Pid(pid)),
    }
}

fn envd_signal(signal: i32) -> AgentResult<i32> {
    let sig = pb::Signal::try_from(signal)
        .map_err(|_| AgentError::InvalidArgument(format!("unknown signal {signal}")))?;
    let sig = match sig {
        pb::Signal::Unspecified | pb::Signal::Sigkill => envd::Signal::Sigkill,
        pb::Signal::Sighup => envd::Signal::Sighup,
        pb::Signal::Sigint => envd::Signal::Sigint,
        pb::Signal::Sigterm => envd::Signal::Sigterm,
    };
    Ok(sig as i32)
}

fn file_entry(e: envd::EntryInfo) -> pb::FileEntry {
    pb::FileEntry {
        name: e.name,
        path: e.path,
        r#type: e.r#type,
        size: e.size,
        mode: e.mode,
        permissions: e.permissions,
        owner: e.owner,
        group: e.group,
        modified_at_unix: e.modified_time.map_or(0, |t| t.seconds),
        symlink_target: e.symlink_target,
    }
}

fn entry_or_internal(e: Option<envd::EntryInfo>) -> AgentResult<pb::FileEntry> {
    e.map(file_entry)
        .ok_or_else(|| AgentError::internal("guest agent returned no entry"))
}

fn process_config(
    cmd: String,
    args: Vec<String>,
    envs: HashMap<String, String>,
    cwd: Option<String>,
    user: Option<String>,
) -> envd::ProcessConfig {
    envd::ProcessConfig {
        cmd,
        args,
        envs,
        cwd,
        user,
    }
}

fn status_of(e: AgentError) -> Status {
    Status::from(e)
}

/// Waits for the `start` event that opens every envd process stream.
async fn first_start(
    stream: &mut Streaming<envd::ProcessEvent>,
    deadline: Instant,
) -> AgentResult<envd::StartEvent> {
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| {
                AgentError::DeadlineExceeded("the process did not start in time".into())
            })?;
        match msg? {
            Some(envd::ProcessEvent {
                event: Some(envd::process_event::Event::Start(s)),
            }) => return Ok(s),
            Some(envd::ProcessEvent {
                event: Some(envd::process_event::Event::Keepalive(_)),
            }) => continue,
            Some(_) => {
                return Err(AgentError::internal(
                    "guest agent sent an event before `start`",
                ));
            }
            None => {
                return Err(AgentError::Unavailable(
                    "guest agent closed the process stream before `start`".into(),
                ));
            }
        }
    }
}

/// Sends SIGKILL to a process when dropped while armed: an abandoned Exec or ExecStream
/// (timeout, cancelled call) never leaves its process running (Obs-L4).
struct KillOnDrop {
    process: ProcessClient<EnvdChannel>,
    pid: u32,
    armed: bool,
}

impl KillOnDrop {
    fn new(process: ProcessClient<EnvdChannel>, pid: u32) -> Self {
        Self {
            process,
            pid,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Kills now and waits for envd to confirm (bounded).
    async fn kill_now(&mut self) {
        self.armed = false;
        let mut p = self.process.clone();
        let req = envd::SendSignalRequest {
            process: Some(by_pid(self.pid)),
            signal: envd::Signal::Sigkill as i32,
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), p.send_signal(req)).await;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut p = self.process.clone();
        let pid = self.pid;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let req = envd::SendSignalRequest {
                    process: Some(by_pid(pid)),
                    signal: envd::Signal::Sigkill as i32,
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), p.send_signal(req)).await;
            });
        }
    }
}

/// Writes `data` to a process's stdin in chunks, then closes it.
async fn feed_stdin(mut process: ProcessClient<EnvdChannel>, pid: u32, data: Vec<u8>) {
    for chunk in data.chunks(STDIN_CHUNK) {
        let req = envd::SendInputRequest {
            process: Some(by_pid(pid)),
            input: Some(envd::ProcessInput {
                input: Some(envd::process_input::Input::Stdin(chunk.to_vec())),
            }),
        };
        if let Err(e) = process.send_input(req).await {
            tracing::debug!(pid, "stdin: {e}");
            break;
        }
    }
    let _ = process
        .close_stdin(envd::CloseStdinRequest {
            process: Some(by_pid(pid)),
        })
        .await;
}

/// What one envd event becomes on a caller's stream.
enum Relayed<T> {
    /// Nothing (keepalive).
    Skip,
    /// An item; the stream goes on.
    Item(T),
    /// The last item.
    End(T),
}

fn exec_event(ev: envd::ProcessEvent) -> Relayed<pb::ExecEvent> {
    use envd::data_event::Output as O;
    use envd::process_event::Event as E;
    use pb::exec_data::Output as P;
    match ev.event {
        Some(E::Start(s)) => Relayed::Item(pb::ExecEvent {
            event: Some(pb::exec_event::Event::Start(pb::ExecStart {
                pid: s.pid,
                tag: s.tag,
            })),
        }),
        Some(E::Data(d)) => {
            let output = match d.output {
                Some(O::Stdout(b)) | Some(O::Pty(b)) => P::Stdout(b),
                Some(O::Stderr(b)) => P::Stderr(b),
                None => return Relayed::Skip,
            };
            Relayed::Item(pb::ExecEvent {
                event: Some(pb::exec_event::Event::Data(pb::ExecData {
                    output: Some(output),
                })),
            })
        }
        Some(E::End(end)) => Relayed::End(exec_end(end.exit_code, end_error(&end))),
        Some(E::Keepalive(_)) | None => Relayed::Skip,
    }
}

/// The `error` of an end event: envd's own error, or the status of an abnormal exit.
fn end_error(end: &envd::EndEvent) -> Option<String> {
    end.error.clone().or_else(|| {
        (!end.exited).then(|| {
            if end.status.is_empty() {
                "killed by a signal".to_owned()
            } else {
                end.status.clone()
            }
        })
    })
}

fn exec_end(exit_code: i32, error: Option<String>) -> pb::ExecEvent {
    pb::ExecEvent {
        event: Some(pb::exec_event::Event::End(pb::ExecEnd { exit_code, error })),
    }
}

fn pty_event(ev: envd::ProcessEvent) -> Relayed<pb::PtyEvent> {
    use envd::data_event::Output as O;
    use envd::process_event::Event as E;
    match ev.event {
        Some(E::Data(d)) => match d.output {
            Some(O::Pty(b)) | Some(O::Stdout(b)) | Some(O::Stderr(b)) => {
                Relayed::Item(pb::PtyEvent {
                    event: Some(pb::pty_event::Event::Output(pb::PtyOutput { data: b })),
                })
            }
            None => Relayed::Skip,
        },
        Some(E::End(end)) => Relayed::End(pty_exited(end.exit_code, end_error(&end))),
        Some(E::Start(_)) | Some(E::Keepalive(_)) | None => Relayed::Skip,
    }
}

fn pty_exited(exit_code: i32, error: Option<String>) -> pb::PtyEvent {
    pb::PtyEvent {
        event: Some(pb::pty_event::Event::Exited(pb::PtyExited {
            exit_code,
            error,
        })),
    }
}

/// Relays an envd process stream to a caller until the process ends, the stream
/// breaks, the caller goes away, or the deadline passes. Output counts as activity.
/// With a `kill` guard, the process is killed when the caller goes away or the
/// deadline passes.
#[allow(clippy::too_many_arguments)]
fn spawn_relay<T: Send + 'static>(
    sb: Arc<Sandbox>,
    mut stream: Streaming<envd::ProcessEvent>,
    tx: mpsc::Sender<Result<T, Status>>,
    map: fn(envd::ProcessEvent) -> Relayed<T>,
    end_with: fn(i32, Option<String>) -> T,
    mut kill: Option<KillOnDrop>,
    deadline: Option<(Instant, Duration)>,
) {
    tokio::spawn(async move {
        // Unused when there is no deadline (the branch is disabled).
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        let (at, limit) = deadline.unwrap_or((far, Duration::ZERO));
        loop {
            tokio::select! {
                _ = tx.closed() => {
                    // The caller went away: `kill` (if any) fires on drop.
                    return;
                }
                _ = tokio::time::sleep_until(at), if deadline.is_some() => {
                    if let Some(k) = kill.as_mut() {
                        k.kill_now().await;
                    }
                    let _ = tx
                        .send(Ok(end_with(-1, Some(format!("timed out after {}s; the process was killed", limit.as_secs())))))
                        .await;
                    return;
                }
                msg = stream.message() => {
                    match msg {
                        Ok(Some(ev)) => match map(ev) {
                            Relayed::Skip => {}
                            Relayed::Item(item) => {
                                sb.touch();
                                if tx.send(Ok(item)).await.is_err() {
                                    return;
                                }
                            }
                            Relayed::End(item) => {
                                if let Some(k) = kill.as_mut() {
                                    k.disarm();
                                }
                                sb.touch();
                                let _ = tx.send(Ok(item)).await;
                                return;
                            }
                        },
                        Ok(None) => {
                            let _ = tx
                                .send(Ok(end_with(-1, Some("guest agent closed the stream".into()))))
                                .await;
                            return;
                        }
                        Err(status) => {
                            let _ = tx
                                .send(Ok(end_with(-1, Some(format!("guest agent: {}", status.message())))))
                                .await;
                            return;
                        }
                    }
                }
            }
        }
    });
}

fn sandbox_info(id: SandboxId, v: crate::manager::SandboxView) -> pb::SandboxInfo {
    pb::SandboxInfo {
        sandbox_id: id.to_string(),
        status: proto_status(v.status) as i32,
        team_id: v.config.team_id.uuid().hyphenated().to_string(),
        template_id: v.config.template_id.uuid().hyphenated().to_string(),
        template: v.template_name,
        vcpus: v.config.vcpus,
        memory_mb: v.config.memory_mb,
        disk_size_mb: v.config.disk_size_mb,
        host_ip: v.host_ip,
        created_at_unix: v.created_at_unix,
        last_active_at_unix: v.last_active_unix,
        timeout_sec: v.timeout_sec,
        metadata: v.metadata.into_iter().collect(),
    }
}

/// The wire value of a status.
pub fn proto_status(s: SandboxStatus) -> pb::SandboxStatus {
    match s {
        SandboxStatus::Pending | SandboxStatus::Starting => pb::SandboxStatus::Starting,
        SandboxStatus::Running => pb::SandboxStatus::Running,
        SandboxStatus::Pausing => pb::SandboxStatus::Pausing,
        SandboxStatus::Paused => pb::SandboxStatus::Paused,
        SandboxStatus::Hibernated => pb::SandboxStatus::Hibernated,
        SandboxStatus::Resuming => pb::SandboxStatus::Resuming,
        SandboxStatus::Stopping => pb::SandboxStatus::Stopping,
        SandboxStatus::Stopped => pb::SandboxStatus::Stopped,
        SandboxStatus::Error | SandboxStatus::Missing => pb::SandboxStatus::Error,
        SandboxStatus::Snapshotting => pb::SandboxStatus::Snapshotting,
    }
}

fn value_or(v: u32, default: u32) -> u32 {
    if v == 0 { default } else { v }
}

fn check_range(field: &str, v: u32, (lo, hi): (u32, u32)) -> AgentResult<()> {
    if v < lo || v > hi {
        return Err(AgentError::InvalidArgument(format!(
            "{field} {v} is out of range ({lo} to {hi})"
        )));
    }
    Ok(())
}

type Rpc<T> = Result<Response<T>, Status>;

impl AgentService {
    /// The sandbox id of a request plus a running sandbox's envd client.
    fn running(
        &self,
        sandbox_id: &str,
        what: &str,
    ) -> AgentResult<(Arc<Sandbox>, crate::envd::EnvdClient)> {
        let id = parse_sandbox_id(sandbox_id)?;
        self.manager.envd_for(id, what)
    }

    async fn exec_inner(&self, r: pb::ExecRequest) -> AgentResult<pb::ExecResponse> {
        let id = parse_sandbox_id(&r.sandbox_id)?;
        require_cmd(&r.cmd)?;
        let (sb, envd) = self.manager.envd_for(id, "exec needs a running sandbox")?;
        let limit = if r.timeout_sec == 0 {
            DEFAULT_EXEC_TIMEOUT
        } else {
            Duration::from_secs(u64::from(r.timeout_sec))
        };
        let deadline = Instant::now() + limit;
        let mut process = envd.process.clone();
        let start = envd::StartRequest {
            process: Some(process_config(r.cmd, r.args, r.envs, r.cwd, r.user)),
            pty: None,
            tag: None,
            stdin: r.stdin.is_some(),
        };
        let mut stream = process.start(start).await?.into_inner();
        let started = first_start(&mut stream, deadline).await?;
        let mut guard = KillOnDrop::new(envd.process.clone(), started.pid);
        if let Some(data) = r.stdin {
            tokio::spawn(feed_stdin(envd.process.clone(), started.pid, data));
        }
        let mut out = pb::ExecResponse::default();
        let append = |buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool| {
            let room = EXEC_OUTPUT_CAP.saturating_sub(buf.len());
            if data.len() > room {
                *truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        };
        loop {
            let msg = match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(m) => m,
                Err(_) => {
                    guard.kill_now().await;
                    return Err(AgentError::DeadlineExceeded(format!(
                        "the command outlived its timeout of {}s and was killed",
                        limit.as_secs()
                    )));
                }
            };
            use envd::data_event::Output as O;
            use envd::process_event::Event as E;
            match msg {
                Ok(Some(ev)) => match ev.event {
                    Some(E::Data(d)) => {
                        sb.touch();
                        match d.output {
                            Some(O::Stdout(b)) | Some(O::Pty(b)) => {
                                append(&mut out.stdout, &b, &mut out.truncated)
                            }
                            Some(O::Stderr(b)) => append(&mut out.stderr, &b, &mut out.truncated),
                            None => {}
                        }
                    }
                    Some(E::End(end)) => {
                        guard.disarm();
                        if let Some(err) = end.error {
                            return Err(AgentError::Internal(format!("guest agent: {err}")));
                        }
                        out.exit_code = end.exit_code;
                        sb.touch();
                        return Ok(out);
                    }
                    _ => {}
                },
                Ok(None) => {
                    return Err(AgentError::Unavailable(
                        "guest agent closed the process stream before the process ended".into(),
                    ));
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    async fn pty_attach_inner(
        &self,
        r: pb::PtyAttachRequest,
    ) -> AgentResult<ReceiverStream<Result<pb::PtyEvent, Status>>> {
        let id = parse_sandbox_id(&r.sandbox_id)?;
        let new = !r.cmd.is_empty();
        if new {
            if r.cols == 0 || r.rows == 0 {
                return Err(AgentError::invalid(
                    "cols and rows must be non-zero for a new PTY",
                ));
            }
            if !r.tag.is_empty() {
                check_tag(&r.tag)?;
            }
        } else if r.tag.is_empty() {
            return Err(AgentError::invalid(
                "tag is required to reattach (cmd is empty)",
            ));
        }
        let (sb, envd) = self.manager.envd_for(id, "PTY needs a running sandbox")?;
        let mut process = envd.process.clone();
        let deadline = Instant::now() + START_TIMEOUT;
        let (stream, started) = if new {
            let mut envs = r.envs;
            envs.entry("TERM".into())
                .or_insert_with(|| "xterm-256color".into());
            let tag = if r.tag.is_empty() {
                generated_tag("pty")
            } else {
                r.tag
            };
            let start = envd::StartRequest {
                process: Some(process_config(r.cmd, r.args, envs, r.cwd, r.user)),
                pty: Some(envd::Pty {
                    cols: r.cols,
                    rows: r.rows,
                }),
                tag: Some(tag),
                stdin: true,
            };
            let mut stream = process.start(start).await?.into_inner();
            let started = first_start(&mut stream, deadline).await?;
            (stream, started)
        } else {
            let info = find_process(&envd, &r.tag).await?;
            if !info.pty {
                return Err(AgentError::NotFound(format!(
                    "no PTY process with tag {:?} (it runs without a terminal)",
                    r.tag
                )));
            }
            if r.cols > 0 && r.rows > 0 {
                process
                    .update(envd::UpdateRequest {
                        process: Some(by_tag(&r.tag)),
                        pty: Some(envd::Pty {
                            cols: r.cols,
                            rows: r.rows,
                        }),
                    })
                    .await?;
            }
            let mut stream = process
                .connect(envd::ConnectRequest {
                    process: Some(by_tag(&r.tag)),
                    replay: true,
                })
                .await?
                .into_inner();
            let started = first_start(&mut stream, deadline).await?;
            (stream, started)
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let first = pb::PtyEvent {
            event: Some(pb::pty_event::Event::Started(pb::PtyStarted {
                pid: started.pid,
                tag: started.tag,
            })),
        };
        tx.send(Ok(first))
            .await
            .map_err(|_| AgentError::Cancelled("caller went away".into()))?;
        // A detached PTY keeps running: no kill guard.
        spawn_relay(sb, stream, tx, pty_event, pty_exited, None, None);
        Ok(ReceiverStream::new(rx))
    }

    async fn write_file_inner(
        &self,
        mut inbound: Streaming<pb::WriteFileStreamRequest>,
    ) -> AgentResult<pb::WriteFileStreamResponse> {
        use pb::write_file_stream_request::Msg;
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| AgentError::invalid("empty stream: the first message must be `meta`"))?;
        let meta = match first.msg {
            Some(Msg::Meta(m)) => m,
            _ => return Err(AgentError::invalid("the first message must be `meta`")),
        };
        let id = parse_sandbox_id(&meta.sandbox_id)?;
        require_path("path", &meta.path)?;
        let (sb, envd) = self
            .manager
            .envd_for(id, "writing files needs a running sandbox")?;
        let (tx, rx) = mpsc::channel::<envd::WriteFileRequest>(8);
        let header = envd::WriteFileRequest {
            msg: Some(envd::write_file_request::Msg::Header(
                envd::WriteFileHeader {
                    path: meta.path,
                    mode: meta.mode,
                    user: meta.user,
                    append: false,
                },
            )),
        };
        tx.send(header)
            .await
            .map_err(|_| AgentError::internal("write stream closed"))?;
        let mut fs = envd.fs.clone();
        let call = fs.write_file(ReceiverStream::new(rx));
        tokio::pin!(call);
        let pump = async move {
            while let Some(msg) = inbound.message().await? {
                match msg.msg {
                    Some(Msg::Chunk(chunk)) => {
                        if chunk.len() > wrenn_proto::FILE_CHUNK_SIZE {
                            return Err(AgentError::InvalidArgument(format!(
                                "chunk of {} bytes is larger than the {} KiB limit",
                                chunk.len(),
                                wrenn_proto::FILE_CHUNK_SIZE / 1024
                            )));
                        }
                        if chunk.is_empty() {
                            continue;
                        }
                        sb.touch();
                        let data = envd::WriteFileRequest {
                            msg: Some(envd::write_file_request::Msg::Data(chunk)),
                        };
                        if tx.send(data).await.is_err() {
                            // envd ended the call; its answer says why.
                            return Ok(());
                        }
                    }
                    Some(Msg::Meta(_)) => {
                        return Err(AgentError::invalid("a second `meta` message"));
                    }
                    None => return Err(AgentError::invalid("a message without content")),
                }
            }
            Ok::<_, AgentError>(())
        };
        tokio::pin!(pump);
        let mut pump_done = false;
        loop {
            tokio::select! {
                res = &mut call => {
                    let resp = res?.into_inner();
                    let entry = resp.entry.ok_or_else(|| AgentError::internal("guest agent returned no entry"))?;
                    return Ok(pb::WriteFileStreamResponse { path: entry.path, size: entry.size });
                }
                r = &mut pump, if !pump_done => {
                    // An invalid stream aborts the envd call (the file may be partial).
                    r?;
                    pump_done = true;
                }
            }
        }
    }
}

/// The live process with `tag`, or NotFound.
async fn find_process(envd: &crate::envd::EnvdClient, tag: &str) -> AgentResult<envd::ProcessInfo> {
    let mut process = envd.process.clone();
    let list = process.list(envd::ListRequest {}).await?.into_inner();
    list.processes
        .into_iter()
        .find(|p| p.tag.as_deref() == Some(tag))
        .ok_or_else(|| AgentError::NotFound(format!("no process with tag {tag:?}")))
}

#[tonic::async_trait]
impl HostAgentService for AgentService {
    async fn create_sandbox(
        &self,
        req: Request<pb::CreateSandboxRequest>,
    ) -> Rpc<pb::CreateSandboxResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        let team = TeamId::from_uuid(parse_uuid("team_id", &r.team_id, true).map_err(status_of)?);
        let template =
            TemplateId(parse_uuid("template_id", &r.template_id, true).map_err(status_of)?);
        let template_team = TeamId::from_uuid(
            parse_uuid("template_team_id", &r.template_team_id, true).map_err(status_of)?,
        );
        let vcpus = value_or(r.vcpus, DEFAULT_VCPUS);
        let memory_mb = value_or(r.memory_mb, DEFAULT_MEMORY_MB);
        let disk_size_mb = value_or(r.disk_size_mb, DEFAULT_DISK_MB);
        check_range("vcpus", vcpus, (1, MAX_VCPUS)).map_err(status_of)?;
        check_range("memory_mb", memory_mb, MEMORY_RANGE_MB).map_err(status_of)?;
        check_range("disk_size_mb", disk_size_mb, DISK_RANGE_MB).map_err(status_of)?;
        let spec = CreateSpec {
            config: SandboxConfig {
                id,
                team_id: team,
                template_team_id: template_team,
                template_id: template,
                vcpus,
                memory_mb,
                disk_size_mb,
                default_user: r.default_user,
                default_env: r.default_env.into_iter().collect(),
            },
            template_name: r.template,
            timeout_sec: r.timeout_sec,
            metadata: r.metadata.into_iter().collect(),
        };
        let started = self
            .manager
            .spawn_op(move |m| async move { m.create(spec).await })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::CreateSandboxResponse {
            sandbox_id: id.to_string(),
            status: pb::SandboxStatus::Running as i32,
            host_ip: started.host_ip,
            metadata: started.metadata.into_iter().collect(),
        }))
    }

    async fn destroy_sandbox(
        &self,
        req: Request<pb::DestroySandboxRequest>,
    ) -> Rpc<pb::DestroySandboxResponse> {
        let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
        self.manager
            .spawn_op(move |m| async move { m.destroy(id).await })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::DestroySandboxResponse {}))
    }

    async fn pause_sandbox(
        &self,
        req: Request<pb::PauseSandboxRequest>,
    ) -> Rpc<pb::PauseSandboxResponse> {
        let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
        self.manager
            .spawn_op(move |m| async move { m.pause(id).await })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::PauseSandboxResponse {}))
    }

    async fn resume_sandbox(
        &self,
        req: Request<pb::ResumeSandboxRequest>,
    ) -> Rpc<pb::ResumeSandboxResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        let env = r.default_env.into_iter().collect();
        let (timeout, user) = (r.timeout_sec, r.default_user);
        let started = self
            .manager
            .spawn_op(move |m| async move { m.resume(id, timeout, user, env).await })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ResumeSandboxResponse {
            sandbox_id: id.to_string(),
            status: pb::SandboxStatus::Running as i32,
            host_ip: started.host_ip,
            metadata: started.metadata.into_iter().collect(),
        }))
    }

    async fn hibernate_sandbox(
        &self,
        req: Request<pb::HibernateSandboxRequest>,
    ) -> Rpc<pb::HibernateSandboxResponse> {
        let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
        let size_bytes = self
            .manager
            .spawn_op(move |m| async move { m.hibernate(id, HibernateCause::Request).await })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::HibernateSandboxResponse { size_bytes }))
    }

    async fn ping_sandbox(
        &self,
        req: Request<pb::PingSandboxRequest>,
    ) -> Rpc<pb::PingSandboxResponse> {
        let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
        self.manager.ping(id).map_err(status_of)?;
        Ok(Response::new(pb::PingSandboxResponse {}))
    }

    async fn list_sandboxes(
        &self,
        _req: Request<pb::ListSandboxesRequest>,
    ) -> Rpc<pb::ListSandboxesResponse> {
        let mut resp = pb::ListSandboxesResponse::default();
        let mut all = self.manager.all();
        all.sort_by_key(|s| s.id());
        for sb in all {
            let id = sb.id();
            let view = sb.view();
            if view.status == SandboxStatus::Stopped {
                continue;
            }
            if view.auto_paused {
                resp.auto_paused_sandbox_ids.push(id.to_string());
            }
            if view.status == SandboxStatus::Hibernated {
                resp.hibernated_sandbox_ids.push(id.to_string());
            }
            resp.sandboxes.push(sandbox_info(id, view));
        }
        Ok(Response::new(resp))
    }

    async fn pause_all(&self, _req: Request<pb::PauseAllRequest>) -> Rpc<pb::PauseAllResponse> {
        let out = self
            .manager
            .spawn_op(|m| async move { Ok(m.pause_all().await) })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::PauseAllResponse {
            paused_sandbox_ids: out.paused.iter().map(ToString::to_string).collect(),
            failed: out
                .failed
                .into_iter()
                .map(|(id, e)| (id.to_string(), e))
                .collect(),
        }))
    }

    async fn terminate(&self, _req: Request<pb::TerminateRequest>) -> Rpc<pb::TerminateResponse> {
        tracing::info!("Terminate: graceful shutdown requested");
        self.terminate.cancel();
        Ok(Response::new(pb::TerminateResponse {}))
    }

    async fn exec(&self, req: Request<pb::ExecRequest>) -> Rpc<pb::ExecResponse> {
        let resp = self.exec_inner(req.into_inner()).await.map_err(status_of)?;
        Ok(Response::new(resp))
    }

    type ExecStreamStream = ReceiverStream<Result<pb::ExecEvent, Status>>;

    async fn exec_stream(
        &self,
        req: Request<pb::ExecStreamRequest>,
    ) -> Rpc<Self::ExecStreamStream> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        require_cmd(&r.cmd).map_err(status_of)?;
        let (sb, envd) = self
            .manager
            .envd_for(id, "exec needs a running sandbox")
            .map_err(status_of)?;
        let limit = (r.timeout_sec > 0).then(|| Duration::from_secs(u64::from(r.timeout_sec)));
        let start_deadline = Instant::now() + limit.unwrap_or(START_TIMEOUT).min(START_TIMEOUT);
        let mut process = envd.process.clone();
        let start = envd::StartRequest {
            process: Some(process_config(r.cmd, r.args, r.envs, r.cwd, r.user)),
            pty: None,
            tag: None,
            stdin: r.stdin.is_some(),
        };
        let mut stream = process
            .start(start)
            .await
            .map_err(|s| status_of(s.into()))?
            .into_inner();
        let started = first_start(&mut stream, start_deadline)
            .await
            .map_err(status_of)?;
        let guard = KillOnDrop::new(envd.process.clone(), started.pid);
        if let Some(data) = r.stdin {
            tokio::spawn(feed_stdin(envd.process.clone(), started.pid, data));
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let first = pb::ExecEvent {
            event: Some(pb::exec_event::Event::Start(pb::ExecStart {
                pid: started.pid,
                tag: started.tag,
            })),
        };
        let _ = tx.send(Ok(first)).await;
        let deadline = limit.map(|l| (Instant::now() + l, l));
        spawn_relay(sb, stream, tx, exec_event, exec_end, Some(guard), deadline);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn start_background(
        &self,
        req: Request<pb::StartBackgroundRequest>,
    ) -> Rpc<pb::StartBackgroundResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        require_cmd(&r.cmd).map_err(status_of)?;
        let tag = if r.tag.is_empty() {
            generated_tag("proc")
        } else {
            check_tag(&r.tag).map_err(status_of)?;
            r.tag
        };
        let (_sb, envd) = self
            .manager
            .envd_for(id, "starting a process needs a running sandbox")
            .map_err(status_of)?;
        let mut process = envd.process.clone();
        let start = envd::StartRequest {
            process: Some(process_config(r.cmd, r.args, r.envs, r.cwd, r.user)),
            pty: None,
            tag: Some(tag),
            stdin: true,
        };
        let mut stream = process
            .start(start)
            .await
            .map_err(|s| status_of(s.into()))?
            .into_inner();
        let started = first_start(&mut stream, Instant::now() + START_TIMEOUT)
            .await
            .map_err(status_of)?;
        // Dropping the stream detaches; envd keeps the process running.
        drop(stream);
        Ok(Response::new(pb::StartBackgroundResponse {
            pid: started.pid,
            tag: started.tag,
        }))
    }

    async fn list_processes(
        &self,
        req: Request<pb::ListProcessesRequest>,
    ) -> Rpc<pb::ListProcessesResponse> {
        let r = req.into_inner();
        let (_sb, envd) = self
            .running(&r.sandbox_id, "listing processes needs a running sandbox")
            .map_err(status_of)?;
        let mut process = envd.process.clone();
        let list = process
            .list(envd::ListRequest {})
            .await
            .map_err(|s| status_of(s.into()))?
            .into_inner();
        let processes = list
            .processes
            .into_iter()
            .map(|p| {
                let c = p.config.unwrap_or_default();
                pb::ProcessInfo {
                    pid: p.pid,
                    tag: p.tag.unwrap_or_default(),
                    cmd: c.cmd,
                    args: c.args,
                    envs: c.envs,
                    cwd: c.cwd.unwrap_or_default(),
                    pty: p.pty,
                }
            })
            .collect();
        Ok(Response::new(pb::ListProcessesResponse { processes }))
    }

    async fn kill_process(
        &self,
        req: Request<pb::KillProcessRequest>,
    ) -> Rpc<pb::KillProcessResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        let sel = selector(r.process).map_err(status_of)?;
        let signal = envd_signal(r.signal).map_err(status_of)?;
        let (_sb, envd) = self
            .manager
            .envd_for(id, "signalling a process needs a running sandbox")
            .map_err(status_of)?;
        let mut process = envd.process.clone();
        process
            .send_signal(envd::SendSignalRequest {
                process: Some(sel),
                signal,
            })
            .await
            .map_err(|s| status_of(s.into()))?;
        Ok(Response::new(pb::KillProcessResponse {}))
    }

    type ConnectProcessStream = ReceiverStream<Result<pb::ExecEvent, Status>>;

    async fn connect_process(
        &self,
        req: Request<pb::ConnectProcessRequest>,
    ) -> Rpc<Self::ConnectProcessStream> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        let sel = selector(r.process).map_err(status_of)?;
        let (sb, envd) = self
            .manager
            .envd_for(id, "attaching to a process needs a running sandbox")
            .map_err(status_of)?;
        let mut process = envd.process.clone();
        let mut stream = process
            .connect(envd::ConnectRequest {
                process: Some(sel),
                replay: r.replay,
            })
            .await
            .map_err(|s| status_of(s.into()))?
            .into_inner();
        let started = first_start(&mut stream, Instant::now() + START_TIMEOUT)
            .await
            .map_err(status_of)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let first = pb::ExecEvent {
            event: Some(pb::exec_event::Event::Start(pb::ExecStart {
                pid: started.pid,
                tag: started.tag,
            })),
        };
        let _ = tx.send(Ok(first)).await;
        spawn_relay(sb, stream, tx, exec_event, exec_end, None, None);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn send_process_input(
        &self,
        req: Request<pb::SendProcessInputRequest>,
    ) -> Rpc<pb::SendProcessInputResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        let sel = selector(r.process).map_err(status_of)?;
        let (_sb, envd) = self
            .manager
            .envd_for(id, "process input needs a running sandbox")
            .map_err(status_of)?;
        let mut process = envd.process.clone();
        process
            .send_input(envd::SendInputRequest {
                process: Some(sel),
                input: Some(envd::ProcessInput {
                    input: Some(envd::process_input::Input::Stdin(r.stdin)),
                }),
            })
            .await
            .map_err(|s| status_of(s.into()))?;
        Ok(Response::new(pb::SendProcessInputResponse {}))
    }

    async fn close_process_stdin(
        &self,
        req: Request<pb::CloseProcessStdinRequest>,
    ) -> Rpc<pb::CloseProcessStdinResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        let sel = selector(r.process).map_err(status_of)?;
        let (_sb, envd) = self
            .manager
            .envd_for(id, "process input needs a running sandbox")
            .map_err(status_of)?;
        let mut process = envd.process.clone();
        process
            .close_stdin(envd::CloseStdinRequest { process: Some(sel) })
            .await
            .map_err(|s| status_of(s.into()))?;
        Ok(Response::new(pb::CloseProcessStdinResponse {}))
    }

    type PtyAttachStream = ReceiverStream<Result<pb::PtyEvent, Status>>;

    async fn pty_attach(&self, req: Request<pb::PtyAttachRequest>) -> Rpc<Self::PtyAttachStream> {
        let stream = self
            .pty_attach_inner(req.into_inner())
            .await
            .map_err(status_of)?;
        Ok(Response::new(stream))
    }

    async fn pty_send_input(
        &self,
        req: Request<pb::PtySendInputRequest>,
    ) -> Rpc<pb::PtySendInputResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        if r.tag.is_empty() {
            return Err(status_of(AgentError::invalid("tag is required")));
        }
        let (_sb, envd) = self
            .manager
            .envd_for(id, "PTY input needs a running sandbox")
            .map_err(status_of)?;
        let mut process = envd.process.clone();
        process
            .send_input(envd::SendInputRequest {
                process: Some(by_tag(&r.tag)),
                input: Some(envd::ProcessInput {
                    input: Some(envd::process_input::Input::Pty(r.data)),
                }),
            })
            .await
            .map_err(|s| status_of(s.into()))?;
        Ok(Response::new(pb::PtySendInputResponse {}))
    }

    async fn pty_resize(&self, req: Request<pb::PtyResizeRequest>) -> Rpc<pb::PtyResizeResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        if r.tag.is_empty() {
            return Err(status_of(AgentError::invalid("tag is required")));
        }
        if r.cols == 0 || r.rows == 0 {
            return Err(status_of(AgentError::invalid(
                "cols and rows must be non-zero",
            )));
        }
        let (_sb, envd) = self
            .manager
            .envd_for(id, "PTY resize needs a running sandbox")
            .map_err(status_of)?;
        let mut process = envd.process.clone();
        process
            .update(envd::UpdateRequest {
                process: Some(by_tag(&r.tag)),
                pty: Some(envd::Pty {
                    cols: r.cols,
                    rows: r.rows,
                }),
            })
            .await
            .map_err(|s| status_of(s.into()))?;
        Ok(Response::new(pb::PtyResizeResponse {}))
    }

    async fn pty_kill(&self, req: Request<pb::PtyKillRequest>) -> Rpc<pb::PtyKillResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        if r.tag.is_empty() {
            return Err(status_of(AgentError::invalid("tag is required")));
        }
        let (_sb, envd) = self
            .manager
            .envd_for(id, "PTY kill needs a running sandbox")
            .map_err(status_of)?;
        let info = find_process(&envd, &r.tag).await.map_err(status_of)?;
        if !info.pty {
            return Err(status_of(AgentError::FailedPrecondition(format!(
                "process {:?} has no PTY: use KillProcess",
                r.tag
            ))));
        }
        let mut process = envd.process.clone();
        process
            .send_signal(envd::SendSignalRequest {
                process: Some(by_tag(&r.tag)),
                signal: envd::Signal::Sigkill as i32,
            })
            .await
            .map_err(|s| status_of(s.into()))?;
        Ok(Response::new(pb::PtyKillResponse {}))
    }

    async fn write_file_stream(
        &self,
        req: Request<Streaming<pb::WriteFileStreamRequest>>,
    ) -> Rpc<pb::WriteFileStreamResponse> {
        let resp = self
            .write_file_inner(req.into_inner())
            .await
            .map_err(status_of)?;
        Ok(Response::new(resp))
    }

    type ReadFileStreamStream = ReceiverStream<Result<pb::ReadFileStreamResponse, Status>>;

    async fn read_file_stream(
        &self,
        req: Request<pb::ReadFileStreamRequest>,
    ) -> Rpc<Self::ReadFileStreamStream> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        require_path("path", &r.path).map_err(status_of)?;
        let (sb, envd) = self
            .manager
            .envd_for(id, "reading files needs a running sandbox")
            .map_err(status_of)?;
        let mut fs = envd.fs.clone();
        let mut stream = fs
            .read_file(envd::ReadFileRequest { path: r.path })
            .await
            .map_err(|s| status_of(s.into()))?
            .into_inner();
        // Errors before the first chunk are the call's status.
        let first = stream
            .message()
            .await
            .map_err(|s| status_of(s.into()))?
            .ok_or_else(|| status_of(AgentError::Unavailable("guest agent sent no data".into())))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let _ = tx
            .send(Ok(pb::ReadFileStreamResponse {
                chunk: first.data,
                total_size: first.total_size,
            }))
            .await;
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    msg = stream.message() => match msg {
                        Ok(Some(m)) => {
                            sb.touch();
                            let out = pb::ReadFileStreamResponse { chunk: m.data, total_size: None };
                            if tx.send(Ok(out)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(s) => {
                            let _ = tx.send(Err(status_of(s.into()))).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stat(&self, req: Request<pb::StatRequest>) -> Rpc<pb::StatResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        require_path("path", &r.path).map_err(status_of)?;
        let (_sb, envd) = self
            .manager
            .envd_for(id, "stat needs a running sandbox")
            .map_err(status_of)?;
        let mut fs = envd.fs.clone();
        let resp = fs
            .stat(envd::StatRequest { path: r.path })
            .await
            .map_err(|s| status_of(s.into()))?
            .into_inner();
        Ok(Response::new(pb::StatResponse {
            entry: Some(entry_or_internal(resp.entry).map_err(status_of)?),
        }))
    }

    async fn list_dir(&self, req: Request<pb::ListDirRequest>) -> Rpc<pb::ListDirResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        require_path("path", &r.path).map_err(status_of)?;
        let (_sb, envd) = self
            .manager
            .envd_for(id, "listing files needs a running sandbox")
            .map_err(status_of)?;
        let mut fs = envd.fs.clone();
        let resp = fs
            .list_dir(envd::ListDirRequest {
                path: r.path,
                depth: r.depth,
            })
            .await
            .map_err(|s| status_of(s.into()))?
            .into_inner();
        Ok(Response::new(pb::ListDirResponse {
            entries: resp.entries.into_iter().map(file_entry).collect(),
        }))
    }

    async fn make_dir(&self, req: Request<pb::MakeDirRequest>) -> Rpc<pb::MakeDirResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        require_path("path", &r.path).map_err(status_of)?;
        let (_sb, envd) = self
            .manager
            .envd_for(id, "creating directories needs a running sandbox")
            .map_err(status_of)?;
        let mut fs = envd.fs.clone();
        let resp = fs
            .make_dir(envd::MakeDirRequest {
                path: r.path,
                user: None,
            })
            .await
            .map_err(|s| status_of(s.into()))?
            .into_inner();
        Ok(Response::new(pb::MakeDirResponse {
            entry: Some(entry_or_internal(resp.entry).map_err(status_of)?),
        }))
    }

    async fn r#move(&self, req: Request<pb::MoveRequest>) -> Rpc<pb::MoveResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        require_path("source", &r.source).map_err(status_of)?;
        require_path("destination", &r.destination).map_err(status_of)?;
        let (_sb, envd) = self
            .manager
            .envd_for(id, "moving files needs a running sandbox")
            .map_err(status_of)?;
        let mut fs = envd.fs.clone();
        let resp = fs
            .r#move(envd::MoveRequest {
                source: r.source,
                destination: r.destination,
            })
            .await
            .map_err(|s| status_of(s.into()))?
            .into_inner();
        Ok(Response::new(pb::MoveResponse {
            entry: Some(entry_or_internal(resp.entry).map_err(status_of)?),
        }))
    }

    async fn remove_path(
        &self,
        req: Request<pb::RemovePathRequest>,
    ) -> Rpc<pb::RemovePathResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        require_path("path", &r.path).map_err(status_of)?;
        let (_sb, envd) = self
            .manager
            .envd_for(id, "removing files needs a running sandbox")
            .map_err(status_of)?;
        let mut fs = envd.fs.clone();
        fs.remove(envd::RemoveRequest { path: r.path })
            .await
            .map_err(|s| status_of(s.into()))?;
        Ok(Response::new(pb::RemovePathResponse {}))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Rpc<pb::CreateSnapshotResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        let (team, template) =
            parse_template_target(&r.team_id, &r.template_id).map_err(status_of)?;
        let size_bytes = self
            .manager
            .spawn_op(move |m| async move { m.snapshot(id, team, template).await })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::CreateSnapshotResponse { size_bytes }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Rpc<pb::DeleteSnapshotResponse> {
        let r = req.into_inner();
        let (team, template) =
            parse_template_target(&r.team_id, &r.template_id).map_err(status_of)?;
        let deleted = self
            .manager
            .spawn_op(move |m| async move { m.delete_template(team, template).await })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::DeleteSnapshotResponse { deleted }))
    }

    async fn flatten_rootfs(
        &self,
        req: Request<pb::FlattenRootfsRequest>,
    ) -> Rpc<pb::FlattenRootfsResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        parse_template_target(&r.team_id, &r.template_id).map_err(status_of)?;
        let sb = self.manager.get(id).map_err(status_of)?;
        let status = sb.status();
        if status != SandboxStatus::Running {
            return Err(status_of(AgentError::WrongState {
                id,
                status,
                what: "flatten needs a running sandbox".into(),
            }));
        }
        Err(status_of(AgentError::Unimplemented(format!(
            "FlattenRootfs is not supported by the {} runtime: use CreateSnapshot, whose template \
             already holds only the sandbox's files",
            self.manager.runtime().name()
        ))))
    }

    async fn get_sandbox_metrics(
        &self,
        req: Request<pb::GetSandboxMetricsRequest>,
    ) -> Rpc<pb::GetSandboxMetricsResponse> {
        let r = req.into_inner();
        let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
        let points = self.manager.metrics(id, &r.range).map_err(status_of)?;
        Ok(Response::new(pb::GetSandboxMetricsResponse { points }))
    }

    async fn flush_sandbox_metrics(
        &self,
        req: Request<pb::FlushSandboxMetricsRequest>,
    ) -> Rpc<pb::FlushSandboxMetricsResponse> {
        let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
        let (points_10m, points_2h, points_24h) =
            self.manager.flush_metrics(id).map_err(status_of)?;
        Ok(Response::new(pb::FlushSandboxMetricsResponse {
            points_10m,
            points_2h,
            points_24h,
        }))
    }

    async fn get_host_metrics(
        &self,
        _req: Request<pb::GetHostMetricsRequest>,
    ) -> Rpc<pb::GetHostMetricsResponse> {
        let host = Arc::clone(&self.host);
        let dir: PathBuf = self.manager.layout().root().to_path_buf();
        let usage = tokio::task::spawn_blocking(move || host.usage(&dir))
            .await
            .map_err(|e| status_of(AgentError::internal(e)))?;
        let (count, running, vcpus, mem) = self.manager.allocations();
        Ok(Response::new(pb::GetHostMetricsResponse {
            cpu_count: usage.cpu_count,
            cpu_used_pct: usage.cpu_used_pct,
            memory_total_bytes: usage.memory_total_bytes,
            memory_available_bytes: usage.memory_available_bytes,
            disk_total_bytes: usage.disk_total_bytes,
            disk_available_bytes: usage.disk_available_bytes,
            sandbox_count: count,
            running_sandbox_count: running,
            vcpus_allocated: vcpus,
            memory_allocated_mb: mem,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tags() {
        assert!(parse_sandbox_id("").is_err());
        assert!(parse_sandbox_id("cl-abc").is_err());
        assert!(parse_sandbox_id(&SandboxId::new().to_string()).is_ok());
        assert_eq!(parse_uuid("t", "", true).unwrap(), Uuid::nil());
        assert!(parse_uuid("t", "", false).is_err());
        assert!(parse_uuid("t", "0000000000000000000000000000000a", true).is_err());
        assert!(parse_uuid("t", "00000000-0000-0000-0000-00000000000a", true).is_ok());
        assert!(
            parse_template_target(
                "00000000-0000-0000-0000-000000000001",
                "00000000-0000-0000-0000-000000000000"
            )
            .is_err()
        );
        check_tag("web-1.x_y").unwrap();
        assert!(check_tag("bad tag").is_err());
        assert!(check_tag(&"a".repeat(65)).is_err());
        let t = generated_tag("proc");
        assert!(t.starts_with("proc-") && t.len() == 13, "{t}");
        check_tag(&t).unwrap();
    }

    #[test]
    fn signals() {
        assert_eq!(envd_signal(0).unwrap(), envd::Signal::Sigkill as i32);
        assert_eq!(envd_signal(15).unwrap(), envd::Signal::Sigterm as i32);
        assert!(envd_signal(3).is_err());
    }

    #[test]
    fn selectors() {
        assert!(selector(None).is_err());
        assert!(selector(Some(pb::ProcessSelector { selector: None })).is_err());
        assert!(
            selector(Some(pb::ProcessSelector {
                selector: Some(pb::process_selector::Selector::Tag(String::new()))
            }))
            .is_err()
        );
        assert!(
            selector(Some(pb::ProcessSelector {
                selector: Some(pb::process_selector::Selector::Pid(7))
            }))
            .is_ok()
        );
    }
}
