//! A small typed client of QEMU's machine protocol (QMP): JSON objects, one per line,
//! over the VM's unix socket. After the greeting the client sends
//! `qmp_capabilities`; then each [`Command`] is sent with an id and its answer is the
//! `return` (decoded into the command's [`Command::Response`]) or the `error` with the
//! same id. Asynchronous events arriving meanwhile are kept ([`Qmp::events`]).
//!
//! Only the commands the VM runtimes use are typed (`qapi/*.json` in QEMU's tree
//! names them all); see the implementors of [`Command`].

use crate::runtime::error_chain;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be used.
    #[error("QMP socket")]
    Io(#[from] std::io::Error),
    /// QEMU closed the connection (it exited).
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// QEMU sent something that is not QMP.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// QEMU refused the command.
    #[error("QEMU refused {command}: {desc} ({class})")]
    Refused {
        /// The command.
        command: &'static str,
        /// QEMU's error class (`GenericError`, `CommandNotFound`, …).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// A QMP command: its name, arguments (the serialized value; a unit struct has none)
/// and the type of its `return`.
pub trait Command: Serialize {
    /// The command name (`stop`, `query-status`, …).
    const NAME: &'static str;
    /// What QEMU returns.
    type Response: DeserializeOwned;
}

/// An empty `return` (`{}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Empty {}

/// `stop`: pauses the guest's vCPUs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stop;

impl Command for Stop {
    const NAME: &'static str = "stop";
    type Response = Empty;
}

/// `cont`: resumes the guest (also after an incoming migration).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cont;

impl Command for Cont {
    const NAME: &'static str = "cont";
    type Response = Empty;
}

/// `quit`: QEMU exits.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quit;

impl Command for Quit {
    const NAME: &'static str = "quit";
    type Response = Empty;
}

/// `query-status`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryStatus;

impl Command for QueryStatus {
    const NAME: &'static str = "query-status";
    type Response = StatusInfo;
}

/// The VM's run state (`query-status`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// vCPUs are running.
    pub running: bool,
    /// QEMU's run state (`running`, `paused`, `prelaunch`, `inmigrate`,
    /// `postmigrate`, `shutdown`, …).
    pub status: String,
}

/// `migrate`: writes the VM's state (memory and devices) to `uri` — for a memory
/// snapshot, `exec:<shell command>` or `fd:<name>`; completion is polled with
/// [`QueryMigrate`].
#[derive(Debug, Clone, Serialize)]
pub struct Migrate {
    /// Where the state goes.
    pub uri: String,
}

impl Command for Migrate {
    const NAME: &'static str = "migrate";
    type Response = Empty;
}

/// `migrate-incoming`: loads the VM's state from `uri` (QEMU started with
/// `-incoming defer`).
#[derive(Debug, Clone, Serialize)]
pub struct MigrateIncoming {
    /// Where the state comes from.
    pub uri: String,
}

impl Command for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Response = Empty;
}

/// `query-migrate`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryMigrate;

impl Command for QueryMigrate {
    const NAME: &'static str = "query-migrate";
    type Response = MigrationInfo;
}

/// Progress of a migration (`query-migrate`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, …; absent before
    /// any migration.
    #[serde(default)]
    pub status: Option<String>,
    /// Why it failed.
    #[serde(rename = "error-desc", default)]
    pub error_desc: Option<String>,
}

/// An asynchronous event (`{"event": …, "data": …}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// Its name (`STOP`, `RESUME`, `SHUTDOWN`, `MIGRATION`, …).
    pub event: String,
    /// Its data.
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(Serialize)]
struct Request<'a, C> {
    execute: &'static str,
    #[serde(skip_serializing_if = "is_unit")]
    arguments: Option<&'a C>,
    id: u64,
}

fn is_unit<C>(arguments: &Option<&C>) -> bool {
    arguments.is_none()
}

#[derive(Deserialize)]
struct QmpErrorBody {
    class: String,
    desc: String,
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    events: Vec<Event>,
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and negotiates.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let (read, writer) = UnixStream::connect(path).await?.into_split();
        let mut qmp = Self {
            reader: BufReader::new(read),
            writer,
            next_id: 1,
            events: Vec::new(),
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute_raw::<Empty>("qmp_capabilities", None::<&()>)
            .await?;
        Ok(qmp)
    }

    /// Runs `command`; returns QEMU's answer.
    pub async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Response, QmpError> {
        let arguments = match serde_json::to_value(command) {
            Ok(serde_json::Value::Object(map)) if !map.is_empty() => Some(command),
            _ => None,
        };
        self.execute_raw(C::NAME, arguments).await
    }

    /// The events received so far (taken).
    pub fn events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    async fn execute_raw<R: DeserializeOwned>(
        &mut self,
        name: &'static str,
        arguments: Option<&impl Serialize>,
    ) -> Result<R, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request {
            execute: name,
            arguments,
            id,
        })
        .map_err(|e| QmpError::Protocol(error_chain(&e)))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        loop {
            let message = self.read_message().await?;
            if message.get("event").is_some() {
                if let Ok(event) = serde_json::from_value(message) {
                    self.events.push(event);
                }
                continue;
            }
            if message.get("id").and_then(|v| v.as_u64()) != Some(id) {
                return Err(QmpError::Protocol(message.to_string()));
            }
            if let Some(error) = message.get("error") {
                let body: QmpErrorBody = serde_json::from_value(error.clone())
                    .map_err(|_| QmpError::Protocol(message.to_string()))?;
                return Err(QmpError::Refused {
                    command: name,
                    class: body.class,
                    desc: body.desc,
                });
            }
            let value = message
                .get("return")
                .cloned()
                .ok_or_else(|| QmpError::Protocol(message.to_string()))?;
            return serde_json::from_value(value.clone()).map_err(|e| {
                QmpError::Protocol(format!("{name} returned {value}: {}", error_chain(&e)))
            });
        }
    }

    async fn read_message(&mut self) -> Result<serde_json::Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(QmpError::Closed);
            }
            if !line.trim().is_empty() {
                return serde_json::from_str(&line)
                    .map_err(|_| QmpError::Protocol(line.trim().to_owned()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_serialize_with_their_arguments_only_when_they_have_some() {
        let stop = serde_json::to_value(Request {
            execute: Stop::NAME,
            arguments: None::<&Stop>,
            id: 7,
        })
        .unwrap();
        assert_eq!(stop, serde_json::json!({"execute": "stop", "id": 7}));
        let migrate = Migrate {
            uri: "exec:cat > /snap/memory".into(),
        };
        let request = serde_json::to_value(Request {
            execute: Migrate::NAME,
            arguments: Some(&migrate),
            id: 8,
        })
        .unwrap();
        assert_eq!(
            request,
            serde_json::json!({"execute": "migrate", "arguments": {"uri": "exec:cat > /snap/memory"}, "id": 8})
        );
    }

    #[test]
    fn answers_decode_into_the_commands_types() {
        let status: StatusInfo = serde_json::from_value(
            serde_json::json!({"running": false, "singlestep": false, "status": "paused"}),
        )
        .unwrap();
        assert_eq!(status.status, "paused");
        let info: MigrationInfo = serde_json::from_value(
            serde_json::json!({"status": "failed", "error-desc": "disk full"}),
        )
        .unwrap();
        assert_eq!(info.error_desc.as_deref(), Some("disk full"));
        let none: MigrationInfo = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(none.status, None);
    }
}
