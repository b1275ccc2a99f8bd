//! Validation of request fields and the conversions between `hostagent.v1` and the
//! agent's domain types.

use uuid::Uuid;
use wrenn_core::id::{SandboxId, TeamId, TemplateId};
use wrenn_proto::domain::status_to_proto;
use wrenn_proto::hostagent::v1 as pb;

use crate::error::{AgentError, AgentResult};

/// Parses a required sandbox id.
pub fn parse_sandbox_id(s: &str) -> AgentResult<SandboxId> {
    if s.is_empty() {
        return Err(AgentError::invalid("sandbox_id is required"));
    }
    s.parse::<SandboxId>().map_err(AgentError::invalid)
}

/// Parses a hyphenated UUID; `empty_is_nil` lets the empty string mean the all-zero UUID.
pub(super) fn parse_uuid(field: &str, s: &str, empty_is_nil: bool) -> AgentResult<Uuid> {
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
pub(super) fn parse_template_target(
    team: &str,
    template: &str,
) -> AgentResult<(TeamId, TemplateId)> {
    let team = TeamId::from_uuid(parse_uuid("team_id", team, false)?);
    let template = parse_uuid("template_id", template, false)?;
    if template.is_nil() {
        return Err(AgentError::invalid(
            "template_id: the all-zero id is reserved for the built-in template",
        ));
    }
    Ok((team, TemplateId(template)))
}

pub(super) fn sandbox_info(id: SandboxId, v: crate::manager::SandboxView) -> pb::SandboxInfo {
    pb::SandboxInfo {
        sandbox_id: id.to_string(),
        status: status_to_proto(v.status) as i32,
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

pub(super) fn value_or(v: u32, default: u32) -> u32 {
    if v == 0 { default } else { v }
}

pub(super) fn check_range(field: &str, v: u32, (lo, hi): (u32, u32)) -> AgentResult<()> {
    if v < lo || v > hi {
        return Err(AgentError::InvalidArgument(format!(
            "{field} {v} is out of range ({lo} to {hi})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
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
    }
}
