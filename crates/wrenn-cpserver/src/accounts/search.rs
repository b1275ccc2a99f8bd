//! Finding users by email prefix, to add them to a team. The prefix must include the
//! `@`, so the search cannot be used to list accounts by their first letters.

use wrenn_core::model::{User, UserStatus};
use wrenn_core::repo::RepoError;
use wrenn_core::validate::MAX_EMAIL_LEN;
use wrenn_extension::ApiError;
use wrenn_extension::ServerContext;

/// Shortest prefix accepted, in characters.
pub const MIN_PREFIX_LEN: usize = 3;
/// Most matches returned.
pub const MAX_RESULTS: usize = 10;
/// Rows read from the store before inactive accounts are filtered out.
const FETCH_LIMIT: u32 = 50;

/// Why a search was refused.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Shorter than [`MIN_PREFIX_LEN`].
    #[error("email must be a prefix of at least {MIN_PREFIX_LEN} characters")]
    TooShort,
    /// No `@` in the prefix.
    #[error("email must be a prefix that includes the '@'")]
    NoAt,
    /// Longer than an email can be.
    #[error("email prefix is too long")]
    TooLong,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] RepoError),
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Store(e) => e.into(),
            SearchError::TooShort | SearchError::NoAt | SearchError::TooLong => {
                ApiError::bad_request(e.to_string())
            }
        }
    }
}

/// Checks a search prefix: trimmed, lowercased, 3 characters at least, with an `@`.
pub fn check_prefix(prefix: &str) -> Result<String, SearchError> {
    let prefix = prefix.trim().to_lowercase();
    let len = prefix.chars().count();
    if len < MIN_PREFIX_LEN {
        return Err(SearchError::TooShort);
    }
    if !prefix.contains('@') {
        return Err(SearchError::NoAt);
    }
    if len > MAX_EMAIL_LEN {
        return Err(SearchError::TooLong);
    }
    Ok(prefix)
}

/// Active users whose email starts with `prefix` (at most [`MAX_RESULTS`], by email).
pub async fn by_email_prefix(ctx: &ServerContext, prefix: &str) -> Result<Vec<User>, SearchError> {
    let prefix = check_prefix(prefix)?;
    let users = ctx
        .store
        .search_users_by_email_prefix(&prefix, FETCH_LIMIT)
        .await?;
    Ok(users
        .into_iter()
        .filter(|u| u.status == UserStatus::Active)
        .take(MAX_RESULTS)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_include_the_at_and_three_characters() {
        assert_eq!(check_prefix(" Ada@E ").unwrap(), "ada@e");
        assert!(matches!(check_prefix("a@"), Err(SearchError::TooShort)));
        assert!(matches!(check_prefix("adam"), Err(SearchError::NoAt)));
        let long = format!("a@{}", "b".repeat(MAX_EMAIL_LEN));
        assert!(matches!(check_prefix(&long), Err(SearchError::TooLong)));
    }
}
