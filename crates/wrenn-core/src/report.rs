//! Rendering an error for a person: the error and each of its causes, joined by `: `.
//!
//! Error types across the workspace keep their cause as a `#[source]` instead of
//! repeating it in their message; whoever shows an error to a person (a binary's last
//! words, a log line, a message that crosses a wire) renders it with [`error_chain`].
//!
//! ```
//! use wrenn_core::report::error_chain;
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("reading the config")]
//! struct ReadConfig(#[source] std::io::Error);
//!
//! let e = ReadConfig(std::io::Error::other("permission denied"));
//! assert_eq!(error_chain(&e), "reading the config: permission denied");
//! ```

/// `e` and its sources, outermost first, joined by `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_cause_is_named_once_outermost_first() {
        let e = Outer(Middle(std::io::Error::other("inner")));
        assert_eq!(error_chain(&e), "outer: middle: inner");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }
}
