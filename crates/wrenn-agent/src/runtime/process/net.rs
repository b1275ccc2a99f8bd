//! Per-sandbox network namespaces, veth pairs and host NAT.
//!
//! Addressing: the sandbox range (default `10.200.0.0/16`, see
//! [`ProcessRuntimeOptions::network`](super::ProcessRuntimeOptions)) is cut into /30
//! blocks, one per *slot*: slot `n` owns `base + 4n … base + 4n + 3`, the host end of the
//! veth is `base + 4n + 1` and the sandbox's `eth0` is `base + 4n + 2` (its default
//! gateway is the host end). A /16 gives 16384 slots.
//!
//! Per sandbox (all with `ip`, three invocations):
//! - network namespace `wrenn-{sandbox id}` (`/run/netns/…`);
//! - veth `wrenn-p{slot}` on the host, peer `eth0` inside the namespace. The host-side
//!   name is the slot's lock: `ip link add` fails with "File exists" when another
//!   sandbox — of this or any other agent on the host — holds the slot, and the next
//!   slot is tried. Slots are handed out round-robin from a random start, so a freed
//!   address is not reused at once;
//! - host end: strict reverse-path filtering (no spoofed sources) and IPv6 disabled (no
//!   link-local path around the IPv4 rules).
//!
//! Host-wide, once per range and process ([`ensure_host`]): `net.ipv4.ip_forward = 1`
//! and three iptables chains hooked first into the built-in ones:
//! - `nat WRENN-PROC-POST` (from `POSTROUTING`): `-s <range> ! -d <range> -j MASQUERADE`
//!   (egress NAT through whatever interface the route picks);
//! - `filter WRENN-PROC-FWD` (from `FORWARD`): sandbox ↔ sandbox dropped, sandbox →
//!   anywhere accepted, replies accepted (works under a `DROP` forward policy);
//! - `filter WRENN-PROC-IN` (from `INPUT`): from sandboxes only ICMP and replies reach
//!   the host itself, so a sandbox cannot talk to the agent or other host services.
//!
//! Teardown deletes `eth0` (which takes the host end with it) and the namespace. The
//! host-wide rules stay (other agents on the host may use them).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Prefix of the host-side veth names (`wrenn-p{slot}`).
pub const VETH_PREFIX: &str = "wrenn-p";
/// Prefix of network namespace names (`wrenn-{sandbox id}`).
pub const NETNS_PREFIX: &str = "wrenn-";
/// Directory where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A private IPv4 range for sandbox addresses.
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

    /// Host end of slot `slot`'s veth.
    pub fn host_addr(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + slot * 4 + 1)
    }

    /// Sandbox end (`eth0`) of slot `slot`.
    pub fn sandbox_addr(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + slot * 4 + 2)
    }
}

impl std::fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The network of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNet {
    /// Network namespace name (`wrenn-{id}`).
    pub netns: String,
    /// The slot.
    pub slot: u32,
    /// Host-side veth name.
    pub veth: String,
    /// Host end address.
    pub host_addr: Ipv4Addr,
    /// Sandbox (`eth0`) address.
    pub sandbox_addr: Ipv4Addr,
}

/// The namespace name of a sandbox.
pub fn netns_name(id: &str) -> String {
    format!("{NETNS_PREFIX}{id}")
}

/// The `/run/netns` path of a namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Output of a command that failed, for error messages.
async fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut command = Command::new(cmd);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| format!("{cmd}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}{} failed ({}): {}",
            args.join(" "),
            stdin.map(|s| format!(" <<< {s:?}")).unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

static HOST_READY: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Enables IPv4 forwarding and installs the host-wide chains for `range` (idempotent;
/// done once per range and process).
pub async fn ensure_host(range: Ipv4Range) -> Result<(), String> {
    let key = range.to_string();
    if HOST_READY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|s| s.contains(&key))
    {
        return Ok(());
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
        .map_err(|e| format!("cannot enable net.ipv4.ip_forward: {e}"))?;
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if forward.trim() != "1" {
        return Err("net.ipv4.ip_forward does not stay enabled".to_owned());
    }
    let veths = format!("{VETH_PREFIX}+");
    let rules: [(&str, &str, &str, Vec<&str>); 7] = [
        (
            "nat",
            "WRENN-PROC-POST",
            "POSTROUTING",
            vec!["-s", &key, "!", "-d", &key, "-j", "MASQUERADE"],
        ),
        (
            "filter",
            "WRENN-PROC-FWD",
            "FORWARD",
            vec!["-i", &veths, "-o", &veths, "-j", "DROP"],
        ),
        (
            "filter",
            "WRENN-PROC-FWD",
            "FORWARD",
            vec!["-i", &veths, "-j", "ACCEPT"],
        ),
        (
            "filter",
            "WRENN-PROC-FWD",
            "FORWARD",
            vec![
                "-o",
                &veths,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
        ),
        (
            "filter",
            "WRENN-PROC-IN",
            "INPUT",
            vec![
                "-i",
                &veths,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
        ),
        (
            "filter",
            "WRENN-PROC-IN",
            "INPUT",
            vec!["-i", &veths, "-p", "icmp", "-j", "ACCEPT"],
        ),
        (
            "filter",
            "WRENN-PROC-IN",
            "INPUT",
            vec!["-i", &veths, "-j", "DROP"],
        ),
    ];
    let mut hooked = HashSet::new();
    for (table, chain, hook, rule) in &rules {
        if hooked.insert(*chain) {
            // Create the chain (fails harmlessly when it exists) and hook it first.
            let _ = run("iptables", &["-w", "5", "-t", table, "-N", chain], None).await;
            let jump = ["-w", "5", "-t", table, "-C", hook, "-j", chain];
            if run("iptables", &jump, None).await.is_err() {
                run(
                    "iptables",
                    &["-w", "5", "-t", table, "-I", hook, "1", "-j", chain],
                    None,
                )
                .await?;
            }
        }
        let mut check = vec!["-w", "5", "-t", table, "-C", chain];
        check.extend(rule.iter().copied());
        if run("iptables", &check, None).await.is_err() {
            let mut add = vec!["-w", "5", "-t", table, "-A", chain];
            add.extend(rule.iter().copied());
            run("iptables", &add, None).await?;
        }
    }
    HOST_READY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(key);
    Ok(())
}

/// Where the next slot search starts (random at first, then round-robin).
static NEXT_SLOT: AtomicU32 = AtomicU32::new(u32::MAX);

fn next_slot_hint(slots: u32) -> u32 {
    let _ = NEXT_SLOT.compare_exchange(
        u32::MAX,
        rand::random::<u32>() % slots,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % slots
}

/// Creates the (empty) named namespace `netns`.
pub async fn add_netns(netns: &str) -> Result<(), String> {
    run("ip", &["netns", "add", netns], None).await
}

/// Adds a veth pair in a free slot to the namespace `netns` and configures both ends
/// (processes may already run in the namespace). [`remove`] undoes it.
pub async fn configure(netns: &str, range: Ipv4Range) -> Result<SandboxNet, String> {
    let slots = range.slots();
    let start = next_slot_hint(slots);
    let mut last_error = String::new();
    // Slot 0's addresses are the range's own network address block; skip it.
    for offset in 0..slots.min(4096) {
        let slot = (start + offset) % slots;
        if slot == 0 {
            continue;
        }
        let veth = format!("{VETH_PREFIX}{slot}");
        let host = range.host_addr(slot);
        let batch = format!(
            "link add {veth} type veth peer name eth0 netns {netns}\n\
             addr add {host}/30 dev {veth}\n"
        );
        match run("ip", &["-batch", "-"], Some(&batch)).await {
            Ok(()) => {}
            Err(e) if e.contains("File exists") => {
                // Another sandbox holds this slot (or its address); try the next.
                // `ip -batch` stops at the first failing line; line 2 failing means the
                // link is ours and must go.
                if e.contains("Command failed -:2") {
                    let _ = run("ip", &["link", "del", &veth], None).await;
                }
                last_error = e;
                continue;
            }
            Err(e) => return Err(e),
        }
        let conf = |family: &str, key: &str| {
            PathBuf::from(format!("/proc/sys/net/{family}/conf/{veth}/{key}"))
        };
        std::fs::write(conf("ipv4", "rp_filter"), b"1")
            .map_err(|e| format!("enable rp_filter on {veth}: {e}"))?;
        let v6 = conf("ipv6", "disable_ipv6");
        if v6.exists() {
            std::fs::write(&v6, b"1").map_err(|e| format!("disable IPv6 on {veth}: {e}"))?;
        }
        run("ip", &["link", "set", &veth, "up"], None).await?;
        let sandbox = range.sandbox_addr(slot);
        let inside = format!(
            "link set lo up\n\
             addr add {sandbox}/30 dev eth0\n\
             link set eth0 up\n\
             route add default via {host}\n"
        );
        run("ip", &["-n", netns, "-batch", "-"], Some(&inside)).await?;
        return Ok(SandboxNet {
            netns: netns.to_owned(),
            slot,
            veth,
            host_addr: host,
            sandbox_addr: sandbox,
        });
    }
    Err(format!("no free network slot in {range}: {last_error}"))
}

/// Deletes a namespace and its veth pair. Missing namespaces are fine.
pub async fn remove(netns: &str) -> Result<(), String> {
    if !netns_path(netns).exists() {
        return Ok(());
    }
    // The kernel dismantles a dead namespace asynchronously; deleting `eth0` first
    // removes the pair (and frees the slot's name) before we return.
    let _ = run("ip", &["-n", netns, "link", "del", "eth0"], None).await;
    run("ip", &["netns", "del", netns], None).await
}
