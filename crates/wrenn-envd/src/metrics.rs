//! Resource use as the guest sees it: CPU from `/proc/stat`, memory from
//! `/proc/meminfo` (capped by the cgroup memory limit when one applies), disk from
//! `statvfs("/")`.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wrenn_proto::envd::v1::MetricsResponse;

/// How often the background task samples `/proc/stat`.
pub(crate) const CPU_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

#[derive(Debug, Default)]
struct CpuState {
    previous: Option<(Instant, CpuTimes)>,
    percent: Option<f64>,
}

/// Keeps the CPU use of the last sampling interval.
#[derive(Debug, Default)]
pub(crate) struct CpuSampler {
    state: Mutex<CpuState>,
}

impl CpuSampler {
    /// Takes a sample and, if there is an earlier one, updates the percentage.
    pub fn sample(&self) {
        let Some(now) = read_cpu_times() else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, before)) = state.previous {
            state.percent = Some(percent(before, now));
        }
        state.previous = Some((Instant::now(), now));
    }

    /// CPU use in percent over the last interval; the first call (before the sampler
    /// has two samples) measures a short interval itself.
    pub async fn percent(&self) -> f64 {
        if let Some(percent) = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .percent
        {
            return percent;
        }
        self.sample();
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.sample();
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .percent
            .unwrap_or(0.0)
    }

    /// Samples every [`CPU_SAMPLE_INTERVAL`] until `stop` is cancelled.
    pub async fn run(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(CPU_SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(),
                () = stop.cancelled() => return,
            }
        }
    }
}

fn percent(before: CpuTimes, after: CpuTimes) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let busy = after.busy.saturating_sub(before.busy);
    (busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
}

fn read_cpu_times() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?)
}

/// Parses the aggregate `cpu` line: user nice system idle iowait irq softirq steal.
fn parse_cpu_line(line: &str) -> Option<CpuTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
    if values.len() < 4 {
        return None;
    }
    let total: u64 = values.iter().sum();
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// Memory (total, used) in bytes.
fn memory() -> (u64, u64) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (total, available) = parse_meminfo(&meminfo);
    let mut used = total.saturating_sub(available);
    let mut total = total;
    if let Some((limit, usage)) = cgroup_memory() {
        if limit > 0 && limit < total {
            total = limit;
            used = usage.min(limit);
        }
    }
    (total, used)
}

fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:").unwrap_or(0);
    let available = field("MemAvailable:")
        .or_else(|| field("MemFree:"))
        .unwrap_or(0);
    (total, available)
}

/// The memory limit and usage (minus reclaimable page cache) of envd's cgroup, v2 or
/// v1; `None` where no limit file is readable.
fn cgroup_memory() -> Option<(u64, u64)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                for dir in [Path::new(root).join(path), Path::new(root).to_path_buf()] {
                    let limit = read_u64(&dir.join("memory.max"));
                    let usage = read_u64(&dir.join("memory.current"));
                    if let (Some(limit), Some(usage)) = (limit, usage) {
                        let cache = stat_field(&dir.join("memory.stat"), "inactive_file");
                        return Some((limit, usage.saturating_sub(cache)));
                    }
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let root = Path::new("/sys/fs/cgroup/memory");
            for dir in [root.join(path), root.to_path_buf()] {
                let limit = read_u64(&dir.join("memory.limit_in_bytes"));
                let usage = read_u64(&dir.join("memory.usage_in_bytes"));
                if let (Some(limit), Some(usage)) = (limit, usage) {
                    let cache = stat_field(&dir.join("memory.stat"), "total_inactive_file");
                    return Some((limit, usage.saturating_sub(cache)));
                }
            }
        }
    }
    None
}

/// A number from a cgroup file; `max` (no limit) reads as `None`.
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(path: &Path, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// Disk (total, used) of the root file system in bytes.
fn disk() -> (u64, u64) {
    match rustix::fs::statvfs("/") {
        Ok(vfs) => {
            let total = vfs.f_blocks.saturating_mul(vfs.f_frsize);
            let free = vfs.f_bfree.saturating_mul(vfs.f_frsize);
            (total, total.saturating_sub(free))
        }
        Err(_) => (0, 0),
    }
}

/// A full metrics sample. Blocking reads of small `/proc` files.
pub(crate) async fn collect(cpu: &CpuSampler) -> MetricsResponse {
    let cpu_used_pct = cpu.percent().await;
    let ((mem_total_bytes, mem_used_bytes), (disk_total_bytes, disk_used_bytes)) =
        tokio::task::spawn_blocking(|| (memory(), disk()))
            .await
            .unwrap_or(((0, 0), (0, 0)));
    MetricsResponse {
        cpu_count: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        cpu_used_pct,
        mem_total_bytes,
        mem_used_bytes,
        disk_total_bytes,
        disk_used_bytes,
        timestamp_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aggregate_cpu_line() {
        let times = parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0").unwrap();
        assert_eq!((times.busy, times.total), (150, 1000));
        assert!(parse_cpu_line("cpu0 1 2 3 4").is_none());
        let later = CpuTimes {
            busy: 250,
            total: 1200,
        };
        assert!((percent(times, later) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n";
        assert_eq!(parse_meminfo(text), (1000 * 1024, 400 * 1024));
    }
}
