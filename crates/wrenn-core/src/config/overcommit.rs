//! [`Overcommit`]: how much of a host sandboxes may hold, shared by the control plane
//! (to refuse impossible capsules) and the agent (to admit work).

use super::source::Vars;
use super::{ConfigError, vars};

/// Default [`Overcommit::memory`].
pub const DEFAULT_MEMORY_OVERCOMMIT: f64 = 1.0;
/// Default [`Overcommit::cpu`].
pub const DEFAULT_CPU_OVERCOMMIT: f64 = 4.0;
/// Default [`Overcommit::memory_reserve_mb`].
pub const DEFAULT_MEMORY_RESERVE_MB: u64 = 1024;
/// Largest accepted overcommit ratio.
pub const MAX_OVERCOMMIT: f64 = 100.0;

/// How much of a host sandboxes may hold: the agent admits work against it, and the
/// control plane refuses at once a capsule no host could ever hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overcommit {
    /// `WRENN_MEMORY_OVERCOMMIT`, default 1.0 (above 0, at most 100): sandboxes may
    /// hold `host memory × memory − memory_reserve_mb` MiB.
    pub memory: f64,
    /// `WRENN_CPU_OVERCOMMIT`, default 4.0 (above 0, at most 100): sandboxes may hold
    /// `host CPUs × cpu` vCPUs.
    pub cpu: f64,
    /// `WRENN_MEMORY_RESERVE_MB`, default 1024: memory kept for the host itself.
    pub memory_reserve_mb: u64,
}

// The ratios are finite (never NaN) when read from the environment, so equality is
// total.
impl Eq for Overcommit {}

impl Default for Overcommit {
    fn default() -> Self {
        Self {
            memory: DEFAULT_MEMORY_OVERCOMMIT,
            cpu: DEFAULT_CPU_OVERCOMMIT,
            memory_reserve_mb: DEFAULT_MEMORY_RESERVE_MB,
        }
    }
}

impl Overcommit {
    /// Reads `WRENN_MEMORY_OVERCOMMIT`, `WRENN_CPU_OVERCOMMIT` and
    /// `WRENN_MEMORY_RESERVE_MB`.
    pub(super) fn from_vars(v: &Vars<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            memory: v.ratio(vars::WRENN_MEMORY_OVERCOMMIT, DEFAULT_MEMORY_OVERCOMMIT)?,
            cpu: v.ratio(vars::WRENN_CPU_OVERCOMMIT, DEFAULT_CPU_OVERCOMMIT)?,
            memory_reserve_mb: v.parse_with(
                vars::WRENN_MEMORY_RESERVE_MB,
                DEFAULT_MEMORY_RESERVE_MB,
                |s| {
                    s.parse::<u64>()
                        .map_err(|_| "expected a whole number of MiB".to_owned())
                },
            )?,
        })
    }

    /// Memory (MiB) sandboxes may hold together on a host with `host_memory_mb`.
    pub fn memory_limit_mb(&self, host_memory_mb: u64) -> u64 {
        ((host_memory_mb as f64 * self.memory) as u64).saturating_sub(self.memory_reserve_mb)
    }

    /// vCPUs sandboxes may hold together on a host with `host_cpus`.
    pub fn vcpu_limit(&self, host_cpus: u64) -> u64 {
        (host_cpus as f64 * self.cpu) as u64
    }
}

impl Vars<'_> {
    /// A finite ratio above 0 and at most [`MAX_OVERCOMMIT`].
    fn ratio(&self, var: &'static str, default: f64) -> Result<f64, ConfigError> {
        self.parse_with(var, default, |s| match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 && r <= MAX_OVERCOMMIT => Ok(r),
            _ => Err(format!(
                "expected a ratio above 0 and at most {MAX_OVERCOMMIT}, e.g. 1.5"
            )),
        })
    }
}
