//! The agent's error type and its mapping onto gRPC status codes — the one place where
//! that mapping lives.
//!
//! Every failure inside the agent becomes an [`AgentError`] variant that says *what kind*
//! of failure it is; [`From<AgentError> for tonic::Status`](AgentError) turns the kind
//! into the code documented in `hostagent.proto`. No code is ever inferred from an
//! error message's text.
//!
//! A status's message is [`AgentError::wire_message`]: the whole cause chain
//! ([`error_chain`]), with host paths left out of runtime and internal failures (the
//! full chain, paths included, goes to the agent's log instead).

use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;

use crate::runtime::{RuntimeError, error_chain};

/// What stands in for a host path in a message sent to the control plane.
pub const HOST_PATH: &str = "<host path>";

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

    /// The message for the control plane and, through it, the tenant: the error and
    /// its causes ([`error_chain`]). Runtime and internal failures are the agent's own
    /// and may name host paths (`$WRENN_DIR`, the image store, cgroups): their
    /// absolute paths are replaced by [`HOST_PATH`]. Messages that describe the
    /// request or the sandbox's contents (not found, invalid argument, the guest
    /// agent's answers) are kept whole, since their paths are the tenant's.
    pub fn wire_message(&self) -> String {
        match self {
            Self::Runtime(e) => e.wire_message(),
            Self::Internal(_) => without_host_paths(&error_chain(self)),
            _ => error_chain(self),
        }
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

/// `text` with each absolute path replaced by [`HOST_PATH`]: a `/` that starts a word
/// (at the start, or after a space, a quote or an opening bracket or `=`) and what
/// follows it up to a space, a quote, a closing bracket, `,`, `;` or `:`.
/// Relative paths, `I/O` and URLs (`://`) are kept.
pub fn without_host_paths(text: &str) -> String {
    let ends = |c: char| c.is_whitespace() || "\"'`),;:]}>".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        let starts_word = prev.is_none_or(|p| p.is_whitespace() || "\"'`([{<=".contains(p));
        if c == '/' && starts_word && chars.peek().is_some_and(|&n| !ends(n) && n != '/') {
            while chars.peek().is_some_and(|&n| !ends(n)) {
                chars.next();
            }
            out.push_str(HOST_PATH);
            prev = Some('>');
            continue;
        }
        out.push(c);
        prev = Some(c);
    }
    out
}

impl From<AgentError> for tonic::Status {
    /// A status with [`AgentError::code`] and [`AgentError::wire_message`]; when the
    /// message leaves something out, the whole chain is logged.
    fn from(e: AgentError) -> Self {
        let message = e.wire_message();
        if matches!(e, AgentError::Runtime(_) | AgentError::Internal(_)) {
            let chain = error_chain(&e);
            if chain != message {
                tracing::warn!(error = %chain, "host paths left out of a status sent as: {message}");
            }
        }
        tonic::Status::new(e.code(), message)
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
    fn io_errors_keep_their_cause_and_leave_host_paths_out_of_the_status() {
        let e = AgentError::Runtime(RuntimeError::Io {
            context: "create /var/lib/wrenn/sandboxes/sb-1/rootfs".into(),
            source: std::io::Error::from_raw_os_error(13),
        });
        let chain = error_chain(&e);
        assert!(
            chain.starts_with("create /var/lib/wrenn/sandboxes/sb-1/rootfs: "),
            "{chain}"
        );
        assert!(chain.contains("Permission denied"), "{chain}");
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), Code::Internal);
        assert!(
            !status.message().contains("/var/lib/wrenn"),
            "{}",
            status.message()
        );
        assert!(!status.message().contains("sb-1"), "{}", status.message());
        assert!(
            status.message().starts_with("create <host path>: "),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("Permission denied"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn host_paths_are_left_out() {
        for (text, want) in [
            (
                "write \"1\" to /sys/fs/cgroup/x/pids.max: busy",
                "write \"1\" to <host path>: busy",
            ),
            ("open \"/var/lib/wrenn/ab\"", "open \"<host path>\""),
            ("(cannot read /x/y)", "(cannot read <host path>)"),
            ("/etc/passwd", "<host path>"),
            (
                "I/O error on a/b, see http://h/p",
                "I/O error on a/b, see http://h/p",
            ),
            (
                "sandbox sb-1: template t is gone",
                "sandbox sb-1: template t is gone",
            ),
            ("a / b", "a / b"),
        ] {
            assert_eq!(without_host_paths(text), want, "{text}");
        }
    }

    #[test]
    fn tenant_paths_in_other_errors_are_kept() {
        let e = AgentError::NotFound("/home/user/x not found".into());
        assert_eq!(e.wire_message(), "/home/user/x not found");
        assert_eq!(tonic::Status::from(e).message(), "/home/user/x not found");
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
