//! [`SchedulerKind`]: how the control plane picks a host (`WRENN_SCHEDULER`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the control plane picks a host for a new sandbox (`WRENN_SCHEDULER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// `least_loaded`: the host with the most free resources.
    #[default]
    LeastLoaded,
    /// `round_robin`: hosts in turn.
    RoundRobin,
    /// `single_host`: always the only online host.
    SingleHost,
}

impl SchedulerKind {
    /// Wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::LeastLoaded => "least_loaded",
            SchedulerKind::RoundRobin => "round_robin",
            SchedulerKind::SingleHost => "single_host",
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchedulerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "least_loaded" => Ok(Self::LeastLoaded),
            "round_robin" => Ok(Self::RoundRobin),
            "single_host" => Ok(Self::SingleHost),
            _ => Err("expected one of least_loaded, round_robin, single_host".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::cfg;

    #[test]
    fn scheduler_values() {
        for (s, k) in [
            ("least_loaded", SchedulerKind::LeastLoaded),
            ("round_robin", SchedulerKind::RoundRobin),
            ("single_host", SchedulerKind::SingleHost),
        ] {
            assert_eq!(cfg(&[("WRENN_SCHEDULER", s)]).unwrap().scheduler, k);
            assert_eq!(k.to_string(), s);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{s}\""));
        }
    }
}
