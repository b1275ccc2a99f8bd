//! The `account-cleanup` worker: permanently deletes accounts that were
//! soft-deleted more than [`RETENTION_DAYS`] days ago.
//!
//! The hard delete anonymises the user's audit trail (actor and member entries) and
//! removes the user row in one transaction; memberships and linked identities
//! cascade, and API keys, hosts and host tokens they created keep
//! `created_by = NULL`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};
use wrenn_core::repo::{RepoError, RepoResult};
use wrenn_extension::{Email, ServerContext, Worker};

/// How long a soft-deleted account is kept before it is removed for good.
pub const RETENTION_DAYS: i64 = 15;

/// How often the worker looks for expired accounts.
pub const CHECK_EVERY: Duration = Duration::from_secs(60 * 60);

/// The worker (runs once at start, then every [`CHECK_EVERY`]).
pub fn worker() -> Worker {
    Worker::periodic("account-cleanup", CHECK_EVERY, |ctx| async move {
        let cutoff = Utc::now() - chrono::Duration::days(RETENTION_DAYS);
        purge_expired_users(&ctx, cutoff).await?;
        Ok(())
    })
}

/// Hard-deletes every account soft-deleted before `cutoff`; returns how many were
/// removed. One account failing is logged and does not stop the others (it is
/// retried on the next tick).
#[tracing::instrument(skip(ctx))]
pub async fn purge_expired_users(ctx: &ServerContext, cutoff: DateTime<Utc>) -> RepoResult<usize> {
    let expired = ctx.store.list_users_deleted_before(cutoff).await?;
    let mut removed = 0;
    for user in expired {
        match ctx.store.hard_delete_user(user.id).await {
            Ok(()) => {
                removed += 1;
                info!(user_id = %user.id, "account permanently deleted");
                notify(ctx, &user.email).await;
            }
            // Removed meanwhile (another replica's worker): fine.
            Err(RepoError::NotFound { .. }) => {}
            Err(e) => warn!(user_id = %user.id, error = %e, "could not permanently delete account"),
        }
    }
    Ok(removed)
}

async fn notify(ctx: &ServerContext, to: &str) {
    let Some(mailer) = &ctx.mailer else { return };
    let email = Email {
        to: to.to_owned(),
        subject: "Your Wrenn account has been permanently deleted".into(),
        body: "Your Wrenn account and its personal data have now been permanently deleted.\n"
            .into(),
    };
    if let Err(e) = mailer.send(email).await {
        warn!(error = %e, "could not send the permanent deletion email");
    }
}
