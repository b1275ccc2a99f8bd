//! `hostagent.v1` ↔ Wrenn's domain types (feature `domain`): the one place a wire
//! value becomes a [`wrenn_core`] value and back, used by the agent that answers and
//! the control plane that asks.

use tonic::{Code, Status};
use wrenn_core::agents::HostCallError;
use wrenn_core::lifecycle::SandboxStatus;

use crate::hostagent::v1 as pb;

/// The wire value of a sandbox status. The wire has no `pending` (the agent reports a
/// sandbox it is making as `starting`) and no `missing` (an agent that lost a sandbox
/// reports `error`).
pub fn status_to_proto(status: SandboxStatus) -> pb::SandboxStatus {
    match status {
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

/// The status an agent reported. `UNSPECIFIED` (never sent by a correct agent) and
/// values this build does not know are `error`.
pub fn status_from_proto(status: i32) -> SandboxStatus {
    use pb::SandboxStatus as P;
    match P::try_from(status) {
        Ok(P::Starting) => SandboxStatus::Starting,
        Ok(P::Running) => SandboxStatus::Running,
        Ok(P::Pausing) => SandboxStatus::Pausing,
        Ok(P::Paused) => SandboxStatus::Paused,
        Ok(P::Hibernated) => SandboxStatus::Hibernated,
        Ok(P::Resuming) => SandboxStatus::Resuming,
        Ok(P::Stopping) => SandboxStatus::Stopping,
        Ok(P::Stopped) => SandboxStatus::Stopped,
        Ok(P::Error) => SandboxStatus::Error,
        Ok(P::Snapshotting) => SandboxStatus::Snapshotting,
        Ok(P::Unspecified) | Err(_) => SandboxStatus::Error,
    }
}

/// The failure of a `hostagent.v1` call named `op`, classified by its gRPC code and
/// keeping the agent's message. The message reaches tenants, so it does not name the
/// host (callers log the host id).
pub fn host_call_error(op: &str, status: &Status) -> HostCallError {
    let message = format!("{op}: {}", status.message());
    match status.code() {
        Code::NotFound => HostCallError::NotFound(message),
        Code::FailedPrecondition | Code::AlreadyExists => {
            HostCallError::FailedPrecondition(message)
        }
        Code::InvalidArgument => HostCallError::InvalidArgument(message),
        Code::Unavailable => HostCallError::Unavailable(message),
        Code::DeadlineExceeded => HostCallError::Timeout(message),
        Code::ResourceExhausted => HostCallError::ResourceExhausted(message),
        code => HostCallError::Internal(format!("{message} ({code:?})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_codes_become_host_call_errors_that_keep_the_message() {
        let cases = [
            (Code::NotFound, "not found on host: exec: gone"),
            (Code::AlreadyExists, "failed precondition: exec: gone"),
            (Code::FailedPrecondition, "failed precondition: exec: gone"),
            (Code::InvalidArgument, "invalid argument: exec: gone"),
            (Code::Unavailable, "host unavailable: exec: gone"),
            (
                Code::ResourceExhausted,
                "host capacity exhausted: exec: gone",
            ),
        ];
        for (code, shown) in cases {
            let e = host_call_error("exec", &Status::new(code, "gone"));
            assert_eq!(e.to_string(), shown, "{code:?}");
        }
        assert!(matches!(
            host_call_error("exec", &Status::deadline_exceeded("slow")),
            HostCallError::Timeout(m) if m == "exec: slow"
        ));
        assert!(matches!(
            host_call_error("exec", &Status::permission_denied("no")),
            HostCallError::Internal(m) if m == "exec: no (PermissionDenied)"
        ));
    }

    const ALL: [SandboxStatus; 12] = [
        SandboxStatus::Pending,
        SandboxStatus::Starting,
        SandboxStatus::Running,
        SandboxStatus::Pausing,
        SandboxStatus::Paused,
        SandboxStatus::Hibernated,
        SandboxStatus::Resuming,
        SandboxStatus::Stopping,
        SandboxStatus::Stopped,
        SandboxStatus::Error,
        SandboxStatus::Missing,
        SandboxStatus::Snapshotting,
    ];

    #[test]
    fn every_status_crosses_the_wire_and_comes_back_except_the_two_the_wire_lacks() {
        for status in ALL {
            let back = status_from_proto(status_to_proto(status) as i32);
            let expected = match status {
                SandboxStatus::Pending => SandboxStatus::Starting,
                SandboxStatus::Missing => SandboxStatus::Error,
                other => other,
            };
            assert_eq!(back, expected, "{status:?}");
        }
    }

    #[test]
    fn every_wire_status_but_unspecified_has_its_own_domain_status() {
        let mut seen = std::collections::HashSet::new();
        for raw in 1..=10 {
            let wire = pb::SandboxStatus::try_from(raw).expect("a known wire status");
            let status = status_from_proto(raw);
            assert_eq!(status_to_proto(status), wire);
            assert!(seen.insert(status), "{status:?} twice");
        }
    }

    #[test]
    fn unknown_or_unspecified_wire_values_are_errors() {
        for raw in [0, 11, 99, -1] {
            assert_eq!(status_from_proto(raw), SandboxStatus::Error, "{raw}");
        }
    }
}
