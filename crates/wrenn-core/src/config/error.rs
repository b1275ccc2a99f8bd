//! [`ConfigError`]: why a configuration could not be built, always naming the
//! variable at fault.

/// Why the configuration could not be built. Every variant names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable has a value that cannot be used.
    #[error("invalid {var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// The value (truncated, with any URL password redacted).
        value: String,
        /// What is expected.
        reason: String,
    },
    /// A secret variable has a value that cannot be used; the value is not shown.
    #[error("invalid {var}: {reason} (value not shown)")]
    InvalidSecret {
        /// The variable.
        var: &'static str,
        /// What is expected.
        reason: String,
    },
    /// A variable is set but another one that it needs is not.
    #[error("{var} is set but {missing} is not: set both or neither")]
    Incomplete {
        /// The variable that is set.
        var: &'static str,
        /// The variable that is missing.
        missing: &'static str,
    },
}
