//! Capsule networking, shared by the runtimes: one network namespace per capsule
//! joined to the host by a veth pair, addressed from a per-slot /30, NAT to the
//! internet, a firewall that keeps capsules away from each other, the host and private
//! networks, and a DNS forwarder on each capsule's gateway. Everything is done
//! in-process over netlink: no `ip`, `iptables` or `nft` binary is needed.
//!
//! # Addressing
//!
//! The capsule range (default `10.200.0.0/16`, [`NetworkOptions::range`]) is cut into
//! /30 *slots*: slot `n` owns `base + 4n … base + 4n + 3`; the host end of the veth
//! (`<prefix>{n}`, default `wrenn-v{n}`) is `base + 4n + 1` — the capsule's gateway and
//! DNS server — and the capsule's `eth0` is `base + 4n + 2`. Slot 0 is never used. A
//! slot is taken by binding the DNS sockets to its gateway and creating its veth (both
//! fail if another capsule of any agent on the host holds it), so agents sharing a
//! host and range never collide; slots are handed out round-robin from a random start
//! so a freed address is not reused at once.
//!
//! # A capsule's network
//!
//! 1. [`Network::prepare`]: the named namespace `/run/netns/<name>` (see [`netns`]),
//!    which the capsule's processes join, with a slot: the veth pair with its peer as
//!    `eth0` in the namespace, addresses, `lo` and both ends up, the default route via
//!    the gateway, no IPv6 on either end, and the DNS forwarder's sockets bound on the
//!    gateway. Networks are prepared ahead of time ([`NetworkOptions::spare_networks`],
//!    as unnamed namespaces, at idle priority), so this is usually only a bind mount.
//!    A VM runtime adds its TAP device and the guest's NAT inside the named namespace
//!    ([`tap`]);
//! 2. [`Network::serve`] (may run while the capsule starts): the DNS forwarder's
//!    listeners on the gateway ([`dns`]);
//! 3. [`Network::remove`]: stops the listeners and unmounts the namespace; the kernel
//!    then deletes the veth pair with the namespace.
//!
//! # Host-wide
//!
//! [`Network::new`] enables IPv4 forwarding, makes `/run/netns` a shared mount, and
//! installs the firewall ([`firewall`]: our own nftables table, replaced atomically,
//! re-asserted every [`NetworkOptions::reassert_interval`]) with the egress policy of
//! [`policy`] (configurable with [`EgressConfig`]). A kernel without nf_tables fails
//! here, with the reason.

pub mod dns;
pub mod firewall;
mod link;
mod netlink;
pub mod netns;
mod nft;
pub mod policy;
pub mod tap;

use crate::runtime::error_chain;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wrenn_core::config::{Cidr, EgressConfig};

pub use self::dns::DnsOptions;
use self::firewall::FirewallSpec;
use self::link::Links;
use self::nft::NftError;
use self::policy::EgressPolicy;

/// Name of the capsule-side interface inside each namespace.
pub const CAPSULE_INTERFACE: &str = "eth0";
/// Prefix of network namespace names (`wrenn-{sandbox id}`).
pub const NETNS_PREFIX: &str = "wrenn-";
/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const MAX_IFNAME: usize = 15;

/// The namespace name of a sandbox.
pub fn netns_name(id: &str) -> String {
    format!("{NETNS_PREFIX}{id}")
}

/// The `/run/netns` path of a namespace.
pub fn netns_path(name: &str) -> PathBuf {
    netns::path(name)
}

/// A private IPv4 range for capsule addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    /// The network address.
    pub base: Ipv4Addr,
    /// Prefix length (8–29).
    pub prefix: u8,
}

impl Ipv4Range {
    /// `base/prefix`, which must be aligned and leave room for at least two /30 slots.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if !(8..=29).contains(&prefix) {
            return Err(format!(
                "sandbox network prefix /{prefix} must be between /8 and /29"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(base) & !mask != 0 {
            return Err(format!(
                "sandbox network {base}/{prefix} is not aligned to its prefix"
            ));
        }
        Ok(Self { base, prefix })
    }

    /// Number of /30 slots.
    pub fn slots(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix) - 2)
    }

    /// Host end of slot `slot`'s veth: the capsule's gateway.
    pub fn host_addr(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + slot * 4 + 1)
    }

    /// Capsule end (`eth0`) of slot `slot`.
    pub fn sandbox_addr(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + slot * 4 + 2)
    }

    /// The range as a [`Cidr`].
    pub fn cidr(&self) -> Cidr {
        Cidr::containing(IpAddr::V4(self.base), self.prefix)
            .unwrap_or_else(|| unreachable!("prefix checked in Ipv4Range::new"))
    }
}

impl std::fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Settings of a [`Network`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    /// Capsule address range, cut into /30 slots (default `10.200.0.0/16`).
    pub range: Ipv4Range,
    /// Name of our nftables table, `inet <table>` (default `wrenn`). One table per
    /// range: agents on one host with different ranges need different tables.
    pub table: String,
    /// Prefix of the host ends of the veth pairs (default `wrenn-v`; the slot number
    /// follows, within 15 characters).
    pub interface_prefix: String,
    /// The deployment's changes to the default egress policy.
    pub egress: EgressConfig,
    /// The DNS forwarder.
    pub dns: DnsOptions,
    /// How often the firewall table is re-asserted (default 30 s).
    pub reassert_interval: Duration,
    /// Capsule networks kept ready (default 4; 0 = none): a namespace with a claimed
    /// and configured slot costs 2–7 ms of kernel work here (the kernel serialises
    /// namespace creation with the teardown of old ones), naming a ready one a bind
    /// mount. Each holds a slot while it waits.
    pub spare_networks: usize,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            range: Ipv4Range {
                base: Ipv4Addr::new(10, 200, 0, 0),
                prefix: 16,
            },
            table: "wrenn".to_owned(),
            interface_prefix: "wrenn-v".to_owned(),
            egress: EgressConfig::default(),
            dns: DnsOptions::default(),
            reassert_interval: Duration::from_secs(30),
            spare_networks: 4,
        }
    }
}

impl NetworkOptions {
    /// The defaults, on the agent's share of the host (address range, firewall table,
    /// veth prefix: [`HostShare`](wrenn_core::config::HostShare)) with its egress
    /// changes.
    pub fn from_config(config: &wrenn_core::config::AgentConfig) -> Self {
        let share = &config.host_share;
        let defaults = Self::default();
        let range = match share.capsule_network.addr() {
            IpAddr::V4(base) => Ipv4Range {
                base,
                prefix: share.capsule_network.prefix(),
            },
            // `HostShare` only holds IPv4 ranges.
            IpAddr::V6(_) => defaults.range,
        };
        Self {
            range,
            table: share.firewall_table.clone(),
            interface_prefix: share.veth_prefix.clone(),
            egress: config.egress.clone(),
            ..defaults
        }
    }
}

/// Why the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The options cannot work.
    #[error("invalid network options: {0}")]
    Options(String),
    /// A host-wide setting could not be applied.
    #[error("cannot {what}")]
    Host {
        /// What was tried.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The firewall could not be installed; the message names the likely cause.
    #[error("cannot install the capsule firewall (nftables table inet {table}): {hint}")]
    Firewall {
        /// Our table.
        table: String,
        /// What the failure most likely means.
        hint: &'static str,
        /// The kernel's answer.
        #[source]
        source: FirewallError,
    },
    /// A step of a capsule's network failed.
    #[error("cannot {what} for network namespace {netns}")]
    Capsule {
        /// The namespace.
        netns: String,
        /// The step.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every slot of the range is taken.
    #[error("no free network slot in {0}")]
    Exhausted(Ipv4Range),
}

/// The nftables error behind [`NetworkError::Firewall`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FirewallError(#[from] NftError);

impl NetworkError {
    fn capsule(netns: &str, what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let netns = netns.to_owned();
        let what = what.into();
        move |source| Self::Capsule {
            netns,
            what,
            source,
        }
    }
}

/// The network of one capsule (serializable, so a runtime can record it and
/// [`adopt`](Network::adopt) the capsule after an agent restart).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxNet {
    /// Network namespace name (`wrenn-{id}`).
    pub netns: String,
    /// The slot.
    pub slot: u32,
    /// Host-side veth name.
    pub veth: String,
    /// Host end address: the capsule's gateway and DNS server.
    pub host_addr: Ipv4Addr,
    /// Capsule (`eth0`) address.
    pub sandbox_addr: Ipv4Addr,
}

impl SandboxNet {
    /// The capsule's `/etc/resolv.conf`: the forwarder on its gateway.
    pub fn resolv_conf(&self) -> String {
        dns::capsule_resolv_conf(self.host_addr)
    }

    /// Writes [`resolv_conf`](Self::resolv_conf) to `path` in place (the same inode, so
    /// a bind mount of the file sees the new content).
    pub fn write_resolv_conf(&self, path: &std::path::Path) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.write_all(self.resolv_conf().as_bytes())
    }
}

/// A named namespace with a configured slot from [`Network::prepare`], whose DNS is
/// not served yet.
#[derive(Debug)]
pub struct ClaimedNet {
    net: SandboxNet,
    bound: dns::Bound,
}

impl ClaimedNet {
    /// The network the capsule has; its DNS answers once [`Network::serve`]d.
    pub fn net(&self) -> &SandboxNet {
        &self.net
    }
}

/// Capsule networking for one address range. See the [module docs](self).
#[derive(Debug)]
pub struct Network {
    options: Arc<NetworkOptions>,
    capsules: Cidr,
    forwarder: Arc<dns::Forwarder>,
    listeners: Mutex<HashMap<String, dns::Listeners>>,
    slots: Arc<Slots>,
    reassert: tokio::task::JoinHandle<()>,
    spares: Arc<Spares>,
    refill: tokio::task::JoinHandle<()>,
}

impl Drop for Network {
    fn drop(&mut self) {
        self.reassert.abort();
        self.refill.abort();
    }
}

/// Capsule networks made ahead of time ([`NetworkOptions::spare_networks`]),
/// refilled in the background, paced and at idle priority ([`crate::idle`]). They exist only as descriptors (the
/// namespace, the DNS sockets): an agent that stops leaves none behind, since the
/// kernel deletes a veth pair with its namespace.
#[derive(Debug, Default)]
struct Spares {
    ready: Mutex<std::collections::VecDeque<Spare>>,
    pacer: crate::idle::Pacer,
}

/// One ready network: an unnamed namespace with its slot claimed and configured.
#[derive(Debug)]
struct Spare {
    ns: netns::Unnamed,
    net: SandboxNet,
    bound: dns::Bound,
}

impl Spares {
    fn ready(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Spare>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready network, if there is one; wakes the refill.
    fn take(&self) -> Option<Spare> {
        let spare = self.ready().pop_front();
        self.pacer.taken();
        spare
    }

    /// Keeps `depth` networks ready.
    async fn refill(self: Arc<Self>, depth: usize, slots: Arc<Slots>) {
        loop {
            while self.ready().len() < depth {
                self.pacer.turn(|| self.ready().len(), depth).await;
                match Self::make(&slots).await {
                    Ok(spare) => self.ready().push_back(spare),
                    Err(e) => {
                        tracing::warn!("preparing a spare capsule network: {}", error_chain(&e));
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
            self.pacer.next_take().await;
        }
    }

    async fn make(slots: &Arc<Slots>) -> Result<Spare, NetworkError> {
        let ns = netns::create_unnamed(netns::Priority::Idle)
            .await
            .map_err(|source| NetworkError::Host {
                what: "create a spare network namespace".into(),
                source,
            })?;
        let slots = slots.clone();
        run_blocking_at(crate::idle::Priority::Idle, move || {
            let mut ns = ns;
            let (net, bound) = slots.claim(&mut ns.0, String::new())?;
            Ok(Spare { ns, net, bound })
        })
        .await
    }
}

/// The slots of a range: which to try next, and how one is claimed.
#[derive(Debug)]
struct Slots {
    range: Ipv4Range,
    prefix: String,
    next: AtomicU32,
}

impl Slots {
    /// Where the next search starts: round-robin from a random first slot.
    fn hint(&self) -> u32 {
        let slots = self.range.slots();
        let _ = self.next.compare_exchange(
            u32::MAX,
            rand::random::<u32>() % slots,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.next.fetch_add(1, Ordering::Relaxed) % slots
    }

    /// Claims a free slot for the namespace `created` (named `name`, or not yet) and
    /// configures both ends of its veth (blocking). On failure nothing of the slot is
    /// left.
    fn claim(
        &self,
        created: &mut netns::Created,
        name: String,
    ) -> Result<(SandboxNet, dns::Bound), NetworkError> {
        let (net, bound) = claim(created, self.range, &self.prefix, self.hint(), name)?;
        connect(created, &net)?;
        Ok((net, bound))
    }
}

impl Network {
    /// Checks the options and prepares the host: IPv4 forwarding, `/run/netns`, the
    /// firewall (and its periodic re-assertion). Must run inside the tokio runtime.
    pub async fn new(options: NetworkOptions) -> Result<Self, NetworkError> {
        validate(&options)?;
        let options = Arc::new(options);
        let capsules = options.range.cidr();
        let opts = options.clone();
        let warnings = run_blocking(move || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1").map_err(|source| {
                NetworkError::Host {
                    what: "enable net.ipv4.ip_forward".into(),
                    source,
                }
            })?;
            netns::prepare_dir().map_err(|source| NetworkError::Host {
                what: format!("make {} a shared mount", netns::NETNS_DIR),
                source,
            })?;
            apply_firewall(&opts)
        })
        .await?;
        for warning in &warnings {
            tracing::warn!(table = %options.table, "{warning}");
        }
        let interval = options.reassert_interval;
        let opts = options.clone();
        let reassert = tokio::spawn(async move {
            let mut warned = warnings;
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let o = opts.clone();
                let applied = tokio::task::spawn_blocking(move || apply_firewall(&o)).await;
                match applied {
                    Ok(Ok(warnings)) => {
                        tracing::trace!(table = %opts.table, "firewall re-asserted");
                        if warnings != warned {
                            for warning in &warnings {
                                tracing::warn!(table = %opts.table, "{warning}");
                            }
                            warned = warnings;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(table = %opts.table, "re-asserting the firewall: {}", error_chain(&e))
                    }
                    Err(e) => tracing::warn!("re-asserting the firewall: {}", error_chain(&e)),
                }
            }
        });
        let slots = Arc::new(Slots {
            range: options.range,
            prefix: options.interface_prefix.clone(),
            next: AtomicU32::new(u32::MAX),
        });
        let spares = Arc::new(Spares::default());
        let refill = tokio::spawn(spares.clone().refill(options.spare_networks, slots.clone()));
        Ok(Self {
            spares,
            refill,
            slots,
            forwarder: Arc::new(dns::Forwarder::new(options.dns.clone(), capsules)),
            options,
            capsules,
            listeners: Mutex::new(HashMap::new()),
            reassert,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &NetworkOptions {
        &self.options
    }

    /// Replaces the firewall table now (what the periodic re-assertion does).
    pub async fn reassert(&self) -> Result<(), NetworkError> {
        let o = self.options.clone();
        run_blocking(move || apply_firewall(&o)).await.map(drop)
    }

    /// Prepares the network of a capsule in the named namespace `name` (the
    /// capsule's processes may join it at once): a ready one named now when there is
    /// one, else made on the spot. Its DNS answers once [`serve`](Self::serve)d. On
    /// failure a namespace of that name may be left for [`remove`](Self::remove).
    pub async fn prepare(&self, name: &str) -> Result<ClaimedNet, NetworkError> {
        if let Some(Spare { ns, mut net, bound }) = self.spares.take() {
            netns::name(ns, name).map_err(NetworkError::capsule(name, "name the namespace"))?;
            net.netns = name.to_owned();
            return Ok(ClaimedNet { net, bound });
        }
        let created = netns::create(name)
            .await
            .map_err(NetworkError::capsule(name, "create the namespace"))?;
        let slots = self.slots.clone();
        let name = name.to_owned();
        run_blocking(move || {
            let mut created = created;
            let (net, bound) = slots.claim(&mut created, name)?;
            Ok(ClaimedNet { net, bound })
        })
        .await
    }

    /// Gives a prepared (not yet served) network the namespace name `name` (a capsule
    /// started ahead of time under a provisional name, then given its own).
    pub fn rename(&self, claimed: &mut ClaimedNet, name: &str) -> Result<(), NetworkError> {
        netns::rename(&claimed.net.netns, name)
            .map_err(NetworkError::capsule(name, "rename the namespace"))?;
        claimed.net.netns = name.to_owned();
        Ok(())
    }

    /// Serves DNS for a prepared network; returns it.
    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    pub async fn serve(
        &self,
        claimed: ClaimedNet,
        sandbox_id: &str,
    ) -> Result<SandboxNet, NetworkError> {
        let ClaimedNet { net, bound } = claimed;
        self.serve_dns(bound, &net.netns, sandbox_id).await?;
        Ok(net)
    }

    /// How many prepared networks are ready to be named.
    pub fn spares_ready(&self) -> usize {
        self.spares.ready().len()
    }

    /// [`prepare`](Self::prepare), then [`serve`](Self::serve).
    pub async fn attach(&self, name: &str, sandbox_id: &str) -> Result<SandboxNet, NetworkError> {
        let claimed = self.prepare(name).await?;
        self.serve(claimed, sandbox_id).await
    }

    /// Takes over a capsule network that outlived the agent that made it (after a
    /// restart): serves DNS on its gateway again. The namespace, veth and addresses are
    /// the kernel's and still in place; `AddrInUse` means another agent serves it.
    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    pub async fn adopt(&self, net: &SandboxNet, sandbox_id: &str) -> Result<(), NetworkError> {
        if !self
            .options
            .range
            .cidr()
            .contains(IpAddr::V4(net.host_addr))
        {
            return Err(NetworkError::Options(format!(
                "{} is not in this network's range {}",
                net.host_addr, self.options.range
            )));
        }
        if self.serves_dns(&net.netns) {
            return Ok(());
        }
        if !netns_path(&net.netns).exists() {
            return Err(NetworkError::capsule(&net.netns, "adopt the network")(
                io::Error::new(io::ErrorKind::NotFound, "the namespace does not exist"),
            ));
        }
        let gateway = net.host_addr;
        let bound = run_blocking(move || {
            dns::bind(gateway).map_err(|source| NetworkError::Host {
                what: format!("bind the DNS forwarder on {gateway}"),
                source,
            })
        })
        .await?;
        self.serve_dns(bound, &net.netns, sandbox_id).await
    }

    /// Serves DNS for namespace `netns` on `bound`, replacing (and stopping) any
    /// listeners it had.
    async fn serve_dns(
        &self,
        bound: dns::Bound,
        netns: &str,
        sandbox_id: &str,
    ) -> Result<(), NetworkError> {
        let listeners = self
            .forwarder
            .serve(bound, sandbox_id)
            .map_err(NetworkError::capsule(netns, "serve DNS"))?;
        let old = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(netns.to_owned(), listeners);
        if let Some(old) = old {
            old.stop().await;
        }
        Ok(())
    }

    /// Removes namespace `name`: stops its DNS listeners (their sockets are closed
    /// when this returns) and unmounts it. The kernel deletes the veth pair once the
    /// namespace has no process left. Missing namespaces are fine.
    pub async fn remove(&self, name: &str) -> Result<(), NetworkError> {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(listeners) = listeners {
            listeners.stop().await;
        }
        netns::remove(name).map_err(NetworkError::capsule(name, "remove the namespace"))
    }

    /// Whether this network serves DNS for namespace `name`.
    pub fn serves_dns(&self, name: &str) -> bool {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// The capsule range as a [`Cidr`].
    pub fn capsules(&self) -> Cidr {
        self.capsules
    }
}

/// Deletes the firewall table `inet <table>` if it exists. For tests and for
/// decommissioning a host: a running agent re-asserts its table.
pub async fn delete_firewall(table: &str) -> Result<(), NetworkError> {
    let name = table.to_owned();
    run_blocking(move || {
        firewall::delete(&name).map_err(|e| NetworkError::Firewall {
            table: name.clone(),
            hint: "deleting it failed",
            source: e.into(),
        })
    })
    .await
}

/// The firewall for `options`, with the host's addresses as they are now.
fn firewall_spec(options: &NetworkOptions) -> Result<FirewallSpec, NetworkError> {
    let capsules = options.range.cidr();
    let addresses = Links::open()
        .and_then(|mut l| l.addresses(&options.interface_prefix))
        .map_err(|source| NetworkError::Host {
            what: "list the host's addresses".into(),
            source,
        })?;
    let host = policy::host_networks(&addresses, capsules);
    Ok(FirewallSpec {
        table: options.table.clone(),
        interface_prefix: options.interface_prefix.clone(),
        capsules,
        policy: EgressPolicy::new(capsules, &options.egress, &host),
    })
}

/// Installs the firewall; returns warnings about other rules that drop what it accepts.
fn apply_firewall(options: &NetworkOptions) -> Result<Vec<String>, NetworkError> {
    let spec = firewall_spec(options)?;
    let warnings = firewall::foreign_drops(&options.interface_prefix);
    firewall::apply(&spec).map_err(|e| {
        let hint = match &e {
            NftError::Socket(_) => {
                "the kernel has no nf_tables support (CONFIG_NF_TABLES, module nf_tables)"
            }
            NftError::Refused { source, .. }
                if matches!(source.raw_os_error(), Some(2) | Some(95) | Some(93)) =>
            {
                "the kernel lacks an nftables feature the firewall needs \
                 (CONFIG_NF_TABLES_INET and the nft_ct, nft_fib_inet, nft_reject_inet, \
                 nft_masq and nft_nat modules)"
            }
            NftError::Refused { .. } => "the kernel refused the ruleset",
        };
        NetworkError::Firewall {
            table: options.table.clone(),
            hint,
            source: e.into(),
        }
    })?;
    Ok(warnings)
}

fn validate(options: &NetworkOptions) -> Result<(), NetworkError> {
    let bad = |m: String| Err(NetworkError::Options(m));
    Ipv4Range::new(options.range.base, options.range.prefix).map_err(NetworkError::Options)?;
    let t = &options.table;
    if t.is_empty()
        || t.len() > 64
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad(format!(
            "table name {t:?} must be 1 to 64 letters, digits, '_' or '-'"
        ));
    }
    let p = &options.interface_prefix;
    let digits = (options.range.slots() - 1).to_string().len();
    if p.is_empty()
        || p.len() + digits > MAX_IFNAME
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad(format!(
            "interface prefix {p:?} must be letters, digits, '_' or '-', short enough for \
             {digits}-digit slot numbers within {MAX_IFNAME} characters"
        ));
    }
    if options.dns.max_inflight == 0
        || options.dns.max_inflight_per_capsule == 0
        || options.dns.max_tcp_per_capsule == 0
    {
        return bad("DNS limits must be at least 1".into());
    }
    if options.reassert_interval.is_zero() {
        return bad("the firewall re-assert interval must be positive".into());
    }
    Ok(())
}

/// Finds a free slot from `start` for the namespace `created` (named `name`): binds
/// the DNS forwarder's sockets on its gateway (which no other agent can then bind)
/// and creates the veth pair of the slot's name (which no other network sharing the
/// prefix can then take), its peer as `eth0` inside (blocking).
fn claim(
    created: &netns::Created,
    range: Ipv4Range,
    prefix: &str,
    start: u32,
    name: String,
) -> Result<(SandboxNet, dns::Bound), NetworkError> {
    let what = if name.is_empty() {
        "a spare network"
    } else {
        name.as_str()
    };
    let mut host = Links::open().map_err(NetworkError::capsule(what, "open rtnetlink"))?;
    let slots = range.slots();
    for offset in 0..slots {
        let slot = (start + offset) % slots;
        if slot == 0 {
            continue; // its first address is the range's network address
        }
        let gateway = range.host_addr(slot);
        let bound = match dns::bind(gateway) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(NetworkError::capsule(what, "bind the DNS forwarder")(e)),
        };
        let veth = format!("{prefix}{slot}");
        // The name is taken atomically: by another network sharing the prefix, or by a
        // capsule that outlived its agent and is not adopted yet.
        match host.add_veth(&veth, CAPSULE_INTERFACE, created.fd.as_fd()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(NetworkError::capsule(what, format!("create veth {veth}"))(
                    e,
                ));
            }
        }
        let net = SandboxNet {
            netns: name,
            slot,
            veth,
            host_addr: gateway,
            sandbox_addr: range.sandbox_addr(slot),
        };
        return Ok((net, bound));
    }
    Err(NetworkError::Exhausted(range))
}

/// Configures the claimed slot `net` of namespace `created`; on failure deletes its
/// veth pair.
fn connect(created: &mut netns::Created, net: &SandboxNet) -> Result<(), NetworkError> {
    let what = if net.netns.is_empty() {
        "a spare network"
    } else {
        net.netns.as_str()
    };
    let veth = &net.veth;
    let mut host = Links::open().map_err(NetworkError::capsule(what, "open rtnetlink"))?;
    if let Err(e) = configure(&mut host, &mut created.links, net) {
        // Deleting the host end takes the peer with it.
        if let Err(del) = host.delete(veth) {
            tracing::warn!(
                "removing veth {veth} after a failed setup: {}",
                error_chain(&del)
            );
        }
        return Err(e);
    }
    Ok(())
}

/// Addresses both ends of `net`'s veth, brings them up and routes the capsule's
/// traffic through the gateway.
fn configure(host: &mut Links, inside: &mut Links, net: &SandboxNet) -> Result<(), NetworkError> {
    let name = if net.netns.is_empty() {
        "a spare network"
    } else {
        net.netns.as_str()
    };
    let ctx = |what: &str| NetworkError::capsule(name, format!("{what} ({})", net.veth));
    let host_index = host.index(&net.veth).map_err(ctx("find the host end"))?;
    host.configure(host_index, net.host_addr, 30, None, false)
        .map_err(ctx("configure the host end"))?;
    let index = inside
        .index(CAPSULE_INTERFACE)
        .map_err(ctx("find the capsule end"))?;
    inside
        .configure(index, net.sandbox_addr, 30, Some(net.host_addr), true)
        .map_err(ctx("configure the capsule end"))
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    run_blocking_at(crate::idle::Priority::Normal, f).await
}

async fn run_blocking_at<T: Send + 'static>(
    priority: crate::idle::Priority,
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    crate::idle::blocking(priority, f)
        .await
        .map_err(|e| NetworkError::Host {
            what: "run a network task".into(),
            source: io::Error::other(error_chain(&e)),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_slash_30s_with_the_gateway_first() {
        let r = Ipv4Range::new(Ipv4Addr::new(10, 200, 0, 0), 16).unwrap();
        assert_eq!(r.slots(), 16384);
        assert_eq!(r.host_addr(3), Ipv4Addr::new(10, 200, 0, 13));
        assert_eq!(r.sandbox_addr(3), Ipv4Addr::new(10, 200, 0, 14));
        assert_eq!(r.cidr().to_string(), "10.200.0.0/16");
        assert!(Ipv4Range::new(Ipv4Addr::new(10, 200, 0, 1), 16).is_err());
        assert!(Ipv4Range::new(Ipv4Addr::new(10, 0, 0, 0), 30).is_err());
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        let ok = NetworkOptions::default();
        assert!(validate(&ok).is_ok());
        for bad in [
            NetworkOptions {
                table: "has space".into(),
                ..ok.clone()
            },
            NetworkOptions {
                table: String::new(),
                ..ok.clone()
            },
            NetworkOptions {
                interface_prefix: "much-too-long".into(),
                ..ok.clone()
            },
            NetworkOptions {
                interface_prefix: "a/b".into(),
                ..ok.clone()
            },
            NetworkOptions {
                range: Ipv4Range {
                    base: Ipv4Addr::new(10, 0, 0, 1),
                    prefix: 8,
                },
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(validate(&bad), Err(NetworkError::Options(_))),
                "{bad:?}"
            );
        }
        // A /8 has 7-digit slot numbers: "wrenn-v" + 7 = 14 characters fit.
        let wide = NetworkOptions {
            range: Ipv4Range::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap(),
            ..ok
        };
        assert!(validate(&wide).is_ok());
    }
}
