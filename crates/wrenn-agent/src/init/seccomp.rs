//! The capsule's seccomp filter.
//!
//! # Policy
//!
//! x86_64 only. The filter is a deny list on top of a cut-off:
//!
//! 1. Any other architecture (i386 through `int 0x80`, …) kills the process; x32-ABI
//!    system calls (`__X32_SYSCALL_BIT`) and every number above [`MAX_ALLOWED_NR`]
//!    (system calls newer than this policy, which it has not judged) answer `ENOSYS`, as
//!    does `clone3` (its flags live in memory a filter cannot read; glibc falls back to
//!    `clone`, as under Docker).
//! 2. The calls in [`DENIED`] answer `EPERM`: namespace and mount manipulation, the
//!    kernel keyring, bpf, io_uring, perf, userfaultfd, modules, kexec, reboot, swap,
//!    accounting, clocks, syslog, file handles, quotas, port I/O, NUMA policy of other
//!    processes, `kcmp`, `pidfd_getfd`, `process_madvise`, and the obsolete `uselib`,
//!    `ustat`, `sysfs`, `_sysctl`, `nfsservctl`, `lookup_dcookie`, `vhangup`.
//! 3. Argument rules (also `EPERM`): `clone` and `unshare` with any `CLONE_NEW*` flag,
//!    `personality` other than Docker's safe values (0, `UNAME26`, `ADDR_NO_RANDOMIZE`,
//!    both, and the 0xffffffff query), `ioctl` `TIOCSTI` and `TIOCLINUX` (typing into
//!    another process's terminal).
//!
//! Everything else is allowed. That is Docker's default profile for a container without
//! extra capabilities — which allows `ptrace` and `process_vm_readv`/`writev` on kernels
//! ≥ 4.8, as this one does (a capsule without `CAP_SYS_PTRACE` can only trace its own
//! processes) — plus the `EPERM` for `clone3`-less namespace creation, io_uring,
//! `pidfd_getfd`, `process_madvise` and the new mount API, and the `ENOSYS` cut-off that
//! gives a deny list the "unknown means no" property of Docker's allow list.
//!
//! The filter is installed without `PR_SET_NO_NEW_PRIVS` (so `sudo` and other set-uid
//! programs of the image work), which the kernel allows because the init step holds
//! `CAP_SYS_ADMIN` in the capsule's user namespace at that point.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::InitError;

/// The highest system call number the policy allows (`mseal`, Linux 6.10). Newer ones
/// answer `ENOSYS` until they are reviewed.
pub const MAX_ALLOWED_NR: u32 = 462;

/// System calls that always answer `EPERM`.
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("setns", libc::SYS_setns),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("syslog", libc::SYS_syslog),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("uselib", libc::SYS_uselib),
    ("ustat", libc::SYS_ustat),
    ("sysfs", libc::SYS_sysfs),
    ("_sysctl", libc::SYS__sysctl),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("vhangup", libc::SYS_vhangup),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("process_madvise", libc::SYS_process_madvise),
    ("kcmp", libc::SYS_kcmp),
    ("mbind", libc::SYS_mbind),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("set_mempolicy_home_node", libc::SYS_set_mempolicy_home_node),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("migrate_pages", libc::SYS_migrate_pages),
    ("move_pages", libc::SYS_move_pages),
];

/// `CLONE_NEW*` flags valid for `clone` (`CLONE_NEWTIME` shares its bit with the exit
/// signal there and is only accepted by `unshare` and `clone3`).
const CLONE_NEW_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
/// `CLONE_NEWTIME`.
const CLONE_NEWTIME: u64 = 0x80;
/// `personality` values a capsule may set (Docker's list).
const SAFE_PERSONALITIES: &[u64] = &[0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];
/// `TIOCSTI` and `TIOCLINUX`.
const DENIED_IOCTLS: &[u64] = &[0x5412, 0x541C];

/// `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// Builds the capsule's filter (see the [module docs](self)).
pub fn program() -> Result<BpfProgram, InitError> {
    let compile_err = |e: seccompiler::BackendError| {
        InitError::new("compile the seccomp filter", std::io::Error::other(e))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let any_flag = |flags: &[u64]| -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        flags
            .iter()
            .map(|&flag| {
                SeccompRule::new(vec![SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )?])
            })
            .collect()
    };
    rules.insert(
        libc::SYS_clone,
        any_flag(CLONE_NEW_FLAGS).map_err(compile_err)?,
    );
    let mut unshare_flags = CLONE_NEW_FLAGS.to_vec();
    unshare_flags.push(CLONE_NEWTIME);
    rules.insert(
        libc::SYS_unshare,
        any_flag(&unshare_flags).map_err(compile_err)?,
    );
    let unsafe_personality = SAFE_PERSONALITIES
        .iter()
        .map(|&p| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, p))
        .collect::<Result<Vec<_>, _>>()
        .and_then(SeccompRule::new)
        .map_err(compile_err)?;
    rules.insert(libc::SYS_personality, vec![unsafe_personality]);
    let ioctls = DENIED_IOCTLS
        .iter()
        .map(|&request| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                request,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(compile_err)?;
    rules.insert(libc::SYS_ioctl, ioctls);

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(compile_err)?;
    let denials: BpfProgram = filter.try_into().map_err(compile_err)?;
    let mut program = prelude();
    program.extend(denials);
    Ok(program)
}

/// The checks before the deny list: architecture, x32, `clone3`, the cut-off.
fn prelude() -> Vec<sock_filter> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGT_K: u16 = 0x25;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    const ARCH_OFFSET: u32 = 4;
    const NR_OFFSET: u32 = 0;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        /* 0 */ op(LD_W_ABS, 0, 0, ARCH_OFFSET),
        /* 1 */ op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        /* 2 */ op(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        /* 3 */ op(LD_W_ABS, 0, 0, NR_OFFSET),
        /* 4 */ op(JSET_K, 2, 0, X32_SYSCALL_BIT),
        /* 5 */ op(JEQ_K, 1, 0, libc::SYS_clone3 as u32),
        /* 6 */ op(JGT_K, 0, 1, MAX_ALLOWED_NR),
        /* 7 */
        op(RET_K, 0, 0, enosys),
        // 8: the deny list (which checks the architecture again and reloads the number).
    ]
}

/// Installs `program` on the calling thread (inherited by everything it `exec`s and
/// forks). Without `PR_SET_NO_NEW_PRIVS`: the caller must hold `CAP_SYS_ADMIN` in its
/// user namespace.
#[allow(unsafe_code)]
pub(super) fn install(program: &[sock_filter]) -> Result<(), InitError> {
    let len = u16::try_from(program.len()).map_err(|_| {
        InitError::new(
            "install the seccomp filter",
            std::io::Error::other(format!("{} instructions is too long", program.len())),
        )
    })?;
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const sock_filter,
    }
    let prog = SockFprog {
        len,
        filter: program.as_ptr(),
    };
    // SAFETY: `prog` points at `len` valid instructions (`sock_filter` is `repr(C)` with
    // the kernel's layout) that outlive the call; the kernel copies them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const SockFprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(InitError::new(
            "install the seccomp filter",
            std::io::Error::last_os_error(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_fits_the_kernel_limit() {
        let program = program().expect("compiles");
        assert!(program.len() < 4096, "{} instructions", program.len());
        assert_eq!(program[0].k, 4, "starts with the architecture check");
    }

    #[test]
    fn the_deny_list_has_no_duplicates_and_stays_below_the_cut_off() {
        let mut seen = std::collections::HashSet::new();
        for (name, nr) in DENIED {
            assert!(seen.insert(*nr), "{name} listed twice");
            assert!(
                *nr as u32 <= MAX_ALLOWED_NR,
                "{name} is above the cut-off anyway"
            );
        }
    }
}
