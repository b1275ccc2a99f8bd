//! The agent's error type and its mapping onto gRPC status codes — the one place where
//! that mapping lives.
//!
//! Every failure inside the agent becomes an [`AgentError`] variant that says *what kind*
//! of failure it is; [`From<AgentError> for tonic::Status`](AgentError) turns the kind
//! into the code documented in `hostagent.proto`. No code is ever inferred from an
//! error message's text.

use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;

use crate::runtime::RuntimeError;

/// A failure of an agent operation.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A malformed id, a missing required field or a value out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The sandbox is unknown to this agent.
    #[error("sandbox {0} not found")]
    SandboxNotFound(SandboxId),
    /// Something other than a sandbox (a path, a process, a template) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The sandbox exists but is in the wrong state for the call.
    #[error("sandbox {id} is {status}: {what}")]
    WrongState {
        /// The sandbox.
        id: SandboxId,
        /// Its current status.
        status: SandboxStatus,
        /// What was attempted and what it needs (`exec needs a running sandbox`).
        what: String,
    },
    /// Another precondition does not hold.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The thing to create already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Out of disk, memory, network slots…
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller lacks a permission (inside the sandbox).
    #[error("{0}")]
    PermissionDenied(String),
    /// The guest agent (or another dependency) did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The operation outlived its deadline.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The operation was cancelled.
    #[error("{0}")]
    Cancelled(String),
    /// The operation is not supported here.
    #[error("{0}")]
    Unimplemented(String),
    /// A runtime failure.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A failure reported by the guest agent (envd), with its gRPC status.
    #[error("guest agent: {}", .0.message())]
    Envd(tonic::Status),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// An [`AgentError::Internal`] from anything printable.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// An [`AgentError::InvalidArgument`] from anything printable.
    pub fn invalid(e: impl std::fmt::Display) -> Self {
        Self::InvalidArgument(e.to_string())
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::SandboxNotFound(_) | Self::NotFound(_) => Code::NotFound,
            Self::WrongState { .. } | Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Cancelled(_) => Code::Cancelled,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Internal(_) => Code::Internal,
            Self::Runtime(e) => match e {
                RuntimeError::NotFound(_) | RuntimeError::TemplateNotFound(_) => Code::NotFound,
                RuntimeError::FailedPrecondition(_) | RuntimeError::Unsupported(_) => {
                    Code::FailedPrecondition
                }
                RuntimeError::Io { source, .. } if is_no_space(source) => Code::ResourceExhausted,
                RuntimeError::ResourceExhausted(_) => Code::ResourceExhausted,
                RuntimeError::Io { .. } | RuntimeError::Other(_) => Code::Internal,
            },
            Self::Envd(status) => envd_code(status.code()),
        }
    }
}

/// `ENOSPC` / `EDQUOT`.
fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122)) || e.kind() == std::io::ErrorKind::StorageFull
}

/// How a status returned by the guest agent is passed on to the control plane.
///
/// Codes that describe the request or the sandbox's contents (a missing path or
/// process, a bad argument, a tag in use, a full disk, a permission) pass through
/// unchanged; transport failures (`UNAVAILABLE`, `UNKNOWN`, which is what a broken
/// connection looks like) become `UNAVAILABLE`; `UNAUTHENTICATED` (the agent's own
/// access token was refused) and everything else become `INTERNAL`.
pub fn envd_code(code: tonic::Code) -> tonic::Code {
    use tonic::Code;
    match code {
        Code::NotFound
        | Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::OutOfRange => code,
        Code::Unavailable | Code::Unknown => Code::Unavailable,
        _ => Code::Internal,
    }
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

impl From<tonic::Status> for AgentError {
    fn from(status: tonic::Status) -> Self {
        Self::Envd(status)
    }
}

/// Result of an agent operation.
pub type AgentResult<T> = Result<T, AgentError>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes() {
        let id = SandboxId::new();
        let cases: Vec<(AgentError, Code)> = vec![
            (AgentError::invalid("x"), Code::InvalidArgument),
            (AgentError::SandboxNotFound(id), Code::NotFound),
            (
                AgentError::WrongState {
                    id,
                    status: SandboxStatus::Paused,
                    what: "exec needs a running sandbox".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                AgentError::Runtime(RuntimeError::NotFound(id)),
                Code::NotFound,
            ),
            (
                AgentError::Runtime(RuntimeError::Unsupported("x".into())),
                Code::FailedPrecondition,
            ),
            (
                AgentError::Runtime(RuntimeError::Io {
                    context: "write".into(),
                    source: std::io::Error::from_raw_os_error(28),
                }),
                Code::ResourceExhausted,
            ),
            (
                AgentError::Envd(tonic::Status::already_exists("dir")),
                Code::AlreadyExists,
            ),
            (
                AgentError::Envd(tonic::Status::unknown("h2 broken")),
                Code::Unavailable,
            ),
            (
                AgentError::Envd(tonic::Status::unauthenticated("token")),
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code, "{status:?}");
        }
    }

    #[test]
    fn wrong_state_names_the_status() {
        let id = SandboxId::new();
        let s = tonic::Status::from(AgentError::WrongState {
            id,
            status: SandboxStatus::Paused,
            what: "exec needs a running sandbox".into(),
        });
        assert!(s.message().contains("paused"), "{}", s.message());
        assert!(s.message().contains(&id.to_string()));
    }
}
