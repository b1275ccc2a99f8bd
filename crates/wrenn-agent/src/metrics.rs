//! Resource metrics: per-sandbox sample rings and host capacity from `/proc`.
//!
//! A sandbox's samples (from [`Runtime::stats`](crate::runtime::Runtime::stats), taken
//! by the manager's sampler every 500 ms while the sandbox runs) are kept in three
//! tiers, as `hostagent.proto` documents:
//!
//! | tier | resolution | length | ranges |
//! |---|---|---|---|
//! | fine | the samples of each second, averaged (sampled every 500 ms) | 600 (10 min) | `5m`, `10m` |
//! | mid | average of 60 fine samples (30 s) | 240 (2 h) | `1h`, `2h` |
//! | coarse | average of 10 mid points (5 min) | 288 (24 h) | `6h`, `12h`, `24h` |

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use wrenn_core::model::MetricHistory;
use wrenn_proto::hostagent::v1::MetricPoint;

use crate::error::{AgentError, AgentResult};

/// Fine-tier length: 10 minutes of one-second points.
pub const FINE_LEN: usize = 600;
/// Mid-tier length: 2 hours of 30 s points.
pub const MID_LEN: usize = 240;
/// Coarse-tier length: 24 hours of 5 min points.
pub const COARSE_LEN: usize = 288;
/// Fine samples averaged into one mid point.
pub const FINE_PER_MID: usize = 60;
/// Mid points averaged into one coarse point.
pub const MID_PER_COARSE: usize = 10;

/// Which tier a range reads and how far back it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// One-second points.
    Fine,
    /// 30 s points.
    Mid,
    /// 5 min points.
    Coarse,
}

/// Parses a `GetSandboxMetrics` range (`""` = `10m`).
pub fn parse_range(range: &str) -> AgentResult<(Tier, Duration)> {
    let (tier, secs) = match range {
        "" | "10m" => (Tier::Fine, 600),
        "5m" => (Tier::Fine, 300),
        "1h" => (Tier::Mid, 3600),
        "2h" => (Tier::Mid, 7200),
        "6h" => (Tier::Coarse, 6 * 3600),
        "12h" => (Tier::Coarse, 12 * 3600),
        "24h" => (Tier::Coarse, 24 * 3600),
        other => {
            return Err(AgentError::InvalidArgument(format!(
                "unknown metrics range {:?}: expected one of 5m, 10m, 1h, 2h, 6h, 12h, 24h",
                other.chars().take(16).collect::<String>()
            )));
        }
    };
    Ok((tier, Duration::from_secs(secs)))
}

/// The three sample tiers of one sandbox.
#[derive(Debug, Default, Clone)]
pub struct MetricRings {
    fine: VecDeque<MetricPoint>,
    mid: VecDeque<MetricPoint>,
    coarse: VecDeque<MetricPoint>,
    pending_fine: Vec<MetricPoint>,
    pending_mid: Vec<MetricPoint>,
    /// Samples averaged into the newest fine point (timestamps are whole seconds, so
    /// samples of the same second make one point).
    newest_fine_samples: u32,
}

fn average(points: &[MetricPoint]) -> MetricPoint {
    let n = points.len().max(1) as f64;
    MetricPoint {
        timestamp_unix: points.last().map_or(0, |p| p.timestamp_unix),
        cpu_pct: points.iter().map(|p| p.cpu_pct).sum::<f64>() / n,
        mem_bytes: (points.iter().map(|p| p.mem_bytes as f64).sum::<f64>() / n) as u64,
        disk_bytes: (points.iter().map(|p| p.disk_bytes as f64).sum::<f64>() / n) as u64,
    }
}

fn push_bounded(ring: &mut VecDeque<MetricPoint>, p: MetricPoint, cap: usize) {
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(p);
}

impl MetricRings {
    /// Adds one sample, rolling averages up into the coarser tiers.
    pub fn push(&mut self, p: MetricPoint) {
        match self.fine.back_mut() {
            Some(last) if last.timestamp_unix == p.timestamp_unix => {
                let n = f64::from(self.newest_fine_samples);
                let mean = |a: f64, b: f64| (a * n + b) / (n + 1.0);
                last.cpu_pct = mean(last.cpu_pct, p.cpu_pct);
                last.mem_bytes = mean(last.mem_bytes as f64, p.mem_bytes as f64) as u64;
                last.disk_bytes = mean(last.disk_bytes as f64, p.disk_bytes as f64) as u64;
                self.newest_fine_samples += 1;
            }
            _ => {
                push_bounded(&mut self.fine, p, FINE_LEN);
                self.newest_fine_samples = 1;
            }
        }
        self.pending_fine.push(p);
        if self.pending_fine.len() == FINE_PER_MID {
            let mid = average(&self.pending_fine);
            self.pending_fine.clear();
            push_bounded(&mut self.mid, mid, MID_LEN);
            self.pending_mid.push(mid);
            if self.pending_mid.len() == MID_PER_COARSE {
                let coarse = average(&self.pending_mid);
                self.pending_mid.clear();
                push_bounded(&mut self.coarse, coarse, COARSE_LEN);
            }
        }
    }

    /// The points of `tier` no older than `age` before `now_unix`, oldest first.
    pub fn range(&self, tier: Tier, age: Duration, now_unix: i64) -> Vec<MetricPoint> {
        let ring = match tier {
            Tier::Fine => &self.fine,
            Tier::Mid => &self.mid,
            Tier::Coarse => &self.coarse,
        };
        let cutoff = now_unix - age.as_secs() as i64;
        ring.iter()
            .filter(|p| p.timestamp_unix >= cutoff)
            .copied()
            .collect()
    }

    /// Returns every tier (fine, mid, coarse) and empties them.
    pub fn flush(&mut self) -> (Vec<MetricPoint>, Vec<MetricPoint>, Vec<MetricPoint>) {
        let out = (
            self.fine.drain(..).collect(),
            self.mid.drain(..).collect(),
            self.coarse.drain(..).collect(),
        );
        self.pending_fine.clear();
        self.pending_mid.clear();
        out
    }

    /// Empties every tier into the form handed to the control plane; `None` when
    /// there was nothing.
    pub fn take_history(&mut self) -> Option<MetricHistory> {
        let (fine, mid, coarse) = self.flush();
        let history = wrenn_proto::domain::metric_history(fine, mid, coarse);
        (!history.is_empty()).then_some(history)
    }

    /// Number of points in each tier.
    pub fn lens(&self) -> (usize, usize, usize) {
        (self.fine.len(), self.mid.len(), self.coarse.len())
    }
}

/// Host capacity and usage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostUsage {
    /// Logical CPUs.
    pub cpu_count: u32,
    /// CPU use in percent of all CPUs over the last sampling interval.
    pub cpu_used_pct: f64,
    /// `MemTotal`, bytes.
    pub memory_total_bytes: u64,
    /// `MemAvailable`, bytes.
    pub memory_available_bytes: u64,
    /// Size of the file system holding the data directory, bytes.
    pub disk_total_bytes: u64,
    /// Free space there (for unprivileged users), bytes.
    pub disk_available_bytes: u64,
}

/// Aggregate CPU counters from `/proc/stat`: (busy, total) jiffies, and the CPU count.
fn read_proc_stat() -> Option<(u64, u64, u32)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let mut agg = None;
    let mut cpus = 0u32;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cpu ") {
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            agg = Some((total.saturating_sub(idle), total));
        } else if line.starts_with("cpu") {
            cpus += 1;
        }
    }
    agg.map(|(busy, total)| (busy, total, cpus.max(1)))
}

/// `MemTotal` and `MemAvailable` from `/proc/meminfo`, bytes.
fn read_meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Samples host CPU use (a background task calls [`tick`](Self::tick) every second) and
/// reads memory and disk on demand.
#[derive(Debug, Default)]
pub struct HostSampler {
    state: Mutex<HostCpu>,
}

#[derive(Debug, Default)]
struct HostCpu {
    last: Option<(u64, u64)>,
    pct: f64,
    cpus: u32,
}

impl HostSampler {
    /// A sampler with no sample yet.
    pub fn new() -> Self {
        let s = Self::default();
        s.tick();
        s
    }

    /// Takes a CPU sample; the usage is computed against the previous one.
    pub fn tick(&self) {
        let Some((busy, total, cpus)) = read_proc_stat() else {
            return;
        };
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some((pb, pt)) = st.last {
            let dt = total.saturating_sub(pt);
            if dt > 0 {
                st.pct = (busy.saturating_sub(pb) as f64 / dt as f64 * 100.0).clamp(0.0, 100.0);
            }
        }
        st.last = Some((busy, total));
        st.cpus = cpus;
    }

    /// The current usage; disk figures are for the file system holding `data_dir`.
    pub fn usage(&self, data_dir: &Path) -> HostUsage {
        let (pct, cpus) = self
            .state
            .lock()
            .map(|s| (s.pct, s.cpus))
            .unwrap_or((0.0, 0));
        let cpu_count = if cpus > 0 {
            cpus
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        };
        let (memory_total_bytes, memory_available_bytes) = read_meminfo();
        let (disk_total_bytes, disk_available_bytes) = match rustix::fs::statvfs(data_dir) {
            Ok(st) => (
                st.f_blocks.saturating_mul(st.f_frsize),
                st.f_bavail.saturating_mul(st.f_frsize),
            ),
            Err(_) => (0, 0),
        };
        HostUsage {
            cpu_count,
            cpu_used_pct: pct,
            memory_total_bytes,
            memory_available_bytes,
            disk_total_bytes,
            disk_available_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ts: i64, cpu: f64) -> MetricPoint {
        MetricPoint {
            timestamp_unix: ts,
            cpu_pct: cpu,
            mem_bytes: 100,
            disk_bytes: 10,
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("").unwrap(),
            (Tier::Fine, Duration::from_secs(600))
        );
        assert_eq!(parse_range("2h").unwrap().0, Tier::Mid);
        assert_eq!(parse_range("24h").unwrap().0, Tier::Coarse);
        assert!(matches!(
            parse_range("3d"),
            Err(AgentError::InvalidArgument(_))
        ));
    }

    #[test]
    fn tiers_roll_up_and_flush_empties() {
        let mut r = MetricRings::default();
        for i in 0..(FINE_PER_MID * MID_PER_COARSE) as i64 {
            r.push(p(i, if i % 2 == 0 { 10.0 } else { 30.0 }));
        }
        assert_eq!(r.lens(), (FINE_LEN.min(600), 10, 1));
        let now = 600;
        let mid = r.range(Tier::Mid, Duration::from_secs(7200), now);
        assert_eq!(mid.len(), 10);
        assert!((mid[0].cpu_pct - 20.0).abs() < 1e-9);
        assert_eq!(mid[0].timestamp_unix, 59);
        let recent = r.range(Tier::Fine, Duration::from_secs(100), now);
        assert_eq!(recent.len(), 100);
        assert_eq!(recent[0].timestamp_unix, 500);
        let (f, m, c) = r.flush();
        assert_eq!((f.len(), m.len(), c.len()), (600, 10, 1));
        assert_eq!(r.lens(), (0, 0, 0));
    }

    #[test]
    fn samples_of_one_second_make_one_fine_point() {
        let mut r = MetricRings::default();
        r.push(p(7, 10.0));
        r.push(p(7, 30.0));
        r.push(p(7, 50.0));
        r.push(p(8, 1.0));
        let fine = r.range(Tier::Fine, Duration::from_secs(600), 8);
        assert_eq!(fine.len(), 2);
        assert!((fine[0].cpu_pct - 30.0).abs() < 1e-9);
        assert_eq!(fine[1].cpu_pct, 1.0);
    }

    #[test]
    fn fine_ring_is_bounded() {
        let mut r = MetricRings::default();
        for i in 0..(FINE_LEN as i64 + 50) {
            r.push(p(i, 1.0));
        }
        assert_eq!(r.lens().0, FINE_LEN);
    }

    #[test]
    fn host_usage_reads_proc() {
        let s = HostSampler::new();
        s.tick();
        let u = s.usage(Path::new("/"));
        assert!(u.cpu_count >= 1);
        assert!(u.memory_total_bytes > 0 && u.memory_available_bytes <= u.memory_total_bytes);
        assert!(u.disk_total_bytes > 0);
        assert!((0.0..=100.0).contains(&u.cpu_used_pct));
    }
}
