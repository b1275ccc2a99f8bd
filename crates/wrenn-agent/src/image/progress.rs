//! Progress of a build: one line per phase with the time since the build began.

use std::time::{Duration, Instant};

/// Receives the phases of a build.
pub trait Progress: Send + Sync {
    /// A new phase began (`"bootstrap: download packages"`), `elapsed` after the start.
    fn phase(&self, phase: &str, elapsed: Duration);
    /// The build finished after `total`.
    fn done(&self, summary: &str, total: Duration);
}

/// Reports through `tracing` at info level (what `wrenn dev`, `wrenn image build` and
/// the agent print on the terminal).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogProgress;

impl Progress for LogProgress {
    fn phase(&self, phase: &str, elapsed: Duration) {
        tracing::info!(
            elapsed = %format!("{:.1}s", elapsed.as_secs_f64()),
            "image build: {phase}"
        );
    }

    fn done(&self, summary: &str, total: Duration) {
        tracing::info!(
            total = %format!("{:.1}s", total.as_secs_f64()),
            "image build: {summary}"
        );
    }
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: Duration) {}
    fn done(&self, _: &str, _: Duration) {}
}

/// A [`Progress`] with the start time attached.
pub(crate) struct Clock<'a> {
    start: Instant,
    sink: &'a dyn Progress,
}

impl<'a> Clock<'a> {
    pub(crate) fn start(sink: &'a dyn Progress) -> Self {
        Self {
            start: Instant::now(),
            sink,
        }
    }

    pub(crate) fn phase(&self, phase: &str) {
        self.sink.phase(phase, self.start.elapsed());
    }

    pub(crate) fn done(&self, summary: &str) {
        self.sink.done(summary, self.start.elapsed());
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The phase a bootstrap tool's `I: …` line belongs to; `None` for other lines.
pub(crate) fn bootstrap_phase(line: &str) -> Option<&'static str> {
    let rest = line.strip_prefix("I: ")?;
    if rest.starts_with("installing remaining") {
        // mmdebstrap: the packages beyond the essential set, the longest step.
        return Some("install the remaining packages");
    }
    let word = rest.split_whitespace().next()?;
    Some(match word {
        "Retrieving" | "Validating" | "Checking" | "Valid" | "Resolving" | "Target" | "Chosen"
        | "downloading" => "download packages",
        "Extracting" | "extracting" => "extract packages",
        "Installing" | "installing" => "install core packages",
        "Unpacking" | "Unpacked" => "unpack packages",
        "Configuring" | "Configured" => "configure packages",
        "Base" | "success" => "base system installed",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::bootstrap_phase;

    #[test]
    fn bootstrap_lines_map_to_phases() {
        assert_eq!(
            bootstrap_phase("I: Validating adduser 3.134"),
            Some("download packages")
        );
        assert_eq!(
            bootstrap_phase("I: Configuring ca-certificates..."),
            Some("configure packages")
        );
        assert_eq!(
            bootstrap_phase("I: installing remaining packages inside the chroot..."),
            Some("install the remaining packages")
        );
        assert_eq!(bootstrap_phase("W: something"), None);
        assert_eq!(bootstrap_phase("Unpacking x"), None);
    }
}
