//! The agent's error type and its mapping onto gRPC status codes.
//!
//! Every handler returns [`EnvdError`]; the one `From<EnvdError> for tonic::Status`
//! conversion below decides the status code, so the codes documented in the `envd.v1`
//! protos are produced in one place. I/O errors are classified by their errno.

use std::fmt::Display;
use std::io;

use tonic::Status;

/// An error of an envd operation. Each variant is one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// The request is malformed (`INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// A path, process or user does not exist (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already (`ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// The operation does not apply in the current state (`FAILED_PRECONDITION`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operating system refused the operation (`PERMISSION_DENIED`).
    #[error("{0}")]
    PermissionDenied(String),
    /// No space left (`RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The access token is missing or wrong (`UNAUTHENTICATED`).
    #[error("{0}")]
    Unauthenticated(String),
    /// Something the call needs cannot be reached, such as a tunnel's destination
    /// (`UNAVAILABLE`).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (`INTERNAL`).
    #[error("{0}")]
    Internal(String),
}

/// Result alias of the agent.
pub type Result<T, E = EnvdError> = std::result::Result<T, E>;

impl EnvdError {
    /// Classifies an I/O error by its errno, prefixing the message with `context`.
    pub fn from_io(context: impl Display, err: &io::Error) -> Self {
        let message = format!("{context}: {err}");
        let errno = err.raw_os_error().map(rustix::io::Errno::from_raw_os_error);
        use rustix::io::Errno;
        match errno {
            Some(Errno::NOENT) => Self::NotFound(message),
            Some(Errno::EXIST) | Some(Errno::NOTEMPTY) => Self::AlreadyExists(message),
            Some(Errno::ACCESS) | Some(Errno::PERM) | Some(Errno::ROFS) => {
                Self::PermissionDenied(message)
            }
            Some(Errno::NOSPC) | Some(Errno::DQUOT) | Some(Errno::FBIG) => {
                Self::ResourceExhausted(message)
            }
            Some(Errno::NOTDIR)
            | Some(Errno::ISDIR)
            | Some(Errno::INVAL)
            | Some(Errno::NAMETOOLONG)
            | Some(Errno::LOOP) => Self::InvalidArgument(message),
            _ => match err.kind() {
                io::ErrorKind::NotFound => Self::NotFound(message),
                io::ErrorKind::PermissionDenied => Self::PermissionDenied(message),
                io::ErrorKind::AlreadyExists => Self::AlreadyExists(message),
                io::ErrorKind::InvalidInput => Self::InvalidArgument(message),
                _ => Self::Internal(message),
            },
        }
    }

    /// A closure for `map_err` that classifies an I/O error with `context`.
    pub fn io(context: impl Display) -> impl FnOnce(io::Error) -> Self {
        move |err| Self::from_io(context, &err)
    }

    /// Shorthand for [`EnvdError::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// Shorthand for [`EnvdError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// Shorthand for [`EnvdError::FailedPrecondition`].
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::FailedPrecondition(message.into())
    }

    /// Shorthand for [`EnvdError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
}

impl From<EnvdError> for Status {
    fn from(err: EnvdError) -> Self {
        match err {
            EnvdError::InvalidArgument(m) => Status::invalid_argument(m),
            EnvdError::NotFound(m) => Status::not_found(m),
            EnvdError::AlreadyExists(m) => Status::already_exists(m),
            EnvdError::FailedPrecondition(m) => Status::failed_precondition(m),
            EnvdError::PermissionDenied(m) => Status::permission_denied(m),
            EnvdError::ResourceExhausted(m) => Status::resource_exhausted(m),
            EnvdError::Unauthenticated(m) => Status::unauthenticated(m),
            EnvdError::Unavailable(m) => Status::unavailable(m),
            EnvdError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<tokio::task::JoinError> for EnvdError {
    fn from(err: tokio::task::JoinError) -> Self {
        Self::Internal(format!("background task failed: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_the_documented_codes() {
        let code = |errno: i32| {
            Status::from(EnvdError::from_io(
                "x",
                &io::Error::from_raw_os_error(errno),
            ))
            .code()
        };
        assert_eq!(
            code(rustix::io::Errno::NOENT.raw_os_error()),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(rustix::io::Errno::EXIST.raw_os_error()),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(rustix::io::Errno::NOSPC.raw_os_error()),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            code(rustix::io::Errno::ACCESS.raw_os_error()),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(rustix::io::Errno::NOTDIR.raw_os_error()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(rustix::io::Errno::IO.raw_os_error()),
            tonic::Code::Internal
        );
    }
}
