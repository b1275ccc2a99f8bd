//! Startup and serving failures of the control plane.

use std::path::{Path, PathBuf};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Configuration is invalid.
    #[error(transparent)]
    Config(#[from] wrenn_core::config::ConfigError),
    /// The database could not be opened or migrated.
    #[error("database")]
    Database(#[from] wrenn_db::DbError),
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Secrets are missing or malformed.
    #[error("secrets: {0}")]
    Secrets(String),
    /// The event bus could not be reached.
    #[error("event bus")]
    EventBus(#[from] wrenn_core::events::EventBusError),
    /// An extension is misconfigured (e.g. a route clashes with a core route).
    #[error("extension {extension:?}: {message}")]
    Extension {
        /// The extension's name.
        extension: String,
        /// What is wrong.
        message: String,
    },
    /// The listener could not be bound or the server failed.
    #[error("http server: {0}")]
    Serve(std::io::Error),
    /// Any other startup failure.
    #[error("{0}")]
    Other(String),
}

impl ServerError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
