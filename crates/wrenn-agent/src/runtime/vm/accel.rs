//! Which accelerator runs guests on this host: KVM when it can boot a Linux guest,
//! else TCG (QEMU's emulator), decided once by booting the image's kernel.
//!
//! `/dev/kvm` opening proves little: in a VM without nested virtualisation it opens,
//! and a guest then hangs in its first instructions. The probe boots the kernel with
//! no root under KVM and looks for its banner on the serial console within
//! [`PROBE_TIMEOUT`].
//!
//! Under TCG a guest's clock needs help: the kernel calibrates its TSC against the
//! emulated PIT, which fails when the host is busy (the emulator runs slower than the
//! wall clock), and a kernel without a clock source then hangs for good. The guest is
//! told the TSC's rate instead ([`guest_clock_args`]): TCG's TSC is the host's.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the KVM probe waits for the kernel's banner.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// An accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator (tens of times slower; for hosts without KVM).
    Tcg,
}

impl Accel {
    /// QEMU's name for it (`-accel`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `-cpu` model new guests get under it. Under TCG, QEMU's base 64-bit model
    /// with the x86-64-v2 features (what RHEL 9-era binaries require): `max` and the
    /// Intel models make each guest page fault about twice as slow under TCG
    /// (measured here with QEMU 7.2: 43 against 23 µs, and `/bin/true` 5.7 against
    /// 4.6 ms).
    pub fn cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16",
        }
    }

    /// A short name of [`Accel::cpu`], for file names.
    pub fn cpu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "x86-64-v2",
        }
    }

    /// The `-cpu` model guests got before it was recorded with their memory
    /// snapshots ([`GuestFiles::cpu`](super::guest::GuestFiles::cpu)).
    pub fn former_cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether KVM boots `kernel` (a bzImage) under `qemu` on this host (blocking, up to
/// [`PROBE_TIMEOUT`]); `scratch` holds the probe's console log.
pub fn kvm_boots(qemu: &Path, kernel: &Path, scratch: &Path) -> bool {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if kvm.is_err() {
        return false;
    }
    let log = scratch.join("kvm-probe.log");
    let _ = std::fs::remove_file(&log);
    let child = Command::new(qemu)
        .args([
            "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let booted = loop {
        let said = std::fs::read(&log).unwrap_or_default();
        if said.windows(13).any(|w| w == b"Linux version") {
            break true;
        }
        if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    booted
}

/// Kernel arguments about the guest's clock under `accel`: under TCG the TSC's rate
/// (the host's, measured) and that it is reliable, so the kernel never calibrates it
/// against the emulated PIT; nothing under KVM (kvmclock).
pub fn guest_clock_args(accel: Accel) -> String {
    match accel {
        Accel::Kvm => String::new(),
        Accel::Tcg => match host_tsc_khz() {
            Some(khz) => format!("tsc_early_khz={khz} tsc=reliable no_timer_check"),
            None => "no_timer_check".to_owned(),
        },
    }
}

/// The host's TSC rate in kHz, measured over 20 ms against the monotonic clock
/// (x86_64 only).
#[allow(unsafe_code)]
pub fn host_tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` has no preconditions on x86_64.
        let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
        let (t0, c0) = (Instant::now(), tsc());
        std::thread::sleep(Duration::from_millis(20));
        let c1 = tsc();
        let ns = t0.elapsed().as_nanos();
        if ns == 0 || c1 <= c0 {
            return None;
        }
        let khz = (u128::from(c1 - c0) * 1_000_000 / ns) as u64;
        Some(khz)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_tsc_rate_is_measured_plausibly() {
        let khz = host_tsc_khz().expect("x86_64 has a TSC");
        assert!((100_000..20_000_000).contains(&khz), "{khz} kHz");
        assert!(guest_clock_args(Accel::Tcg).starts_with("tsc_early_khz="));
        assert_eq!(guest_clock_args(Accel::Kvm), "");
    }
}
