//! Validation of request fields and the conversions between `hostagent.v1`, envd's
//! protocol and the agent's domain types.

use std::collections::HashMap;

use uuid::Uuid;
use wrenn_core::id::{SandboxId, TeamId, TemplateId};
use wrenn_proto::domain::status_to_proto;
use wrenn_proto::envd::v1 as envd;
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

pub(super) fn require_path(field: &str, path: &str) -> AgentResult<()> {
    if path.is_empty() {
        return Err(AgentError::InvalidArgument(format!("{field} is required")));
    }
    Ok(())
}

pub(super) fn require_cmd(cmd: &str) -> AgentResult<()> {
    if cmd.is_empty() {
        return Err(AgentError::invalid("cmd is required"));
    }
    Ok(())
}

/// Checks a process tag: 1 to 64 characters of `A-Za-z0-9._-`.
pub(super) fn check_tag(tag: &str) -> AgentResult<()> {
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

pub(super) fn generated_tag(prefix: &str) -> String {
    let b: [u8; 4] = rand::random();
    format!("{prefix}-{}", hex::encode(b))
}

pub(super) fn selector(sel: Option<pb::ProcessSelector>) -> AgentResult<envd::ProcessSelector> {
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

pub(super) fn by_tag(tag: &str) -> envd::ProcessSelector {
    envd::ProcessSelector {
        selector: Some(envd::process_selector::Selector::Tag(tag.to_owned())),
    }
}

pub(super) fn by_pid(pid: u32) -> envd::ProcessSelector {
    envd::ProcessSelector {
        selector: Some(envd::process_selector::Selector::Pid(pid)),
    }
}

pub(super) fn envd_signal(signal: i32) -> AgentResult<i32> {
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

pub(super) fn file_entry(e: envd::EntryInfo) -> pb::FileEntry {
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

pub(super) fn entry_or_internal(e: Option<envd::EntryInfo>) -> AgentResult<pb::FileEntry> {
    e.map(file_entry)
        .ok_or_else(|| AgentError::internal("guest agent returned no entry"))
}

pub(super) fn process_config(
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
