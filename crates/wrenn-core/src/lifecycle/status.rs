//! Sandbox and host statuses and the table of allowed sandbox transitions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Returned when a status string is not one of the known wire values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} status {value:?}; expected one of: {expected}")]
pub struct UnknownStatus {
    /// `sandbox` or `host`.
    pub kind: &'static str,
    /// The offending value.
    pub value: String,
    /// Comma-separated list of valid values.
    pub expected: &'static str,
}

/// Status of a sandbox, as stored and as sent on the wire (SDK 0.3.0 values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// Row inserted, not yet scheduled (legacy; new rows start in `starting`).
    Pending,
    /// The agent is creating the sandbox.
    Starting,
    /// Up and accepting exec/file calls.
    Running,
    /// A pause is in flight.
    Pausing,
    /// Frozen with its memory kept.
    Paused,
    /// A snapshot into a template is in flight.
    Snapshotting,
    /// A resume is in flight.
    Resuming,
    /// A destroy is in flight.
    Stopping,
    /// Persisted to disk with no memory held; resumable.
    Hibernated,
    /// Destroyed; the row is kept (terminal).
    Stopped,
    /// Its host stopped answering; may come back.
    Missing,
    /// An operation failed irrecoverably (terminal).
    Error,
}

impl SandboxStatus {
    /// Every status, in wire order.
    pub const ALL: [SandboxStatus; 12] = [
        Self::Pending,
        Self::Starting,
        Self::Running,
        Self::Pausing,
        Self::Paused,
        Self::Snapshotting,
        Self::Resuming,
        Self::Stopping,
        Self::Hibernated,
        Self::Stopped,
        Self::Missing,
        Self::Error,
    ];

    const EXPECTED: &'static str = "pending, starting, running, pausing, paused, snapshotting, resuming, stopping, hibernated, stopped, missing, error";

    /// The wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Snapshotting => "snapshotting",
            Self::Resuming => "resuming",
            Self::Stopping => "stopping",
            Self::Hibernated => "hibernated",
            Self::Stopped => "stopped",
            Self::Missing => "missing",
            Self::Error => "error",
        }
    }

    /// An operation is in flight (a background task owns the row).
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Pausing | Self::Resuming | Self::Stopping | Self::Snapshotting
        )
    }

    /// Nothing more will happen to this sandbox.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Error)
    }

    /// The sandbox holds resources on its host (counted by the scheduler and
    /// destroyed on team deletion).
    pub const fn is_active(self) -> bool {
        !self.is_terminal()
    }

    /// Whether the lifecycle may move a sandbox from `self` to `to`.
    ///
    /// This is the single transition table: every conditional update in the
    /// lifecycle service, the event consumer and the host monitor is one of these edges.
    pub fn can_transition_to(self, to: SandboxStatus) -> bool {
        use SandboxStatus::*;
        match (self, to) {
            // Destroy is allowed from every non-terminal state.
            (from, Stopping) => !from.is_terminal() && from != Stopping,
            (Stopping, Stopped) => true,
            // Host went away: anything live may go missing.
            (from, Missing) => matches!(
                from,
                Pending
                    | Starting
                    | Running
                    | Pausing
                    | Paused
                    | Resuming
                    | Snapshotting
                    | Hibernated
            ),
            (Missing, to) => matches!(to, Running | Paused | Hibernated | Stopped | Error),
            (Pending, Starting | Running | Error) => true,
            (Starting, Running | Error) => true,
            (Running, Pausing | Paused | Snapshotting | Hibernated | Stopped | Error) => true,
            (Pausing, Paused | Running | Error | Hibernated) => true,
            // A paused sandbox whose processes died (noticed by its host) fails.
            (Paused, Resuming | Snapshotting | Hibernated | Running | Error) => true,
            (Hibernated, Resuming) => true,
            (Resuming, Running | Paused | Hibernated | Error) => true,
            (Snapshotting, Running | Paused | Error) => true,
            _ => false,
        }
    }
}

impl fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus {
                kind: "sandbox",
                value: s.chars().take(64).collect(),
                expected: Self::EXPECTED,
            })
    }
}

/// Status of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    /// Created, waiting for its agent to register.
    Pending,
    /// Registered and heartbeating.
    Online,
    /// Missed heartbeats for longer than the threshold.
    Unreachable,
    /// Taken out of service.
    Offline,
    /// Accepts no new sandboxes; existing ones keep running.
    Draining,
}

impl HostStatus {
    /// Every host status.
    pub const ALL: [HostStatus; 5] = [
        Self::Pending,
        Self::Online,
        Self::Unreachable,
        Self::Offline,
        Self::Draining,
    ];

    /// The wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Online => "online",
            Self::Unreachable => "unreachable",
            Self::Offline => "offline",
            Self::Draining => "draining",
        }
    }
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HostStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus {
                kind: "host",
                value: s.chars().take(64).collect(),
                expected: "pending, online, unreachable, offline, draining",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxStatus::*;
    use super::*;

    #[test]
    fn wire_values_round_trip() {
        for s in SandboxStatus::ALL {
            assert_eq!(s.as_str().parse::<SandboxStatus>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for s in HostStatus::ALL {
            assert_eq!(s.as_str().parse::<HostStatus>().unwrap(), s);
        }
        let err = "Running".parse::<SandboxStatus>().unwrap_err();
        assert!(err.to_string().contains("expected one of"), "{err}");
    }

    #[test]
    fn terminal_states_go_nowhere() {
        for to in SandboxStatus::ALL {
            assert!(!Stopped.can_transition_to(to), "stopped -> {to}");
            assert!(!Error.can_transition_to(to), "error -> {to}");
        }
    }

    #[test]
    fn the_lifecycle_paths_are_allowed() {
        let paths: &[&[SandboxStatus]] = &[
            &[Starting, Running, Pausing, Paused, Resuming, Running],
            &[Running, Pausing, Running],
            &[Paused, Hibernated, Resuming, Running],
            &[Running, Snapshotting, Running],
            &[Paused, Snapshotting, Paused],
            &[Starting, Error],
            &[Running, Stopping, Stopped],
            &[Hibernated, Stopping, Stopped],
            &[Running, Missing, Running],
        ];
        for path in paths {
            for w in path.windows(2) {
                assert!(w[0].can_transition_to(w[1]), "{} -> {}", w[0], w[1]);
            }
        }
    }

    #[test]
    fn nonsense_transitions_are_refused() {
        assert!(!Starting.can_transition_to(Paused));
        assert!(!Hibernated.can_transition_to(Running));
        assert!(!Stopping.can_transition_to(Running));
        assert!(!Stopping.can_transition_to(Stopping));
        assert!(!Paused.can_transition_to(Pausing));
    }

    #[test]
    fn transient_and_terminal_are_disjoint() {
        for s in SandboxStatus::ALL {
            assert!(!(s.is_transient() && s.is_terminal()), "{s}");
        }
    }
}
