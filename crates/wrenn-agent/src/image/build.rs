//! One build: bootstrap, configure, record, make the ext4 and the kernel artefacts.
//! Everything happens inside the staging directory; the [store](super::store)
//! publishes it.

use crate::runtime::error_chain;
use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use super::ImageError;
use super::manifest::{self, MANIFEST_FILE, Manifest};
use super::progress::{Clock, bootstrap_phase};
use super::recipe::{FORMAT_VERSION, Recipe};
use super::{ext4, kernel};

/// The tree inside a build directory.
pub const ROOTFS_DIR: &str = "rootfs";
/// The ext4 image inside a build directory.
pub const EXT4_FILE: &str = "rootfs.ext4";
/// The kernel artefacts inside a build directory.
pub const KERNEL_DIR: &str = "kernel";

/// Lines of a failing command's output kept for the error.
const OUTPUT_TAIL_LINES: usize = 30;
/// `PATH` inside the chroot.
const CHROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a build may behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Build even when a build of the recipe exists.
    pub force: bool,
    /// Install `debootstrap` with `apt-get` when no bootstrap tool is present.
    pub allow_install: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            force: false,
            allow_install: true,
        }
    }
}

impl BuildOptions {
    /// Defaults, with `allow_install` off when `WRENN_IMAGE_NO_INSTALL` is set to
    /// anything but empty or `0`.
    pub fn from_env() -> Self {
        let no_install = std::env::var(super::NO_INSTALL_ENV)
            .is_ok_and(|v| !v.trim().is_empty() && v.trim() != "0");
        Self {
            force: false,
            allow_install: !no_install,
        }
    }
}

/// The bootstrap tools, preferred first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// `mmdebstrap`.
    Mmdebstrap,
    /// `debootstrap`.
    Debootstrap,
}

impl Bootstrap {
    fn program(self) -> &'static str {
        match self {
            Self::Mmdebstrap => "mmdebstrap",
            Self::Debootstrap => "debootstrap",
        }
    }
}

/// `program` on `PATH` (or in the sbin directories, which a non-login root shell may
/// miss).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The bootstrap tool to use, installing `debootstrap` when allowed (see the
/// [module docs](super)).
pub fn bootstrap_tool(options: &BuildOptions) -> Result<(Bootstrap, PathBuf), ImageError> {
    for tool in [Bootstrap::Mmdebstrap, Bootstrap::Debootstrap] {
        if let Some(path) = find_program(tool.program()) {
            return Ok((tool, path));
        }
    }
    let missing = |why: &str| ImageError::MissingTool {
        tool: "neither mmdebstrap nor debootstrap".to_owned(),
        package: "debootstrap".to_owned(),
        why: why.to_owned(),
    };
    if !options.allow_install {
        return Err(missing(&format!(
            "{} is set, so it is not installed automatically",
            super::NO_INSTALL_ENV
        )));
    }
    if find_program("apt-get").is_none() {
        return Err(missing("this host has no apt-get to install it with"));
    }
    if !rustix::process::geteuid().is_root() {
        return Err(missing("installing it needs root"));
    }
    tracing::warn!(
        "neither mmdebstrap nor debootstrap is installed: installing the Debian package \
         `debootstrap` with apt-get to build the default image (set {}=1 to forbid this)",
        super::NO_INSTALL_ENV
    );
    let noninteractive = [("DEBIAN_FRONTEND", "noninteractive")];
    run(Command::new("apt-get").arg("update").envs(noninteractive))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "debootstrap"])
        .envs(noninteractive))?;
    find_program("debootstrap")
        .map(|p| (Bootstrap::Debootstrap, p))
        .ok_or_else(|| missing("apt-get installed it but it is not on PATH"))
}

/// Builds `recipe` into `staging` (which must not exist); returns the manifest it
/// wrote there.
pub(crate) fn build(
    staging: &Path,
    build_id: &str,
    recipe: &Recipe,
    options: &BuildOptions,
    clock: &Clock<'_>,
) -> Result<Manifest, ImageError> {
    if !rustix::process::geteuid().is_root() {
        return Err(ImageError::MissingTool {
            tool: "root".to_owned(),
            package: "(none)".to_owned(),
            why: "building an image needs root (chroot, device nodes, file ownership)".to_owned(),
        });
    }
    let (tool, tool_path) = bootstrap_tool(options)?;
    fs::create_dir(staging).map_err(ImageError::io(format!("create {}", staging.display())))?;
    let rootfs = staging.join(ROOTFS_DIR);

    clock.phase(&format!("{}: start", tool.program()));
    bootstrap(tool, &tool_path, recipe, &rootfs, clock)?;

    clock.phase("configure: user, sudo, apt sources, policy-rc.d, hostname");
    configure(recipe, &rootfs)?;
    clock.phase("apt-get update && apt-get upgrade (security suite)");
    let apt_env = apt_env();
    chroot(&rootfs, &["apt-get", "update"], &apt_env)?;
    chroot(
        &rootfs,
        &[
            "apt-get",
            "-y",
            "-o",
            "Dpkg::Options::=--force-confold",
            "upgrade",
        ],
        &apt_env,
    )?;

    let kernel_debs = match &recipe.kernel_package {
        Some(package) => {
            clock.phase(&format!("kernel: download {package}"));
            Some(kernel::download(&rootfs, package, staging)?)
        }
        None => None,
    };
    let init_debs = match (&recipe.kernel_package, &recipe.vm_init_package) {
        (Some(_), Some(package)) => {
            clock.phase(&format!("kernel: download {package}"));
            Some(kernel::download_init(&rootfs, package, staging)?)
        }
        _ => None,
    };

    chroot(&rootfs, &["apt-get", "clean"], &apt_env)?;
    finish_tree(&rootfs)?;
    let packages = manifest::parse_packages(&chroot(
        &rootfs,
        &[
            "dpkg-query",
            "-W",
            "-f",
            "${Package}\t${Version}\t${Installed-Size}\n",
        ],
        &apt_env,
    )?);
    for wanted in &recipe.packages {
        if !packages.iter().any(|p| &p.name == wanted) {
            return Err(ImageError::Invalid {
                path: rootfs.clone(),
                reason: format!("package {wanted} is not installed after the build"),
            });
        }
    }

    clock.phase("rootfs.ext4: mkfs.ext4 -d (no mount)");
    let ext4_path = staging.join(EXT4_FILE);
    ext4::make(&rootfs, &ext4_path)?;
    let ext4 = manifest::file_info(staging, EXT4_FILE)
        .map_err(ImageError::io(format!("hash {}", ext4_path.display())))?;

    let kernel = match kernel_debs {
        Some(debs) => {
            clock.phase("kernel: extract vmlinuz, modules and vmlinux");
            let mut info = kernel::extract(&debs, staging, KERNEL_DIR)?;
            if let Some(init) = &init_debs {
                info.busybox = Some(kernel::extract_init(init, staging, KERNEL_DIR)?);
            }
            Some(info)
        }
        None => None,
    };

    let rootfs_bytes = crate::runtime::process::template::dir_size(&rootfs);
    let manifest = Manifest {
        format: FORMAT_VERSION.to_owned(),
        recipe: recipe.clone(),
        hash: recipe.hash(),
        build_id: build_id.to_owned(),
        built_at: chrono::Utc::now().to_rfc3339(),
        build_seconds: (clock.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        bootstrap_tool: tool.program().to_owned(),
        packages,
        rootfs_bytes,
        ext4,
        kernel,
    };
    let path = staging.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
        path: path.clone(),
        source,
    })?;
    fs::write(&path, json).map_err(ImageError::io(format!("write {}", path.display())))?;
    Ok(manifest)
}

/// Undoes what a failed or killed build may have left mounted in `staging` (the
/// bootstrap tools mount `/proc`, `/sys` and device nodes in the target while they run
/// and unmount them themselves unless killed), so removing it never walks into them.
pub fn cleanup(staging: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut inside: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(staging))
        .collect();
    // Deepest first.
    inside.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for mount in inside {
        if let Err(e) = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::DETACH) {
            tracing::warn!(mount = %mount.display(), error = %error_chain(&e), "cannot unmount a leftover of an image build");
        }
    }
}

fn bootstrap(
    tool: Bootstrap,
    program: &Path,
    recipe: &Recipe,
    rootfs: &Path,
    clock: &Clock<'_>,
) -> Result<(), ImageError> {
    let include = format!("--include={}", recipe.packages.join(","));
    let mut cmd = Command::new(program);
    match tool {
        Bootstrap::Mmdebstrap => {
            cmd.args([
                "--mode=root",
                "--format=directory",
                &format!("--variant={}", recipe.variant),
                &format!("--architectures={}", recipe.arch),
                &include,
                &recipe.suite,
            ])
            .arg(rootfs)
            .arg(format!("deb {} {} main", recipe.mirror, recipe.suite));
        }
        Bootstrap::Debootstrap => {
            cmd.args([
                &format!("--variant={}", recipe.variant),
                &format!("--arch={}", recipe.arch),
                "--components=main",
                &include,
                &recipe.suite,
            ])
            .arg(rootfs)
            .arg(&recipe.mirror);
        }
    }
    let name = tool.program();
    let mut last = None::<&'static str>;
    run_streaming(&mut cmd, |line| {
        if let Some(phase) = bootstrap_phase(line) {
            if last != Some(phase) {
                last = Some(phase);
                clock.phase(&format!("{name}: {phase}"));
            }
        }
    })
}

/// The environment of commands run in the chroot.
fn apt_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("PATH", CHROOT_PATH),
        ("DEBIAN_FRONTEND", "noninteractive"),
        ("LC_ALL", "C.UTF-8"),
        ("HOME", "/root"),
    ]
}

/// Writes the image's configuration and creates the user.
fn configure(recipe: &Recipe, rootfs: &Path) -> Result<(), ImageError> {
    let write = |rel: &str, contents: &str, mode: u32| -> Result<(), ImageError> {
        let path = rootfs.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(ImageError::io(format!("create {}", parent.display())))?;
        }
        // Replace (not write through) whatever is there, symlinks included.
        let _ = fs::remove_file(&path);
        fs::write(&path, contents).map_err(ImageError::io(format!("write {}", path.display())))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(ImageError::io(format!("chmod {}", path.display())))
    };
    write("etc/apt/sources.list", &recipe.apt_sources(), 0o644)?;
    // Services never start inside the build or a capsule (there is no init system).
    write(
        "usr/sbin/policy-rc.d",
        "#!/bin/sh\n# Wrenn: no services start in capsules.\nexit 101\n",
        0o755,
    )?;
    write("etc/hostname", &format!("{}\n", recipe.hostname), 0o644)?;
    write(
        "etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{h}\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
            h = recipe.hostname
        ),
        0o644,
    )?;
    // The capsule's hostname (its id) resolves through nss-myhostname.
    let nsswitch = rootfs.join("etc/nsswitch.conf");
    if let Ok(text) = fs::read_to_string(&nsswitch) {
        if !text.contains("myhostname") {
            let fixed: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("hosts:") {
                        "hosts:          files myhostname dns\n".to_owned()
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            write("etc/nsswitch.conf", &fixed, 0o644)?;
        }
    }
    write(
        "etc/default/locale",
        &format!("LANG={}\n", recipe.lang),
        0o644,
    )?;
    // Keep the image small: no documentation or translations from later installs.
    write(
        "etc/apt/apt.conf.d/90wrenn",
        "APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\n\
         Acquire::Languages \"none\";\n",
        0o644,
    )?;
    // The host's resolver for the build; the runtime may provide its own per capsule.
    if let Ok(resolv) = fs::read_to_string("/etc/resolv.conf") {
        write("etc/resolv.conf", &resolv, 0o644)?;
    }

    let user = &recipe.user;
    let env = apt_env();
    let (uid, gid) = (user.uid.to_string(), user.gid.to_string());
    chroot(rootfs, &["groupadd", "--gid", &gid, &user.name], &env)?;
    chroot(
        rootfs,
        &[
            "useradd",
            "--uid",
            &uid,
            "--gid",
            &gid,
            "--create-home",
            "--home-dir",
            &user.home,
            "--shell",
            &user.shell,
            "--comment",
            "Wrenn",
            &user.name,
        ],
        &env,
    )?;
    if user.sudo {
        write(
            &format!("etc/sudoers.d/{}", user.name),
            &format!("{} ALL=(ALL:ALL) NOPASSWD:ALL\n", user.name),
            0o440,
        )?;
    }
    Ok(())
}

/// Final touches: an empty machine id (each capsule is its own machine), no logs of
/// the build.
fn finish_tree(rootfs: &Path) -> Result<(), ImageError> {
    let machine_id = rootfs.join("etc/machine-id");
    if machine_id.exists() {
        fs::write(&machine_id, "")
            .map_err(ImageError::io(format!("write {}", machine_id.display())))?;
    }
    for log in [
        "var/log/bootstrap.log",
        "var/log/dpkg.log",
        "var/log/alternatives.log",
    ] {
        let _ = fs::remove_file(rootfs.join(log));
    }
    let apt_logs = rootfs.join("var/log/apt");
    if let Ok(entries) = fs::read_dir(&apt_logs) {
        for e in entries.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Runs `args` in `chroot rootfs` with `env` only; returns stdout.
pub(crate) fn chroot(
    rootfs: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<String, ImageError> {
    let mut cmd = Command::new("chroot");
    cmd.arg(rootfs)
        .args(args)
        .env_clear()
        .envs(env.iter().copied());
    run(&mut cmd)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Makes `cmd`'s process receive SIGKILL when the thread that starts it ends (a
/// killed builder then leaves no bootstrap tool writing into a staging directory that
/// the next builder removes). Build steps run on the thread that waits for them.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before exec and only makes one
    // prctl(2) system call, which is async-signal-safe; it touches no memory of the
    // parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        })
    }
}

/// Runs `cmd` to completion; returns its stdout, or an error with the tail of its
/// output.
pub(crate) fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let out = die_with_parent(cmd)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n");
    Err(ImageError::Command {
        command: describe(cmd),
        status: out.status,
        output: tail,
    })
}

/// Runs `cmd`, calling `on_line` with every line of its stdout and stderr.
fn run_streaming(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<(), ImageError> {
    let mut child = die_with_parent(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(OUTPUT_TAIL_LINES)));
    let push = |tail: &Mutex<VecDeque<String>>, line: &str| {
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == OUTPUT_TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line.to_owned());
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut readers = Vec::new();
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    for stream in [stdout, stderr].into_iter().flatten() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    for line in rx {
        push(&tail, &line);
        on_line(&line);
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().map_err(|source| ImageError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let output = tail
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    Err(ImageError::Command {
        command: describe(cmd),
        status,
        output,
    })
}
