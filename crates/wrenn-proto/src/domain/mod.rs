//! The wire ↔ Wrenn's domain types (feature `domain`): the one place a wire value
//! becomes a [`wrenn_core`] value and back, used by the agent that answers and the
//! control plane that asks. This module converts `hostagent.v1` (lifecycle, snapshots,
//! metrics); [`data_plane`] converts the `envd.v1` calls the control plane sends into a
//! running capsule ([`wrenn_core::data_plane`]).

use std::collections::{BTreeMap, HashMap};

use tonic::{Code, Status};
use wrenn_core::agents::{HostCallError, SandboxSpec};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{MetricHistory, MetricPoint};

use crate::hostagent::v1 as pb;

pub mod data_plane;

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

/// The `CreateSandbox` request for `spec`: `team_id` is the sandbox's owner,
/// `template_team_id` the team owning the template (the agent finds the template
/// under `images/teams/{template_team_id}/{template_id}`).
pub fn create_request(spec: &SandboxSpec) -> Result<pb::CreateSandboxRequest, HostCallError> {
    Ok(pb::CreateSandboxRequest {
        sandbox_id: spec.sandbox_id.to_string(),
        template: spec.template.clone(),
        team_id: spec.team_id.uuid().hyphenated().to_string(),
        template_id: spec.template_id.uuid().hyphenated().to_string(),
        template_team_id: spec.template_team_id.uuid().hyphenated().to_string(),
        vcpus: unsigned("vcpus", spec.resources.vcpus)?,
        memory_mb: unsigned("memory_mb", spec.resources.memory_mb)?,
        disk_size_mb: unsigned("disk_size_mb", spec.resources.disk_size_mb)?,
        timeout_sec: unsigned("timeout_sec", spec.timeout_sec)?,
        default_user: spec.default_user.clone(),
        default_env: map_of(&spec.default_env),
        metadata: map_of(&spec.metadata),
    })
}

/// The `ResumeSandbox` request for `spec` (timeout and process defaults are replaced).
pub fn resume_request(spec: &SandboxSpec) -> Result<pb::ResumeSandboxRequest, HostCallError> {
    Ok(pb::ResumeSandboxRequest {
        sandbox_id: spec.sandbox_id.to_string(),
        timeout_sec: unsigned("timeout_sec", spec.timeout_sec)?,
        default_user: spec.default_user.clone(),
        default_env: map_of(&spec.default_env),
    })
}

/// A sandbox's sample tiers (fine, mid, coarse) as the control plane keeps them.
pub fn metric_history(
    ten_minutes: Vec<pb::MetricPoint>,
    two_hours: Vec<pb::MetricPoint>,
    day: Vec<pb::MetricPoint>,
) -> MetricHistory {
    let stored = |points: Vec<pb::MetricPoint>| {
        points
            .into_iter()
            .map(|p| MetricPoint {
                ts: p.timestamp_unix,
                cpu_pct: p.cpu_pct,
                mem_bytes: i64::try_from(p.mem_bytes).unwrap_or(i64::MAX),
                disk_bytes: i64::try_from(p.disk_bytes).unwrap_or(i64::MAX),
            })
            .collect()
    };
    MetricHistory {
        ten_minutes: stored(ten_minutes),
        two_hours: stored(two_hours),
        day: stored(day),
    }
}

/// Converts a non-negative resource value for the wire.
fn unsigned(field: &str, value: i32) -> Result<u32, HostCallError> {
    u32::try_from(value).map_err(|_| {
        HostCallError::InvalidArgument(format!("{field} must not be negative (got {value})"))
    })
}

fn map_of(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        use wrenn_core::id::{SandboxId, TeamId, TemplateId};
        use wrenn_core::model::Resources;
        SandboxSpec {
            sandbox_id: SandboxId::new(),
            team_id: TeamId::new(),
            template: "minimal".into(),
            template_id: TemplateId::new(),
            template_team_id: TeamId::new(),
            resources: Resources {
                vcpus: 2,
                memory_mb: 1024,
                disk_size_mb: 4096,
            },
            timeout_sec: 300,
            default_user: "wrenn-user".into(),
            default_env: BTreeMap::from([("A".into(), "1".into())]),
            metadata: [("k".to_owned(), "v".to_owned())].into_iter().collect(),
        }
    }

    #[test]
    fn a_spec_becomes_the_create_and_resume_requests_field_for_field() {
        let spec = spec();
        let create = create_request(&spec).unwrap();
        assert_eq!(create.sandbox_id, spec.sandbox_id.to_string());
        assert_eq!(create.team_id, spec.team_id.uuid().hyphenated().to_string());
        assert_eq!(
            create.template_id,
            spec.template_id.uuid().hyphenated().to_string()
        );
        assert_eq!(
            create.template_team_id,
            spec.template_team_id.uuid().hyphenated().to_string()
        );
        assert_eq!(create.template, "minimal");
        assert_eq!(
            (
                create.vcpus,
                create.memory_mb,
                create.disk_size_mb,
                create.timeout_sec
            ),
            (2, 1024, 4096, 300)
        );
        assert_eq!(create.default_user, "wrenn-user");
        assert_eq!(create.default_env.get("A").map(String::as_str), Some("1"));
        assert_eq!(create.metadata.get("k").map(String::as_str), Some("v"));
        let resume = resume_request(&spec).unwrap();
        assert_eq!(resume.sandbox_id, create.sandbox_id);
        assert_eq!(resume.timeout_sec, 300);
        assert_eq!(resume.default_env, create.default_env);
    }

    #[test]
    fn a_negative_size_is_refused_before_the_wire() {
        let spec = spec();
        let spec = SandboxSpec {
            resources: wrenn_core::model::Resources {
                memory_mb: -1,
                ..spec.resources
            },
            ..spec
        };
        assert!(matches!(
            create_request(&spec),
            Err(HostCallError::InvalidArgument(m)) if m.contains("memory_mb")
        ));
    }

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
