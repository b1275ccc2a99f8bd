//! [`DbError`] for setup calls and the one place where sqlx errors become
//! [`RepoError`]s.

use sqlx::error::ErrorKind;
use wrenn_core::repo::RepoError;

/// Failure to open, configure or migrate a store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names no supported backend.
    #[error(
        "unsupported database URL scheme {scheme:?}: expected postgres://, postgresql://, \
         sqlite:<path>, sqlite://<path> or sqlite::memory:"
    )]
    UnsupportedUrl {
        /// The scheme that was given (never the whole URL, which may hold a password).
        scheme: String,
    },
    /// The URL or options could not be parsed, or the server refused the connection.
    #[error("cannot connect to {backend}")]
    Connect {
        /// `postgres` or `sqlite`.
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("migrating the {backend} schema failed")]
    Migrate {
        /// `postgres` or `sqlite`.
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// Any other database failure during setup.
    #[error("database error")]
    Sqlx(#[from] sqlx::Error),
    /// A filesystem failure during setup (e.g. creating the SQLite file's directory).
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

impl From<DbError> for RepoError {
    fn from(err: DbError) -> Self {
        RepoError::Backend(wrenn_core::report::error_chain(&err))
    }
}

/// SQLite's extended code for a `RAISE(ABORT, …)` in a trigger (`SQLITE_CONSTRAINT_TRIGGER`).
const SQLITE_CONSTRAINT_TRIGGER: &str = "1811";
/// Postgres' `restrict_violation`, raised by the immutable-slug trigger.
const PG_RESTRICT_VIOLATION: &str = "23001";

/// Maps a sqlx error to the repository error taxonomy. `entity` names what the
/// statement was about (used for `NotFound` and in messages).
pub(crate) fn repo_err(entity: &'static str, err: sqlx::Error) -> RepoError {
    match err {
        sqlx::Error::RowNotFound => RepoError::not_found(entity),
        sqlx::Error::ColumnDecode { index, source } => {
            RepoError::Corrupt(format!("{entity}: column {index}: {source}"))
        }
        sqlx::Error::Decode(source) => RepoError::Corrupt(format!("{entity}: {source}")),
        sqlx::Error::Encode(source) => RepoError::Invalid(format!("{entity}: {source}")),
        sqlx::Error::Database(db) => {
            let message = db.message().to_owned();
            match db.kind() {
                ErrorKind::UniqueViolation => {
                    RepoError::Conflict(format!("{entity} already exists ({message})"))
                }
                ErrorKind::ForeignKeyViolation => RepoError::Invalid(format!(
                    "{entity} refers to a row that does not exist ({message})"
                )),
                ErrorKind::NotNullViolation | ErrorKind::CheckViolation => {
                    RepoError::Invalid(format!("{entity}: {message}"))
                }
                _ => match db.code().as_deref() {
                    // Our triggers: reserved platform template names, immutable slugs.
                    Some(SQLITE_CONSTRAINT_TRIGGER | PG_RESTRICT_VIOLATION) => {
                        RepoError::Conflict(message)
                    }
                    Some(code) if server_going_away(code) => {
                        RepoError::Unavailable(format!("{entity}: {message}"))
                    }
                    _ => RepoError::Backend(format!("{entity}: {message}")),
                },
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => RepoError::Unavailable(format!("{entity}: {err}")),
        other => RepoError::Backend(format!("{entity}: {other}")),
    }
}

/// Whether a PostgreSQL error code says the server is going away or cannot take
/// connections now: class 08 (connection exception) and `admin_shutdown`,
/// `crash_shutdown`, `cannot_connect_now` (57P01–57P03).
fn server_going_away(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// `map_err` adaptor: `.map_err(db("team"))`.
pub(crate) fn db(entity: &'static str) -> impl FnOnce(sqlx::Error) -> RepoError {
    move |err| repo_err(entity, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_or_restarting_database_is_unavailable() {
        for err in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            assert!(
                matches!(repo_err("team", err), RepoError::Unavailable(_)),
                "unavailable"
            );
        }
        assert!(server_going_away("57P01") && server_going_away("08006"));
        assert!(!server_going_away("23505") && !server_going_away("57014"));
    }

    #[test]
    fn missing_rows_are_not_found() {
        assert!(matches!(
            repo_err("team", sqlx::Error::RowNotFound),
            RepoError::NotFound { entity: "team" }
        ));
    }

    #[test]
    fn decode_failures_are_corrupt() {
        let err = sqlx::Error::Decode("bad".into());
        assert!(matches!(repo_err("user", err), RepoError::Corrupt(_)));
    }

    #[test]
    fn other_failures_are_backend_errors() {
        let err = sqlx::Error::Protocol("unexpected message".into());
        assert!(matches!(repo_err("user", err), RepoError::Backend(_)));
    }
}
