//! The capabilities a capsule keeps.

use rustix::thread::{CapabilitySet, CapabilitySets};

use super::{Context, InitError};

/// The bounding set of a capsule (what its root gets at `exec`, in the capsule's user
/// namespace): Docker's default set minus `CAP_NET_RAW` (raw sockets and packet
/// spoofing; `ping` uses ICMP datagram sockets through `net.ipv4.ping_group_range`
/// instead), `CAP_SETFCAP` (file capabilities valid for the capsule's whole id range),
/// `CAP_AUDIT_WRITE` (the audit log is the host's) and `CAP_MKNOD` (no device cgroup
/// here). Everything else — notably `CAP_SYS_ADMIN`, `CAP_NET_ADMIN`,
/// `CAP_DAC_READ_SEARCH`, `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`, `CAP_SYS_PTRACE`,
/// `CAP_SYS_TIME` and `CAP_SYS_BOOT` — is dropped too. Being in a user namespace that
/// owns none of the capsule's other namespaces, even these only act on the capsule's
/// own files and processes.
pub const KEPT_CAPABILITIES: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT);

/// Drops every capability not in [`KEPT_CAPABILITIES`] from the bounding set and clears
/// the inheritable and ambient sets. The effective set is left alone: the init step
/// still needs `CAP_SYS_ADMIN` (in the capsule's user namespace) to install the seccomp
/// filter; `exec` then gives envd the bounding set only.
pub(super) fn drop_to_bounding_set() -> Result<(), InitError> {
    for bit in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1u64 << bit);
        if KEPT_CAPABILITIES.contains(cap) {
            continue;
        }
        match rustix::thread::capability_is_in_bounding_set(cap) {
            Ok(true) => rustix::thread::remove_capability_from_bounding_set(cap)
                .context(|| format!("drop capability {bit} from the bounding set"))?,
            Ok(false) => {}
            // Past the kernel's last capability.
            Err(_) => break,
        }
    }
    let current = rustix::thread::capabilities(None).context(|| "read capabilities".into())?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: current.effective,
            permitted: current.permitted,
            inheritable: CapabilitySet::empty(),
        },
    )
    .context(|| "clear inheritable capabilities".into())?;
    rustix::thread::clear_ambient_capability_set().context(|| "clear ambient capabilities".into())
}
