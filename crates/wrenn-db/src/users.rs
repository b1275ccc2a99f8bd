//! [`UserRepo`] on both backends: accounts, OAuth links, admin flags and permissions,
//! soft and hard deletion.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use wrenn_core::id::{PermissionId, UserId};
use wrenn_core::model::{OAuthLink, User, UserStatus};
use wrenn_core::repo::{NewUser, RepoError, RepoResult, UserRepo};

use crate::backend::{Dialect, begin_write, for_each_backend, lock_identity, row_exists};
use crate::error::db;
use crate::rows::{OAuthRow, UserRow, convert_all};
use crate::timestamp::Ts;

/// Actor name written over an anonymised user's audit entries.
const DELETED_USER: &str = "deleted-user";

/// A `LIKE` pattern matching strings that start with `prefix` (lowercased, with `\`,
/// `%` and `_` escaped by `\`).
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.to_lowercase().chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

macro_rules! impl_user_repo {
    ($store:ty) => {
        #[async_trait]
        impl UserRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user.id))]
            async fn create_user(&self, user: NewUser) -> RepoResult<User> {
                let row: UserRow = sqlx::query_as(
                    "INSERT INTO users \
                       (id, email, password_hash, name, is_admin, status, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING *",
                )
                .bind(user.id.uuid())
                .bind(user.email.to_lowercase())
                .bind(user.password_hash.as_deref())
                .bind(&user.name)
                .bind(user.is_admin)
                .bind(user.status.as_str())
                .bind(Ts::now())
                .fetch_one(&self.pool)
                .await
                .map_err(db("user"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
            async fn get_user(&self, id: UserId) -> RepoResult<User> {
                let row: UserRow =
                    sqlx::query_as("SELECT * FROM users WHERE id = $1 AND deleted_at IS NULL")
                        .bind(id.uuid())
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db("user"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all)]
            async fn get_user_by_email(&self, email: &str) -> RepoResult<User> {
                let row: UserRow =
                    sqlx::query_as("SELECT * FROM users WHERE LOWER(email) = LOWER($1)")
                        .bind(email)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db("user"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
            async fn update_user_name(&self, id: UserId, name: &str) -> RepoResult<User> {
                let row: UserRow = sqlx::query_as(
                    "UPDATE users SET name = $2, updated_at = $3 \
                     WHERE id = $1 AND deleted_at IS NULL RETURNING *",
                )
                .bind(id.uuid())
                .bind(name)
                .bind(Ts::now())
                .fetch_one(&self.pool)
                .await
                .map_err(db("user"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
            async fn update_password(&self, id: UserId, password_hash: &str) -> RepoResult<()> {
                let done = sqlx::query(
                    "UPDATE users SET password_hash = $2, updated_at = $3 \
                     WHERE id = $1 AND deleted_at IS NULL",
                )
                .bind(id.uuid())
                .bind(password_hash)
                .bind(Ts::now())
                .execute(&self.pool)
                .await
                .map_err(db("user"))?;
                if done.rows_affected() == 0 {
                    return Err(RepoError::not_found("user"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
            async fn update_password_if(
                &self,
                id: UserId,
                expected: &str,
                password_hash: &str,
            ) -> RepoResult<bool> {
                let done = sqlx::query(
                    "UPDATE users SET password_hash = $3, updated_at = $4 \
                     WHERE id = $1 AND password_hash = $2 AND deleted_at IS NULL",
                )
                .bind(id.uuid())
                .bind(expected)
                .bind(password_hash)
                .bind(Ts::now())
                .execute(&self.pool)
                .await
                .map_err(db("user"))?;
                Ok(done.rows_affected() > 0)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
            async fn activate_user(
                &self,
                id: UserId,
                password_hash: Option<&str>,
            ) -> RepoResult<Option<User>> {
                let mut tx = begin_write!(self, "user")?;
                lock_identity!(tx, "user")?;
                let now = Ts::now();
                let activated: Option<UserRow> = sqlx::query_as(
                    "UPDATE users SET status = 'active', updated_at = $2 \
                     WHERE id = $1 AND status = 'inactive' AND deleted_at IS NULL \
                       AND COALESCE(password_hash, '') = $3 RETURNING *",
                )
                .bind(id.uuid())
                .bind(now)
                .bind(password_hash.unwrap_or_default())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("user"))?;
                let Some(row) = activated else {
                    return Ok(None);
                };
                let first: Option<UserRow> = sqlx::query_as(
                    "UPDATE users SET is_admin = TRUE, updated_at = $2 WHERE id = $1 \
                       AND NOT EXISTS (SELECT 1 FROM users o WHERE o.id <> $1 \
                         AND o.deleted_at IS NULL AND (o.is_admin OR o.status = 'active')) \
                     RETURNING *",
                )
                .bind(id.uuid())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("user"))?;
                tx.commit().await.map_err(db("user"))?;
                first.unwrap_or(row).try_into().map(Some)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id, %status))]
            async fn set_user_status(&self, id: UserId, status: UserStatus) -> RepoResult<User> {
                if status == UserStatus::Deleted {
                    return Err(RepoError::Invalid(
                        "a user is deleted with soft_delete_user, not by setting the status".into(),
                    ));
                }
                let row: UserRow = sqlx::query_as(
                    "UPDATE users SET status = $2, updated_at = $3 \
                     WHERE id = $1 AND deleted_at IS NULL RETURNING *",
                )
                .bind(id.uuid())
                .bind(status.as_str())
                .bind(Ts::now())
                .fetch_one(&self.pool)
                .await
                .map_err(db("user"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id, is_admin))]
            async fn set_user_admin(&self, id: UserId, is_admin: bool) -> RepoResult<User> {
                let mut tx = begin_write!(self, "user")?;
                if !is_admin {
                    // Lock the admin rows so two concurrent revocations cannot both see
                    // the other admin and leave none.
                    let sql = format!(
                        "SELECT id FROM users WHERE is_admin AND deleted_at IS NULL{}",
                        <$store as Dialect>::LOCK_ROWS
                    );
                    let admins: Vec<uuid::Uuid> = sqlx::query_scalar(&sql)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db("user"))?;
                    if admins == [id.uuid()] {
                        return Err(RepoError::Conflict(
                            "cannot revoke the last platform admin".into(),
                        ));
                    }
                }
                let row: UserRow = sqlx::query_as(
                    "UPDATE users SET is_admin = $2, updated_at = $3 \
                     WHERE id = $1 AND deleted_at IS NULL RETURNING *",
                )
                .bind(id.uuid())
                .bind(is_admin)
                .bind(Ts::now())
                .fetch_one(&mut *tx)
                .await
                .map_err(db("user"))?;
                tx.commit().await.map_err(db("user"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
            async fn soft_delete_user(&self, id: UserId) -> RepoResult<()> {
                let mut tx = begin_write!(self, "user")?;
                // Serialised with member additions: a team never keeps members
                // without its owner.
                lock_identity!(tx, "user")?;
                let owns_members: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM teams t JOIN users_teams ut ON ut.team_id = t.id \
                     WHERE ut.user_id = $1 AND ut.role = 'owner' AND t.deleted_at IS NULL \
                       AND EXISTS (SELECT 1 FROM users_teams o \
                                   WHERE o.team_id = t.id AND o.user_id <> $1)",
                )
                .bind(id.uuid())
                .fetch_one(&mut *tx)
                .await
                .map_err(db("team"))?;
                if owns_members > 0 {
                    return Err(RepoError::Conflict(
                        "the user owns a team with other members".into(),
                    ));
                }
                let done = sqlx::query(
                    "UPDATE users SET status = 'deleted', deleted_at = $2, updated_at = $2 \
                     WHERE id = $1 AND deleted_at IS NULL",
                )
                .bind(id.uuid())
                .bind(Ts::now())
                .execute(&mut *tx)
                .await
                .map_err(db("user"))?;
                if done.rows_affected() == 0 && !row_exists!(&mut *tx, "users", id.uuid())? {
                    return Err(RepoError::not_found("user"));
                }
                sqlx::query("DELETE FROM team_api_keys WHERE created_by = $1")
                    .bind(id.uuid())
                    .execute(&mut *tx)
                    .await
                    .map_err(db("api key"))?;
                tx.commit().await.map_err(db("user"))
            }

            #[tracing::instrument(level = "debug", skip_all)]
            async fn search_users_by_email_prefix(
                &self,
                prefix: &str,
                limit: u32,
            ) -> RepoResult<Vec<User>> {
                let rows: Vec<UserRow> = sqlx::query_as(
                    "SELECT * FROM users \
                     WHERE deleted_at IS NULL AND LOWER(email) LIKE $1 ESCAPE '\\' \
                     ORDER BY email, id LIMIT $2",
                )
                .bind(like_prefix(prefix))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db("user"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn list_users(&self, limit: u32, offset: u32) -> RepoResult<Vec<User>> {
                let rows: Vec<UserRow> = sqlx::query_as(
                    "SELECT * FROM users ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2",
                )
                .bind(i64::from(limit))
                .bind(i64::from(offset))
                .fetch_all(&self.pool)
                .await
                .map_err(db("user"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn count_users(&self) -> RepoResult<i64> {
                sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE deleted_at IS NULL")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("user"))
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn list_users_deleted_before(
                &self,
                cutoff: DateTime<Utc>,
            ) -> RepoResult<Vec<User>> {
                let rows: Vec<UserRow> = sqlx::query_as(
                    "SELECT * FROM users WHERE deleted_at IS NOT NULL AND deleted_at < $1 \
                     ORDER BY deleted_at, id",
                )
                .bind(Ts::from(cutoff))
                .fetch_all(&self.pool)
                .await
                .map_err(db("user"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
            async fn hard_delete_user(&self, id: UserId) -> RepoResult<()> {
                let wire_id = id.to_string();
                let mut tx = begin_write!(self, "user")?;
                sqlx::query(
                    "UPDATE audit_logs SET actor_id = NULL, actor_name = $2 WHERE actor_id = $1",
                )
                .bind(&wire_id)
                .bind(DELETED_USER)
                .execute(&mut *tx)
                .await
                .map_err(db("audit log"))?;
                let sql = format!(
                    "UPDATE audit_logs SET resource_id = NULL, metadata = {} \
                     WHERE resource_type = 'member' AND resource_id = $1",
                    <$store as Dialect>::json_remove_key("metadata", "email")
                );
                sqlx::query(&sql)
                    .bind(&wire_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("audit log"))?;
                // Memberships, OAuth links and admin permissions cascade; API keys,
                // hosts and host tokens keep their rows with created_by = NULL.
                let done = sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(id.uuid())
                    .execute(&mut *tx)
                    .await
                    .map_err(db("user"))?;
                if done.rows_affected() == 0 {
                    return Err(RepoError::not_found("user"));
                }
                tx.commit().await.map_err(db("user"))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %link.user_id, provider = %link.provider))]
            async fn link_oauth(&self, link: OAuthLink) -> RepoResult<()> {
                sqlx::query(
                    "INSERT INTO oauth_providers (provider, provider_id, user_id, email, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&link.provider)
                .bind(&link.provider_id)
                .bind(link.user_id.uuid())
                .bind(&link.email)
                .bind(Ts::from(link.created_at))
                .execute(&self.pool)
                .await
                .map_err(db("oauth link"))?;
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn get_oauth_link(
                &self,
                provider: &str,
                provider_id: &str,
            ) -> RepoResult<Option<OAuthLink>> {
                let row: Option<OAuthRow> = sqlx::query_as(
                    "SELECT * FROM oauth_providers WHERE provider = $1 AND provider_id = $2",
                )
                .bind(provider)
                .bind(provider_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("oauth link"))?;
                Ok(row.map(OAuthLink::from))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user, permission))]
            async fn grant_admin_permission(&self, user: UserId, permission: &str) -> RepoResult<()> {
                let done = sqlx::query(
                    "INSERT INTO admin_permissions (id, user_id, permission, created_at) \
                     SELECT $1, u.id, $3, $4 FROM users u WHERE u.id = $2 \
                     ON CONFLICT (user_id, permission) DO NOTHING",
                )
                .bind(PermissionId::new().uuid())
                .bind(user.uuid())
                .bind(permission)
                .bind(Ts::now())
                .execute(&self.pool)
                .await
                .map_err(db("admin permission"))?;
                if done.rows_affected() == 0 && !row_exists!(&self.pool, "users", user.uuid())? {
                    return Err(RepoError::not_found("user"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user))]
            async fn list_admin_permissions(&self, user: UserId) -> RepoResult<Vec<String>> {
                sqlx::query_scalar(
                    "SELECT permission FROM admin_permissions WHERE user_id = $1 \
                     ORDER BY permission",
                )
                .bind(user.uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(db("admin permission"))
            }
        }
    };
}

for_each_backend!(impl_user_repo);

#[cfg(test)]
mod tests {
    use super::like_prefix;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_prefix("Al_i%ce\\"), "al\\_i\\%ce\\\\%");
        assert_eq!(like_prefix(""), "%");
    }
}
