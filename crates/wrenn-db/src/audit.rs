//! [`AuditSink`] and [`AuditRepo`] on both backends: writing the audit trail and
//! reading it back a keyset page at a time.

use async_trait::async_trait;
use sqlx::types::Json;
use wrenn_core::audit::{
    AuditEntry, AuditQuery, AuditRecord, AuditSink, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE,
};
use wrenn_core::id::AuditLogId;
use wrenn_core::repo::{AuditRepo, RepoError, RepoResult};

use crate::backend::{Dialect, for_each_backend, push_in};
use crate::error::db;
use crate::rows::{AuditRow, convert_all};
use crate::timestamp::Ts;

/// The page size a query asks for, clamped to `1..=MAX_AUDIT_PAGE` (0 = default).
fn page_size(requested: u32) -> i64 {
    let size = match requested {
        0 => DEFAULT_AUDIT_PAGE,
        n => n.min(MAX_AUDIT_PAGE),
    };
    i64::from(size)
}

macro_rules! impl_audit {
    ($store:ty) => {
        #[async_trait]
        impl AuditSink for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %entry.team_id, resource_type = %entry.resource_type, action = %entry.action))]
            async fn record(&self, entry: AuditEntry) -> Result<AuditRecord, RepoError> {
                let metadata = match &entry.metadata {
                    serde_json::Value::Null => serde_json::Value::Object(Default::default()),
                    other => other.clone(),
                };
                let row: AuditRow = sqlx::query_as(
                    "INSERT INTO audit_logs (id, team_id, actor_type, actor_id, actor_name, \
                       resource_type, resource_id, action, scope, status, metadata, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *",
                )
                .bind(AuditLogId::new().uuid())
                .bind(entry.team_id.uuid())
                .bind(entry.actor.kind.as_str())
                .bind(entry.actor.id.as_deref())
                .bind(&entry.actor.name)
                .bind(&entry.resource_type)
                .bind(entry.resource_id.as_deref())
                .bind(&entry.action)
                .bind(entry.scope.as_str())
                .bind(entry.status.as_str())
                .bind(Json(metadata))
                .bind(Ts::now())
                .fetch_one(&self.pool)
                .await
                .map_err(db("audit log"))?;
                row.try_into()
            }
        }

        #[async_trait]
        impl AuditRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %query.team_id, limit = query.limit))]
            async fn list_audit_logs(&self, query: &AuditQuery) -> RepoResult<Vec<AuditRecord>> {
                if query.scopes.is_empty() {
                    return Ok(Vec::new());
                }
                let mut qb = sqlx::QueryBuilder::<<$store as Dialect>::Db>::new(
                    "SELECT * FROM audit_logs WHERE team_id = ",
                );
                qb.push_bind(query.team_id.uuid()).push(" AND scope IN ");
                push_in!(qb, query.scopes.iter().map(|s| s.as_str()));
                if let Some(resource_type) = &query.resource_type {
                    qb.push(" AND resource_type = ").push_bind(resource_type.as_str());
                }
                if let Some(action) = &query.action {
                    qb.push(" AND action = ").push_bind(action.as_str());
                }
                if let Some(cursor) = query.before {
                    // Keyset: strictly older than the last record of the previous page.
                    qb.push(" AND (created_at, id) < (")
                        .push_bind(Ts::from(cursor.created_at))
                        .push(", ")
                        .push_bind(cursor.id.uuid())
                        .push(")");
                }
                qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                    .push_bind(page_size(query.limit));
                let rows: Vec<AuditRow> = qb
                    .build_query_as()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("audit log"))?;
                convert_all(rows)
            }
        }
    };
}

for_each_backend!(impl_audit);

#[cfg(test)]
mod tests {
    use super::page_size;

    #[test]
    fn page_sizes_are_clamped() {
        assert_eq!(page_size(0), 50);
        assert_eq!(page_size(1), 1);
        assert_eq!(page_size(200), 200);
        assert_eq!(page_size(10_000), 200);
    }
}
