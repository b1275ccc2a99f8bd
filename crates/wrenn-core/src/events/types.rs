//! Event payloads carried by the bus.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::id::{HostId, SandboxId, TeamId};
use crate::lifecycle::SandboxStatus;
use crate::model::{Metadata, MetricHistory};

/// Stream of sandbox lifecycle outcomes (agent callbacks and background tasks).
/// The control plane's event consumer is the fallback writer for these.
pub const SANDBOX_STREAM: &str = "wrenn:sandbox-events";
/// Stream of user-facing platform events (SSE, notification channels).
pub const PLATFORM_STREAM: &str = "wrenn:events";

/// What happened to a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxEventKind {
    /// Created and running.
    Started,
    /// Resumed and running.
    Resumed,
    /// Paused on request.
    Paused,
    /// Paused by the agent's idle reaper.
    AutoPaused,
    /// Persisted to disk by the agent (long pause or agent shutdown).
    Hibernated,
    /// Destroyed.
    Stopped,
    /// Captured into a template.
    Snapshotted,
    /// An operation failed and the sandbox is unusable.
    Failed,
    /// A pause failed; the sandbox kept running.
    PauseFailed,
    /// A resume failed; the sandbox stayed paused.
    ResumeFailed,
}

impl SandboxEventKind {
    /// Wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Resumed => "resumed",
            Self::Paused => "paused",
            Self::AutoPaused => "auto_paused",
            Self::Hibernated => "hibernated",
            Self::Stopped => "stopped",
            Self::Snapshotted => "snapshotted",
            Self::Failed => "failed",
            Self::PauseFailed => "pause_failed",
            Self::ResumeFailed => "resume_failed",
        }
    }
}

/// A sandbox lifecycle outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxEvent {
    /// What happened.
    pub event: SandboxEventKind,
    /// The sandbox.
    pub sandbox_id: SandboxId,
    /// Its team, when the publisher knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<TeamId>,
    /// The host that reported it.
    pub host_id: HostId,
    /// Address through which the sandbox is reached (started/resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// Agent-reported metadata (versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The samples the agent still held when sampling stopped (auto-pause,
    /// hibernation, destruction, death). The control plane stores them on receipt and
    /// never republishes them on the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricHistory>,
    /// Unix seconds.
    pub timestamp: i64,
}

impl SandboxEvent {
    /// An event stamped now with no optional fields.
    pub fn new(event: SandboxEventKind, sandbox_id: SandboxId, host_id: HostId) -> Self {
        Self {
            event,
            sandbox_id,
            team_id: None,
            host_id,
            host_ip: None,
            metadata: None,
            error: None,
            metrics: None,
            timestamp: Utc::now().timestamp(),
        }
    }
}

/// User-facing event types (the notification-channel vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlatformEventKind {
    /// A capsule was created.
    #[serde(rename = "capsule.created")]
    CapsuleCreated,
    /// A capsule became running (created or resumed).
    #[serde(rename = "capsule.running")]
    CapsuleRunning,
    /// A capsule was paused (by a user or the idle reaper).
    #[serde(rename = "capsule.paused")]
    CapsulePaused,
    /// A capsule was hibernated to disk.
    #[serde(rename = "capsule.hibernated")]
    CapsuleHibernated,
    /// A capsule was destroyed.
    #[serde(rename = "capsule.destroyed")]
    CapsuleDestroyed,
    /// A capsule operation failed.
    #[serde(rename = "capsule.failed")]
    CapsuleFailed,
    /// A snapshot template was created.
    #[serde(rename = "template.snapshot.created")]
    SnapshotCreated,
    /// A snapshot template was deleted.
    #[serde(rename = "template.snapshot.deleted")]
    SnapshotDeleted,
    /// A host came back.
    #[serde(rename = "host.up")]
    HostUp,
    /// A host stopped answering.
    #[serde(rename = "host.down")]
    HostDown,
    /// A channel test message.
    #[serde(rename = "channel.test")]
    ChannelTest,
}

impl PlatformEventKind {
    /// Every kind.
    pub const ALL: [PlatformEventKind; 11] = [
        Self::CapsuleCreated,
        Self::CapsuleRunning,
        Self::CapsulePaused,
        Self::CapsuleHibernated,
        Self::CapsuleDestroyed,
        Self::CapsuleFailed,
        Self::SnapshotCreated,
        Self::SnapshotDeleted,
        Self::HostUp,
        Self::HostDown,
        Self::ChannelTest,
    ];

    /// Wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CapsuleCreated => "capsule.created",
            Self::CapsuleRunning => "capsule.running",
            Self::CapsulePaused => "capsule.paused",
            Self::CapsuleHibernated => "capsule.hibernated",
            Self::CapsuleDestroyed => "capsule.destroyed",
            Self::CapsuleFailed => "capsule.failed",
            Self::SnapshotCreated => "template.snapshot.created",
            Self::SnapshotDeleted => "template.snapshot.deleted",
            Self::HostUp => "host.up",
            Self::HostDown => "host.down",
            Self::ChannelTest => "channel.test",
        }
    }

    /// What a capsule reaching the stable `status` tells subscribers (`None` for
    /// statuses they do not hear about: transient ones and `missing`, which
    /// `host.down` covers).
    pub const fn of_capsule_status(status: SandboxStatus) -> Option<Self> {
        Some(match status {
            SandboxStatus::Running => Self::CapsuleRunning,
            SandboxStatus::Paused => Self::CapsulePaused,
            SandboxStatus::Hibernated => Self::CapsuleHibernated,
            SandboxStatus::Stopped => Self::CapsuleDestroyed,
            SandboxStatus::Error => Self::CapsuleFailed,
            _ => return None,
        })
    }
}

/// The resource a platform event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventResource {
    /// Its id (prefixed, or a template name).
    pub id: String,
    /// Its type (`capsule`, `template`, `host`).
    #[serde(rename = "type")]
    pub kind: String,
}

/// A user-facing event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformEvent {
    /// Type.
    pub event: PlatformEventKind,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// Team it belongs to.
    pub team_id: TeamId,
    /// Who caused it.
    pub actor: Actor,
    /// What it is about.
    pub resource: EventResource,
}

impl PlatformEvent {
    /// An event about a capsule, stamped now.
    pub fn capsule(event: PlatformEventKind, team_id: TeamId, actor: Actor, id: SandboxId) -> Self {
        Self {
            event,
            timestamp: Utc::now(),
            team_id,
            actor,
            resource: EventResource {
                id: id.to_string(),
                kind: "capsule".into(),
            },
        }
    }
}

/// Anything the bus carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum Event {
    /// A lifecycle outcome.
    Sandbox(SandboxEvent),
    /// A user-facing event.
    Platform(PlatformEvent),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_event_wire_shape() {
        let ev = SandboxEvent::new(
            SandboxEventKind::AutoPaused,
            SandboxId::new(),
            HostId::new(),
        );
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["event"], "auto_paused");
        assert!(v.get("error").is_none());
        let back: SandboxEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn platform_kinds_match_their_wire_names() {
        for k in PlatformEventKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
