//! The audit log: `GET /v1/audit-logs` (a team's trail) and the shared page logic
//! behind `GET /v1/admin/audit-logs` (the platform's trail).
//!
//! Pages are newest first and keyset-paginated on `(created_at, id)`: a full page
//! carries `next_before` / `next_before_id`, which the client sends back as
//! `before` / `before_id` for the next one. `next_before` has microsecond precision
//! (the stored precision), so no entry is skipped between pages. `resource_type` and
//! `action` may be repeated to match any of several values.

use axum::extract::State;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::{
    AuditCursor, AuditQuery, AuditRecord, AuditScope, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE,
};
use wrenn_core::auth::Role;
use wrenn_core::id::{AuditLogId, TeamId};
use wrenn_extension::extract::{Json, Query};
use wrenn_extension::{ApiError, ApiResult, ServerContext, UserAuth};

use super::tags;

/// How many values `resource_type` (and, separately, `action`) may be given.
const MAX_FILTER_VALUES: usize = 10;
/// How many (resource_type, action) combinations one page may combine.
const MAX_FILTER_COMBINATIONS: usize = 25;
/// Longest accepted filter value.
const MAX_FILTER_LEN: usize = 64;

/// One audit entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditItem {
    /// `log-…`.
    #[schema(value_type = String)]
    pub id: AuditLogId,
    /// `user`, `api_key` or `system`.
    pub actor_type: &'static str,
    /// `usr-…` or `key-…`; absent for the system and for deleted users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// Email or key name; absent for the system.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_name: Option<String>,
    /// `sandbox`, `api_key`, `member`, `team`, …
    pub resource_type: String,
    /// The resource's id or name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// `create`, `delete`, …
    pub action: String,
    /// `team` or `admin`.
    pub scope: &'static str,
    /// `success`, `info`, `warning` or `error`.
    pub status: &'static str,
    /// Details; absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

impl From<AuditRecord> for AuditItem {
    fn from(r: AuditRecord) -> Self {
        let e = r.entry;
        let metadata = match e.metadata {
            serde_json::Value::Null => None,
            serde_json::Value::Object(m) if m.is_empty() => None,
            other => Some(other),
        };
        Self {
            id: r.id,
            actor_type: e.actor.kind.as_str(),
            actor_id: e.actor.id,
            actor_name: Some(e.actor.name).filter(|n| !n.is_empty()),
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            action: e.action,
            scope: e.scope.as_str(),
            status: e.status.as_str(),
            metadata,
            created_at: r.created_at,
        }
    }
}

/// One page of the audit log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditPage {
    /// Entries, newest first.
    pub items: Vec<AuditItem>,
    /// Pass as `before` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
    /// Pass as `before_id` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub next_before_id: Option<AuditLogId>,
}

/// Query parameters of the audit-log routes (documentation only: they are parsed
/// from the raw pairs so that filters may repeat).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditParams {
    /// Only entries older than this (RFC3339); comes with `before_id`.
    before: Option<String>,
    /// Only entries older than this one (`log-…`); comes with `before`.
    before_id: Option<String>,
    /// Page size: default 50, at most 200 (larger values are clamped).
    limit: Option<i64>,
    /// Only this resource type (repeatable: any of them).
    resource_type: Option<Vec<String>>,
    /// Only this action (repeatable: any of them).
    action: Option<Vec<String>>,
}

/// The parsed query.
#[derive(Debug, Default)]
struct Filter {
    before: Option<AuditCursor>,
    limit: u32,
    resource_types: Vec<String>,
    actions: Vec<String>,
}

fn single<'a>(name: &str, slot: &mut Option<&'a str>, value: &'a str) -> Result<(), ApiError> {
    if slot.replace(value).is_some() {
        return Err(ApiError::bad_request(format!(
            "{name} may be given only once"
        )));
    }
    Ok(())
}

fn filter_value(name: &str, list: &mut Vec<String>, value: &str) -> Result<(), ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(());
    }
    if value.chars().count() > MAX_FILTER_LEN || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{name} values are at most {MAX_FILTER_LEN} printable characters"
        )));
    }
    if list.len() >= MAX_FILTER_VALUES {
        return Err(ApiError::bad_request(format!(
            "{name} may be given at most {MAX_FILTER_VALUES} times"
        )));
    }
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
    Ok(())
}

fn parse(pairs: &[(String, String)]) -> Result<Filter, ApiError> {
    let (mut before, mut before_id, mut limit) = (None, None, None);
    let mut filter = Filter::default();
    for (k, v) in pairs {
        match k.as_str() {
            "before" => single("before", &mut before, v)?,
            "before_id" => single("before_id", &mut before_id, v)?,
            "limit" => single("limit", &mut limit, v)?,
            "resource_type" => filter_value("resource_type", &mut filter.resource_types, v)?,
            "action" => filter_value("action", &mut filter.actions, v)?,
            _ => {}
        }
    }
    filter.limit = match limit.map(|l| l.trim().parse::<i64>()) {
        None => DEFAULT_AUDIT_PAGE,
        Some(Ok(n)) if n > 0 => u32::try_from(n)
            .unwrap_or(MAX_AUDIT_PAGE)
            .min(MAX_AUDIT_PAGE),
        Some(_) => {
            return Err(ApiError::bad_request(
                "limit must be a positive integer (at most 200)",
            ));
        }
    };
    filter.before = match (before, before_id) {
        (None, None) => None,
        (Some(at), Some(id)) => {
            let created_at = DateTime::parse_from_rfc3339(at.trim())
                .map_err(|e| {
                    ApiError::bad_request(format!("before must be an RFC3339 timestamp: {e}"))
                })?
                .with_timezone(&Utc);
            let id = id.trim().parse::<AuditLogId>()?;
            Some(AuditCursor { created_at, id })
        }
        _ => {
            return Err(ApiError::bad_request(
                "before and before_id must be given together (from next_before and next_before_id)",
            ));
        }
    };
    let combinations = filter.resource_types.len().max(1) * filter.actions.len().max(1);
    if combinations > MAX_FILTER_COMBINATIONS {
        return Err(ApiError::bad_request(format!(
            "too many resource_type × action combinations (at most {MAX_FILTER_COMBINATIONS})"
        )));
    }
    Ok(filter)
}

/// One page of `team`'s entries in `scopes`, filtered by the query `pairs`.
pub(super) async fn page(
    ctx: &ServerContext,
    team: TeamId,
    scopes: Vec<AuditScope>,
    pairs: &[(String, String)],
) -> ApiResult<AuditPage> {
    let filter = parse(pairs)?;
    let options = |values: &[String]| -> Vec<Option<String>> {
        if values.is_empty() {
            vec![None]
        } else {
            values.iter().cloned().map(Some).collect()
        }
    };
    // The store filters on one value per field; several values run one keyset query
    // per combination and merge them, which gives exactly the combined page.
    let mut records = Vec::new();
    for resource_type in options(&filter.resource_types) {
        for action in options(&filter.actions) {
            let query = AuditQuery {
                team_id: team,
                scopes: scopes.clone(),
                resource_type: resource_type.clone(),
                action,
                before: filter.before,
                limit: filter.limit,
            };
            records.extend(ctx.store.list_audit_logs(&query).await?);
        }
    }
    records.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
    records.truncate(filter.limit as usize);
    let full = records.len() == filter.limit as usize;
    let (next_before, next_before_id) = match records.last() {
        Some(last) if full => (
            Some(last.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)),
            Some(last.id),
        ),
        _ => (None, None),
    };
    Ok(AuditPage {
        items: records.into_iter().map(AuditItem::from).collect(),
        next_before,
        next_before_id,
    })
}

/// The token's team audit log. Members see team-scoped entries; owners, admins and
/// platform admins also see admin-scoped ones (membership changes).
#[utoipa::path(get, path = "/v1/audit-logs", tag = tags::AUDIT, security(("bearer" = [])), params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400), (status = 401)))]
async fn list(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<AuditPage>> {
    let mut scopes = vec![AuditScope::Team];
    if matches!(auth.user.role, Role::Owner | Role::Admin) || auth.user.is_admin {
        scopes.push(AuditScope::Admin);
    }
    Ok(Json(page(&ctx, auth.team_id, scopes, &pairs).await?))
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limits_default_clamp_and_refuse_garbage() {
        assert_eq!(parse(&[]).unwrap().limit, DEFAULT_AUDIT_PAGE);
        assert_eq!(parse(&pairs(&[("limit", "7")])).unwrap().limit, 7);
        assert_eq!(
            parse(&pairs(&[("limit", "1000")])).unwrap().limit,
            MAX_AUDIT_PAGE
        );
        assert_eq!(
            parse(&pairs(&[("limit", "99999999999999")])).unwrap().limit,
            MAX_AUDIT_PAGE
        );
        for bad in ["0", "-1", "abc", "", "1.5"] {
            assert!(parse(&pairs(&[("limit", bad)])).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cursor_needs_both_halves_and_valid_values() {
        let id = AuditLogId::new().to_string();
        let ok = parse(&pairs(&[
            ("before", "2026-04-01T12:00:00.123456Z"),
            ("before_id", &id),
        ]))
        .unwrap();
        assert_eq!(ok.before.unwrap().id.to_string(), id);
        assert!(parse(&pairs(&[("before", "2026-04-01T12:00:00Z")])).is_err());
        assert!(parse(&pairs(&[("before_id", &id)])).is_err());
        assert!(parse(&pairs(&[("before", "yesterday"), ("before_id", &id)])).is_err());
        assert!(
            parse(&pairs(&[
                ("before", "2026-04-01T12:00:00Z"),
                ("before_id", "cl-1")
            ]))
            .is_err()
        );
    }

    #[test]
    fn filters_repeat_but_are_bounded() {
        let f = parse(&pairs(&[
            ("resource_type", "member"),
            ("resource_type", "team"),
            ("action", "add"),
        ]))
        .unwrap();
        assert_eq!(f.resource_types, ["member", "team"]);
        assert_eq!(f.actions, ["add"]);
        let many: Vec<_> = (0..11)
            .map(|i| ("action".to_string(), format!("a{i}")))
            .collect();
        assert!(parse(&many).is_err());
        let mut combos: Vec<_> = (0..6)
            .map(|i| ("action".to_string(), format!("a{i}")))
            .collect();
        combos.extend((0..6).map(|i| ("resource_type".to_string(), format!("r{i}"))));
        assert!(parse(&combos).is_err());
        assert!(parse(&pairs(&[("action", &"x".repeat(65))])).is_err());
    }
}
