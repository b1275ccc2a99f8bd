//! Placing new sandboxes on hosts.
//!
//! Eligibility is the same for every strategy: a host must be `online` with an
//! address; BYOC teams use only their own BYOC hosts, every other team only regular
//! (platform) hosts. Strategies differ in which eligible host they pick.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Overcommit;
use crate::id::{HostId, TeamId};
use crate::lifecycle::HostStatus;
use crate::model::{HostKind, HostLoad, Resources};
use crate::repo::{HostRepo, RepoError};

/// What a new sandbox needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Team the sandbox belongs to.
    pub team_id: TeamId,
    /// Whether that team runs on its own hosts.
    pub team_is_byoc: bool,
    /// The sandbox's machine shape.
    pub resources: Resources,
    /// Hosts not to choose (those a create could not reach).
    pub avoid: Vec<HostId>,
}

/// Why no host was chosen.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A BYOC team has no online host of its own.
    #[error("no online BYOC hosts available for team {0}")]
    NoByocHosts(TeamId),
    /// No online platform host exists.
    #[error("no online platform hosts available")]
    NoPlatformHosts,
    /// Hosts exist but none has room.
    #[error("no host has sufficient resources: need {memory_mb} MB memory, {disk_mb} MB disk")]
    InsufficientResources {
        /// Memory requested.
        memory_mb: i32,
        /// Disk requested.
        disk_mb: i32,
    },
    /// Every eligible host is full under its overcommit (what its agent admits).
    #[error(
        "every host is full: the capsule needs {vcpus} vCPUs and {memory_mb} MiB, more \
         than any host has left (host CPUs × overcommit, host memory × overcommit − \
         reserve, minus what its capsules hold)"
    )]
    HostsFull {
        /// vCPUs requested.
        vcpus: i32,
        /// Memory requested (MiB).
        memory_mb: i32,
    },
    /// The capsule is larger than any eligible host could ever hold, even empty.
    #[error(
        "the capsule is larger than any host can hold: {requested} {resource} requested, \
         at most {limit} on the largest host (host {resource} × overcommit{reserve})"
    )]
    ExceedsHostCapacity {
        /// `MiB of memory` or `vCPUs`.
        resource: &'static str,
        /// What was asked.
        requested: i64,
        /// The most any eligible host can give.
        limit: u64,
        /// ` − reserve` for memory, empty otherwise.
        reserve: &'static str,
    },
    /// The host list could not be read.
    #[error(transparent)]
    Store(#[from] RepoError),
}

/// Picks a host for a new sandbox.
#[async_trait::async_trait]
pub trait Scheduler: Send + Sync + 'static {
    /// The chosen host.
    async fn select_host(&self, placement: &Placement) -> Result<HostId, SchedulerError>;
}

/// Whether `load.host` may run sandboxes of the placement's team.
pub fn is_eligible(load: &HostLoad, placement: &Placement) -> bool {
    let h = &load.host;
    if h.status != HostStatus::Online || h.address.is_empty() || placement.avoid.contains(&h.id) {
        return false;
    }
    if placement.team_is_byoc {
        h.kind == HostKind::Byoc && h.team_id == Some(placement.team_id)
    } else {
        h.kind == HostKind::Regular
    }
}

/// Refuses a placement no eligible host of `hosts` could hold even when empty:
/// memory above `host memory × overcommit − reserve` or vCPUs above
/// `host CPUs × overcommit` on every one of them. `Ok` when no host is eligible (the
/// caller reports that).
pub fn check_fits_some_host(
    hosts: &[HostLoad],
    placement: &Placement,
    overcommit: &Overcommit,
) -> Result<(), SchedulerError> {
    let eligible: Vec<&HostLoad> = hosts.iter().filter(|l| is_eligible(l, placement)).collect();
    if eligible.is_empty() {
        return Ok(());
    }
    let memory =
        |l: &HostLoad| overcommit.memory_limit_mb(u64::try_from(l.host.memory_mb).unwrap_or(0));
    let vcpus = |l: &HostLoad| overcommit.vcpu_limit(u64::try_from(l.host.cpu_cores).unwrap_or(0));
    let want_mb = u64::try_from(placement.resources.memory_mb).unwrap_or(0);
    let want_vcpus = u64::try_from(placement.resources.vcpus).unwrap_or(0);
    if eligible
        .iter()
        .any(|l| memory(l) >= want_mb && vcpus(l) >= want_vcpus)
    {
        return Ok(());
    }
    let max_mb = eligible.iter().map(|l| memory(l)).max().unwrap_or(0);
    if want_mb > max_mb {
        return Err(SchedulerError::ExceedsHostCapacity {
            resource: "MiB of memory",
            requested: i64::from(placement.resources.memory_mb),
            limit: max_mb,
            reserve: " − reserve",
        });
    }
    Err(SchedulerError::ExceedsHostCapacity {
        resource: "vCPUs",
        requested: i64::from(placement.resources.vcpus),
        limit: eligible.iter().map(|l| vcpus(l)).max().unwrap_or(0),
        reserve: "",
    })
}

/// Whether `load`'s host has room for `placement` under `overcommit`, counted as its
/// agent admits: the capsules that are starting, running, paused or in a transient
/// status hold their vCPUs and memory.
pub fn has_room(load: &HostLoad, placement: &Placement, overcommit: &Overcommit) -> bool {
    let held_mb = load.running_memory_mb + load.paused_memory_mb;
    let held_vcpus = load.running_vcpus + load.paused_vcpus;
    let memory_limit = overcommit.memory_limit_mb(u64::try_from(load.host.memory_mb).unwrap_or(0));
    let vcpu_limit = overcommit.vcpu_limit(u64::try_from(load.host.cpu_cores).unwrap_or(0));
    let fits = |held: i64, want: i32, limit: u64| {
        u64::try_from(held.max(0) + i64::from(want.max(0))).is_ok_and(|need| need <= limit)
    };
    fits(held_mb, placement.resources.memory_mb, memory_limit)
        && fits(held_vcpus, placement.resources.vcpus, vcpu_limit)
}

/// The eligible hosts of `hosts` with room for `placement` ([`has_room`]); refuses
/// with [`SchedulerError::HostsFull`] when some are eligible but none has room, so
/// the caller hears it now rather than from the agent later. Empty when none is
/// eligible (the caller reports that).
pub fn with_room<'a>(
    hosts: &'a [HostLoad],
    placement: &Placement,
    overcommit: &Overcommit,
) -> Result<Vec<&'a HostLoad>, SchedulerError> {
    let eligible: Vec<&HostLoad> = hosts.iter().filter(|l| is_eligible(l, placement)).collect();
    let roomy: Vec<&HostLoad> = eligible
        .iter()
        .copied()
        .filter(|l| has_room(l, placement, overcommit))
        .collect();
    if roomy.is_empty() && !eligible.is_empty() {
        return Err(SchedulerError::HostsFull {
            vcpus: placement.resources.vcpus,
            memory_mb: placement.resources.memory_mb,
        });
    }
    Ok(roomy)
}

fn no_hosts(placement: &Placement) -> SchedulerError {
    if placement.team_is_byoc {
        SchedulerError::NoByocHosts(placement.team_id)
    } else {
        SchedulerError::NoPlatformHosts
    }
}

/// Capacity held back on every host for the host itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reserve {
    /// Memory kept for the host (MiB).
    pub memory_mb: i64,
    /// CPUs kept for the host, after overcommit.
    pub cpus: f64,
    /// Disk kept for the host (MiB).
    pub disk_mb: i64,
    /// CPU overcommit factor (vCPUs per core).
    pub cpu_overcommit: f64,
    /// Weight of paused sandboxes' memory (they keep it, but are reclaimable).
    pub paused_memory_weight: f64,
    /// Weight of paused and hibernated sandboxes' disk.
    pub paused_disk_weight: f64,
}

impl Default for Reserve {
    /// The production defaults: 8 GiB and 4 CPUs for the host, 30 GiB of disk,
    /// 1.5× CPU overcommit, paused memory at ½ and paused disk at ⅔.
    fn default() -> Self {
        Self {
            memory_mb: 8192,
            cpus: 4.0,
            disk_mb: 30720,
            cpu_overcommit: 1.5,
            paused_memory_weight: 0.5,
            paused_disk_weight: 2.0 / 3.0,
        }
    }
}

/// Free capacity of a host as fractions, and whether a placement fits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Headroom {
    /// Memory still usable (MiB).
    pub memory_mb: f64,
    /// Disk still usable (MiB).
    pub disk_mb: f64,
    /// min(free/total) over memory, CPU and disk; 0 when a total is not positive.
    pub score: f64,
}

impl Reserve {
    /// Headroom of one host.
    pub fn headroom(&self, load: &HostLoad) -> Headroom {
        let h = &load.host;
        let ram_total = f64::from(h.memory_mb) - self.memory_mb as f64;
        let cpu_total = f64::from(h.cpu_cores) * self.cpu_overcommit - self.cpus;
        let disk_total = f64::from(h.disk_gb) * 1024.0 - self.disk_mb as f64;
        let ram_used = load.running_memory_mb as f64
            + self.paused_memory_weight * load.paused_memory_mb as f64;
        let disk_used =
            load.running_disk_mb as f64 + self.paused_disk_weight * load.paused_disk_mb as f64;
        let cpu_used = load.running_vcpus as f64;
        let frac = |total: f64, used: f64| {
            if total <= 0.0 {
                0.0
            } else {
                ((total - used) / total).max(0.0)
            }
        };
        Headroom {
            memory_mb: ram_total - ram_used,
            disk_mb: disk_total - disk_used,
            score: frac(ram_total, ram_used)
                .min(frac(cpu_total, cpu_used))
                .min(frac(disk_total, disk_used)),
        }
    }
}

/// The least-loaded choice among `hosts` (pure; what [`LeastLoaded`] runs after
/// reading the host list). Hosts are expected oldest first; ties go to the first.
/// Admission is on memory and disk; CPU may be overcommitted.
pub fn pick_least_loaded<'a>(
    hosts: &'a [HostLoad],
    placement: &Placement,
    reserve: &Reserve,
) -> Result<&'a HostLoad, SchedulerError> {
    let mut any_eligible = false;
    let mut best: Option<(&HostLoad, f64)> = None;
    for load in hosts.iter().filter(|l| is_eligible(l, placement)) {
        any_eligible = true;
        let room = reserve.headroom(load);
        if room.memory_mb < f64::from(placement.resources.memory_mb)
            || room.disk_mb < f64::from(placement.resources.disk_size_mb)
        {
            continue;
        }
        if best.is_none_or(|(_, score)| room.score > score) {
            best = Some((load, room.score));
        }
    }
    match best {
        Some((load, _)) => Ok(load),
        None if any_eligible => Err(SchedulerError::InsufficientResources {
            memory_mb: placement.resources.memory_mb,
            disk_mb: placement.resources.disk_size_mb,
        }),
        None => Err(no_hosts(placement)),
    }
}

/// Picks the eligible host with the most headroom.
pub struct LeastLoaded {
    hosts: Arc<dyn HostRepo>,
    reserve: Reserve,
    overcommit: Overcommit,
}

impl LeastLoaded {
    /// With the default [`Reserve`].
    pub fn new(hosts: Arc<dyn HostRepo>) -> Self {
        Self::with_reserve(hosts, Reserve::default())
    }

    /// With a custom reserve (small hosts, tests).
    pub fn with_reserve(hosts: Arc<dyn HostRepo>, reserve: Reserve) -> Self {
        Self {
            hosts,
            reserve,
            overcommit: Overcommit::default(),
        }
    }

    /// Refuses capsules no host could hold with `overcommit` (default
    /// [`Overcommit::default`]); see [`check_fits_some_host`].
    pub fn with_overcommit(mut self, overcommit: Overcommit) -> Self {
        self.overcommit = overcommit;
        self
    }
}

#[async_trait::async_trait]
impl Scheduler for LeastLoaded {
    async fn select_host(&self, placement: &Placement) -> Result<HostId, SchedulerError> {
        let hosts = self.hosts.list_hosts_with_load().await?;
        check_fits_some_host(&hosts, placement, &self.overcommit)?;
        let roomy: Vec<HostLoad> = with_room(&hosts, placement, &self.overcommit)?
            .into_iter()
            .cloned()
            .collect();
        if roomy.is_empty() {
            return Err(no_hosts(placement));
        }
        pick_least_loaded(&roomy, placement, &self.reserve).map(|l| l.host.id)
    }
}

/// Cycles through eligible hosts with room ([`has_room`]).
pub struct RoundRobin {
    hosts: Arc<dyn HostRepo>,
    next: AtomicUsize,
    overcommit: Overcommit,
}

impl RoundRobin {
    /// Over the hosts in `hosts`.
    pub fn new(hosts: Arc<dyn HostRepo>) -> Self {
        Self {
            hosts,
            next: AtomicUsize::new(0),
            overcommit: Overcommit::default(),
        }
    }

    /// Refuses capsules no host could hold with `overcommit`; see
    /// [`check_fits_some_host`].
    pub fn with_overcommit(mut self, overcommit: Overcommit) -> Self {
        self.overcommit = overcommit;
        self
    }
}

#[async_trait::async_trait]
impl Scheduler for RoundRobin {
    async fn select_host(&self, placement: &Placement) -> Result<HostId, SchedulerError> {
        let hosts = self.hosts.list_hosts_with_load().await?;
        check_fits_some_host(&hosts, placement, &self.overcommit)?;
        let eligible = with_room(&hosts, placement, &self.overcommit)?;
        if eligible.is_empty() {
            return Err(no_hosts(placement));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % eligible.len();
        Ok(eligible[i].host.id)
    }
}

/// One host for everything: either a configured host (the embedded platform's
/// in-process agent) or, with [`SingleHost::only_online`], the oldest eligible
/// online host, while it has room ([`has_room`]).
pub struct SingleHost {
    hosts: Arc<dyn HostRepo>,
    host: Option<HostId>,
    overcommit: Overcommit,
}

impl SingleHost {
    /// Always `host`, provided it is eligible for the team.
    pub fn new(hosts: Arc<dyn HostRepo>, host: HostId) -> Self {
        Self {
            hosts,
            host: Some(host),
            overcommit: Overcommit::default(),
        }
    }

    /// The oldest eligible online host.
    pub fn only_online(hosts: Arc<dyn HostRepo>) -> Self {
        Self {
            hosts,
            host: None,
            overcommit: Overcommit::default(),
        }
    }

    /// Refuses capsules the host could not hold with `overcommit`; see
    /// [`check_fits_some_host`].
    pub fn with_overcommit(mut self, overcommit: Overcommit) -> Self {
        self.overcommit = overcommit;
        self
    }
}

#[async_trait::async_trait]
impl Scheduler for SingleHost {
    async fn select_host(&self, placement: &Placement) -> Result<HostId, SchedulerError> {
        let hosts = self.hosts.list_hosts_with_load().await?;
        let candidates: Vec<HostLoad> = hosts
            .into_iter()
            .filter(|l| self.host.is_none_or(|h| l.host.id == h))
            .collect();
        check_fits_some_host(&candidates, placement, &self.overcommit)?;
        with_room(&candidates, placement, &self.overcommit)?
            .first()
            .map(|l| l.host.id)
            .ok_or_else(|| no_hosts(placement))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Host;
    use chrono::Utc;

    fn host(
        kind: HostKind,
        team: Option<TeamId>,
        mem_gb: i32,
        cores: i32,
        disk_gb: i32,
    ) -> HostLoad {
        let now = Utc::now();
        HostLoad {
            host: Host {
                id: HostId::new(),
                kind,
                team_id: team,
                provider: String::new(),
                availability_zone: String::new(),
                arch: "x86_64".into(),
                cpu_cores: cores,
                memory_mb: mem_gb * 1024,
                disk_gb,
                address: "10.0.0.1:50051".into(),
                status: HostStatus::Online,
                last_heartbeat_at: Some(now),
                metadata: serde_json::json!({}),
                created_by: None,
                created_at: now,
                updated_at: now,
                cert_fingerprint: String::new(),
                cert_expires_at: None,
            },
            running_memory_mb: 0,
            running_vcpus: 0,
            running_disk_mb: 0,
            paused_memory_mb: 0,
            paused_vcpus: 0,
            paused_disk_mb: 0,
        }
    }

    fn placement(team: TeamId, byoc: bool) -> Placement {
        Placement {
            team_id: team,
            team_is_byoc: byoc,
            resources: Resources {
                vcpus: 1,
                memory_mb: 512,
                disk_size_mb: 20480,
            },
            avoid: Vec::new(),
        }
    }

    #[test]
    fn a_host_has_room_as_its_agent_admits_paused_capsules_included() {
        // 2 cores × 4 = 8 vCPUs; 24 GiB × 1.0 − 1 GiB = 23 552 MiB.
        let overcommit = Overcommit::default();
        let mut h = host(HostKind::Regular, None, 24, 2, 500);
        let p = placement(TeamId::new(), false);
        assert!(has_room(&h, &p, &overcommit));
        h.running_vcpus = 6;
        h.paused_vcpus = 1;
        assert!(has_room(&h, &p, &overcommit), "7 of 8 vCPUs held");
        h.paused_vcpus = 2;
        assert!(!has_room(&h, &p, &overcommit), "8 of 8 vCPUs held");
        h.running_vcpus = 0;
        h.paused_vcpus = 0;
        h.running_memory_mb = 23_000;
        assert!(has_room(
            &h,
            &Placement {
                resources: Resources {
                    memory_mb: 552,
                    ..p.resources
                },
                ..p.clone()
            },
            &overcommit
        ));
        h.paused_memory_mb = 1;
        assert!(!has_room(
            &h,
            &Placement {
                resources: Resources {
                    memory_mb: 552,
                    ..p.resources
                },
                ..p
            },
            &overcommit
        ));
    }

    #[test]
    fn full_hosts_are_refused_now_and_other_teams_hosts_do_not_count() {
        let overcommit = Overcommit::default();
        let p = placement(TeamId::new(), false);
        let mut full = host(HostKind::Regular, None, 24, 2, 500);
        full.running_vcpus = 8;
        let err = with_room(std::slice::from_ref(&full), &p, &overcommit).unwrap_err();
        assert!(
            matches!(
                err,
                SchedulerError::HostsFull {
                    vcpus: 1,
                    memory_mb: 512
                }
            ),
            "{err}"
        );
        let roomy = host(HostKind::Regular, None, 24, 2, 500);
        let hosts = [full.clone(), roomy.clone()];
        let got = with_room(&hosts, &p, &overcommit).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].host.id, roomy.host.id);
        // A full BYOC host of another team is not eligible: nothing to refuse.
        let mut byoc = host(HostKind::Byoc, Some(TeamId::new()), 24, 2, 500);
        byoc.running_vcpus = 8;
        assert!(with_room(&[byoc], &p, &overcommit).unwrap().is_empty());
    }

    #[test]
    fn the_emptier_host_wins() {
        let mut busy = host(HostKind::Regular, None, 64, 16, 500);
        busy.running_memory_mb = 40_000;
        let idle = host(HostKind::Regular, None, 64, 16, 500);
        let hosts = [busy, idle.clone()];
        let got = pick_least_loaded(
            &hosts,
            &placement(TeamId::new(), false),
            &Reserve::default(),
        )
        .unwrap();
        assert_eq!(got.host.id, idle.host.id);
    }

    #[test]
    fn ties_go_to_the_oldest_host() {
        let hosts = [
            host(HostKind::Regular, None, 64, 16, 500),
            host(HostKind::Regular, None, 64, 16, 500),
        ];
        let got = pick_least_loaded(
            &hosts,
            &placement(TeamId::new(), false),
            &Reserve::default(),
        )
        .unwrap();
        assert_eq!(got.host.id, hosts[0].host.id);
    }

    #[test]
    fn paused_memory_counts_half() {
        let mut h = host(HostKind::Regular, None, 16, 16, 500); // 8 GiB usable
        h.paused_memory_mb = 15_000; // weighs 7 500
        let p = placement(TeamId::new(), false);
        assert!(pick_least_loaded(std::slice::from_ref(&h), &p, &Reserve::default()).is_ok());
        h.paused_memory_mb = 16_000; // weighs 8 000: 192 MiB left
        let err = pick_least_loaded(&[h], &p, &Reserve::default()).unwrap_err();
        assert!(
            matches!(
                err,
                SchedulerError::InsufficientResources { memory_mb: 512, .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn disk_is_admitted_too() {
        let h = host(HostKind::Regular, None, 64, 16, 40); // 40 GiB - 30 GiB reserve = 10 GiB
        let err = pick_least_loaded(&[h], &placement(TeamId::new(), false), &Reserve::default())
            .unwrap_err();
        assert!(err.to_string().contains("20480 MB disk"), "{err}");
    }

    #[test]
    fn cpu_may_be_overcommitted() {
        let mut h = host(HostKind::Regular, None, 64, 4, 500);
        h.running_vcpus = 100;
        assert!(
            pick_least_loaded(&[h], &placement(TeamId::new(), false), &Reserve::default()).is_ok()
        );
    }

    #[test]
    fn a_capsule_no_host_could_hold_is_refused_naming_the_limit() {
        let small = host(HostKind::Regular, None, 24, 2, 500); // 24 GiB, 2 cores
        let o = Overcommit::default(); // memory × 1 − 1 GiB, vCPUs × 4
        let mut p = placement(TeamId::new(), false);
        assert!(check_fits_some_host(std::slice::from_ref(&small), &p, &o).is_ok());
        p.resources.memory_mb = 32768;
        p.resources.vcpus = 16;
        let err = check_fits_some_host(std::slice::from_ref(&small), &p, &o).unwrap_err();
        assert!(
            matches!(
                err,
                SchedulerError::ExceedsHostCapacity {
                    limit: 23552,
                    requested: 32768,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("32768 MiB of memory requested, at most 23552"),
            "{err}"
        );
        p.resources.memory_mb = 1024;
        let err = check_fits_some_host(std::slice::from_ref(&small), &p, &o).unwrap_err();
        assert!(
            err.to_string().contains("16 vCPUs requested, at most 8"),
            "{err}"
        );
        // A bigger eligible host is enough; an ineligible one is not.
        let big = host(HostKind::Regular, None, 64, 8, 500);
        assert!(check_fits_some_host(&[small.clone(), big], &p, &o).is_ok());
        let byoc = host(HostKind::Byoc, Some(TeamId::new()), 64, 8, 500);
        assert!(check_fits_some_host(&[small, byoc], &p, &o).is_err());
    }

    #[test]
    fn byoc_teams_only_use_their_own_hosts() {
        let team = TeamId::new();
        let regular = host(HostKind::Regular, None, 64, 16, 500);
        let other = host(HostKind::Byoc, Some(TeamId::new()), 64, 16, 500);
        let hosts = [regular.clone(), other];
        let err =
            pick_least_loaded(&hosts, &placement(team, true), &Reserve::default()).unwrap_err();
        assert!(matches!(err, SchedulerError::NoByocHosts(t) if t == team));
        let own = host(HostKind::Byoc, Some(team), 64, 16, 500);
        let hosts = [regular, own.clone()];
        assert_eq!(
            pick_least_loaded(&hosts, &placement(team, true), &Reserve::default())
                .unwrap()
                .host
                .id,
            own.host.id
        );
    }

    #[test]
    fn regular_teams_never_use_byoc_hosts() {
        let byoc = host(HostKind::Byoc, Some(TeamId::new()), 64, 16, 500);
        let err = pick_least_loaded(
            &[byoc],
            &placement(TeamId::new(), false),
            &Reserve::default(),
        )
        .unwrap_err();
        assert!(matches!(err, SchedulerError::NoPlatformHosts));
    }

    #[test]
    fn offline_and_addressless_hosts_are_skipped() {
        let mut down = host(HostKind::Regular, None, 64, 16, 500);
        down.host.status = HostStatus::Unreachable;
        let mut blank = host(HostKind::Regular, None, 64, 16, 500);
        blank.host.address.clear();
        let err = pick_least_loaded(
            &[down, blank],
            &placement(TeamId::new(), false),
            &Reserve::default(),
        )
        .unwrap_err();
        assert!(matches!(err, SchedulerError::NoPlatformHosts));
    }

    #[test]
    fn hosts_smaller_than_the_reserve_score_zero_and_admit_nothing() {
        let tiny = host(HostKind::Regular, None, 4, 2, 20);
        assert_eq!(Reserve::default().headroom(&tiny).score, 0.0);
        assert!(
            pick_least_loaded(
                &[tiny],
                &placement(TeamId::new(), false),
                &Reserve::default()
            )
            .is_err()
        );
    }
}
