//! Audit trail: who did what to which resource.
//!
//! Handlers build an [`AuditEntry`] and hand it to an [`AuditSink`]. The stores of
//! `wrenn-db` are sinks (they insert into `audit_logs`); an enterprise build may wrap
//! one to also forward entries elsewhere.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{ApiKeyId, AuditLogId, TeamId, UserId};
use crate::repo::RepoError;

/// Kind of actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A logged-in user.
    User,
    /// A team API key.
    ApiKey,
    /// The platform itself (monitor, reaper, workers).
    System,
}

impl ActorKind {
    /// Stored value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::ApiKey => "api_key",
            Self::System => "system",
        }
    }
}

/// Who performed an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Kind.
    #[serde(rename = "type")]
    pub kind: ActorKind,
    /// Prefixed id (`usr-…`, `key-…`); `None` for the system or an anonymised user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Display name (email, key name; empty for the system).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Actor {
    /// The platform itself.
    pub fn system() -> Self {
        Self {
            kind: ActorKind::System,
            id: None,
            name: String::new(),
        }
    }
    /// A user.
    pub fn user(id: UserId, name: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::User,
            id: Some(id.to_string()),
            name: name.into(),
        }
    }
    /// An API key.
    pub fn api_key(id: ApiKeyId, name: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::ApiKey,
            id: Some(id.to_string()),
            name: name.into(),
        }
    }
}

/// Visibility of an entry: team members see `team`; owners, admins and platform
/// admins also see `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditScope {
    /// Visible to every team member.
    Team,
    /// Visible to team owners/admins and platform admins.
    Admin,
}

impl AuditScope {
    /// Stored value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Team => "team",
            Self::Admin => "admin",
        }
    }
}

/// Outcome class of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditStatus {
    /// Something was created or succeeded.
    Success,
    /// Informational change.
    Info,
    /// Destructive change.
    Warning,
    /// Something failed.
    Error,
}

impl AuditStatus {
    /// Stored value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// One audit record to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Team the entry belongs to.
    pub team_id: TeamId,
    /// Who did it.
    pub actor: Actor,
    /// Kind of resource (`sandbox`, `api_key`, `member`, …).
    pub resource_type: String,
    /// The resource's id (prefixed where it has one).
    pub resource_id: Option<String>,
    /// What was done (`create`, `delete`, …).
    pub action: String,
    /// Visibility.
    pub scope: AuditScope,
    /// Outcome class.
    pub status: AuditStatus,
    /// Extra details.
    pub metadata: serde_json::Value,
}

impl AuditEntry {
    /// A team-scoped success entry with empty metadata; adjust fields as needed.
    pub fn new(
        team_id: TeamId,
        actor: Actor,
        resource_type: impl Into<String>,
        resource_id: Option<String>,
        action: impl Into<String>,
    ) -> Self {
        Self {
            team_id,
            actor,
            resource_type: resource_type.into(),
            resource_id,
            action: action.into(),
            scope: AuditScope::Team,
            status: AuditStatus::Success,
            metadata: serde_json::Value::Object(Default::default()),
        }
    }

    /// Sets the scope.
    pub fn scope(mut self, scope: AuditScope) -> Self {
        self.scope = scope;
        self
    }

    /// Sets the status.
    pub fn status(mut self, status: AuditStatus) -> Self {
        self.status = status;
        self
    }

    /// Sets the metadata.
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Id.
    pub id: AuditLogId,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// Keyset cursor: the `(created_at, id)` of the last record of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    /// Creation time of the last record seen.
    pub created_at: DateTime<Utc>,
    /// Id of the last record seen.
    pub id: AuditLogId,
}

/// A page request for audit records, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Team whose records are listed.
    pub team_id: TeamId,
    /// Scopes visible to the caller.
    pub scopes: Vec<AuditScope>,
    /// Only this resource type.
    pub resource_type: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Records strictly older than this cursor.
    pub before: Option<AuditCursor>,
    /// Page size (clamped to 1..=200 by the stores).
    pub limit: u32,
}

/// Default audit page size.
pub const DEFAULT_AUDIT_PAGE: u32 = 50;
/// Largest audit page size.
pub const MAX_AUDIT_PAGE: u32 = 200;

/// Where audit entries go.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Records one entry.
    async fn record(&self, entry: AuditEntry) -> Result<AuditRecord, RepoError>;
}
