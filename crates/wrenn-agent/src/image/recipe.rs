//! What an image is built from: the typed [`Recipe`] and its hash.
//!
//! The hash is SHA-256 over [`FORMAT_VERSION`] and the recipe's JSON (fields in
//! declaration order, so it is stable); it keys the build cache, so any change to the
//! recipe — a package, the mirror, the user — makes a new build. Bump
//! [`FORMAT_VERSION`] when the *builder* changes what it produces from the same recipe.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of what the builder makes of a recipe; part of every hash.
pub const FORMAT_VERSION: &str = "wrenn-image/1";

/// Debian's own mirror, used when the host's apt sources name none.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The unprivileged user of the default template.
pub const DEFAULT_USER: &str = "wrenn-user";

/// A capsule image: a Debian suite, packages, one user and the files that make it
/// usable inside a capsule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// Short name, used in logs (`default`).
    pub name: String,
    /// Debian suite (`bookworm`).
    pub suite: String,
    /// Debian architecture (`amd64`).
    pub arch: String,
    /// Bootstrap variant (`minbase`).
    pub variant: String,
    /// The main archive, written into the image's apt sources.
    pub mirror: String,
    /// The security archive (suite `<suite>-security`).
    pub security_mirror: String,
    /// Packages installed on top of the variant, sorted.
    pub packages: Vec<String>,
    /// The default user.
    pub user: UserSpec,
    /// `/etc/hostname` (the runtime sets the real hostname per capsule).
    pub hostname: String,
    /// `LANG` in `/etc/default/locale` (`C.UTF-8` needs no `locales` package).
    pub lang: String,
    /// The kernel package whose `vmlinuz` and modules are extracted next to the image
    /// for the VM runtimes (not installed into the image); `None` = no kernel.
    pub kernel_package: Option<String>,
    /// The package whose static `busybox` runs the VM's initramfs (Debian's
    /// `busybox-static`; downloaded with the kernel, not installed into the image);
    /// `None` = none (VM runtimes cannot boot the build then).
    #[serde(default)]
    pub vm_init_package: Option<String>,
}

/// The image's default user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id (a group of the same name).
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
    /// Whether the user gets passwordless `sudo` (`/etc/sudoers.d/`).
    pub sudo: bool,
}

impl Recipe {
    /// The default template: Debian bookworm minbase with python3 (pip, venv), git,
    /// curl, sudo, ca-certificates, procps, iproute2, bash, less, vim-tiny and
    /// libnss-myhostname; user
    /// `wrenn-user` (1000:1000) with passwordless sudo; the archive `mirror`.
    pub fn default_template(mirror: &str) -> Self {
        let mut packages: Vec<String> = [
            "bash",
            "ca-certificates",
            "curl",
            "git",
            "iproute2",
            "less",
            // Resolves the capsule's own hostname (its id) without /etc/hosts
            // entries, so `sudo` never warns "unable to resolve host".
            "libnss-myhostname",
            "procps",
            "python3",
            "python3-pip",
            "python3-venv",
            "sudo",
            "vim-tiny",
        ]
        .map(String::from)
        .to_vec();
        packages.sort();
        let arch = debian_arch();
        Self {
            name: "default".to_owned(),
            suite: "bookworm".to_owned(),
            arch: arch.to_owned(),
            variant: "minbase".to_owned(),
            mirror: mirror.trim_end_matches('/').to_owned(),
            security_mirror: security_mirror_for(mirror),
            packages,
            user: UserSpec {
                name: DEFAULT_USER.to_owned(),
                uid: 1000,
                gid: 1000,
                home: format!("/home/{DEFAULT_USER}"),
                shell: "/bin/bash".to_owned(),
                sudo: true,
            },
            hostname: "wrenn".to_owned(),
            lang: "C.UTF-8".to_owned(),
            kernel_package: Some(format!("linux-image-cloud-{arch}")),
            vm_init_package: Some("busybox-static".to_owned()),
        }
    }

    /// The default template with the mirror the host's apt sources name (see
    /// [`host_mirror`]).
    pub fn default_for_host() -> Self {
        Self::default_template(&host_mirror(Path::new("/etc/apt")))
    }

    /// The cache key: hex SHA-256 over [`FORMAT_VERSION`] and the recipe.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(FORMAT_VERSION.as_bytes());
        hasher.update([0]);
        // Serializing plain strings, numbers and options cannot fail.
        hasher.update(serde_json::to_vec(self).unwrap_or_default());
        hex::encode(hasher.finalize())
    }

    /// The first 16 hex digits of [`hash`](Self::hash), used in directory names.
    pub fn short_hash(&self) -> String {
        self.hash()[..16].to_owned()
    }

    /// Checks the recipe's fields before anything runs: names that end up in command
    /// lines and files must be plain.
    pub fn validate(&self) -> Result<(), String> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+' | '_'))
        };
        for (what, value) in [
            ("suite", &self.suite),
            ("arch", &self.arch),
            ("variant", &self.variant),
            ("user name", &self.user.name),
            ("hostname", &self.hostname),
            ("lang", &self.lang),
        ] {
            if !plain(value) {
                return Err(format!("recipe {what} {value:?} is not a plain name"));
            }
        }
        if let Some(p) = self.packages.iter().find(|p| !plain(p)) {
            return Err(format!("recipe package {p:?} is not a plain package name"));
        }
        for k in self.kernel_package.iter().chain(&self.vm_init_package) {
            if !plain(k) {
                return Err(format!("recipe kernel package {k:?} is not a plain name"));
            }
        }
        for (what, url) in [
            ("mirror", &self.mirror),
            ("security mirror", &self.security_mirror),
        ] {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && !url.contains(char::is_whitespace);
            if !ok {
                return Err(format!("recipe {what} {url:?} is not an http(s) URL"));
            }
        }
        let abs_plain = |p: &str| {
            p.starts_with('/')
                && !p.split('/').any(|c| c == "..")
                && !p.contains(|c: char| c.is_whitespace() || c == ':')
        };
        if !abs_plain(&self.user.home) || !abs_plain(&self.user.shell) {
            return Err("recipe user home and shell must be plain absolute paths".to_owned());
        }
        if self.user.uid == 0 || self.user.gid == 0 {
            return Err("recipe user must not be root (uid/gid 0)".to_owned());
        }
        Ok(())
    }

    /// `/etc/apt/sources.list` of the image: main, updates and security.
    pub fn apt_sources(&self) -> String {
        format!(
            "deb {m} {s} main\ndeb {m} {s}-updates main\ndeb {sec} {s}-security main\n",
            m = self.mirror,
            s = self.suite,
            sec = self.security_mirror
        )
    }
}

/// The Debian architecture of this machine (`amd64`, `arm64`, …).
pub fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        other => other,
    }
}

/// The security archive next to `mirror`: `…/debian` → `…/debian-security` on
/// `deb.debian.org`, else Debian's own.
fn security_mirror_for(mirror: &str) -> String {
    let mirror = mirror.trim_end_matches('/');
    if mirror.contains("://deb.debian.org/") && mirror.ends_with("/debian") {
        format!("{mirror}-security")
    } else {
        "http://deb.debian.org/debian-security".to_owned()
    }
}

/// The Debian archive named by the apt sources under `apt_dir` (`/etc/apt`):
/// the first `deb` URI of `sources.list`, `sources.list.d/*.list` or `*.sources` whose
/// path ends in `/debian`; [`DEFAULT_MIRROR`] when there is none.
pub fn host_mirror(apt_dir: &Path) -> String {
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(entries) = std::fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut more: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let deb822 = file.extension().is_some_and(|e| e == "sources");
        for line in text.lines() {
            let line = line.trim();
            let uris: Vec<&str> = if deb822 {
                match line.strip_prefix("URIs:") {
                    Some(rest) => rest.split_whitespace().collect(),
                    None => continue,
                }
            } else {
                let mut words = line.split_whitespace();
                if words.next() != Some("deb") {
                    continue;
                }
                // Skip `[options]`.
                words
                    .find(|w| !w.starts_with('[') && !w.ends_with(']'))
                    .into_iter()
                    .collect()
            };
            if let Some(uri) = uris.into_iter().find(|u| is_debian_archive(u)) {
                return uri.trim_end_matches('/').to_owned();
            }
        }
    }
    DEFAULT_MIRROR.to_owned()
}

fn is_debian_archive(uri: &str) -> bool {
    (uri.starts_with("http://") || uri.starts_with("https://"))
        && uri.trim_end_matches('/').ends_with("/debian")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_recipe_hashes_the_same_and_matches_the_recorded_value() {
        let a = Recipe::default_template("http://deb.debian.org/debian");
        let b = Recipe::default_template("http://deb.debian.org/debian/");
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
        // A change of this value means every cache is rebuilt: bump FORMAT_VERSION
        // deliberately, never by accident.
        if debian_arch() == "amd64" {
            assert_eq!(
                a.hash(),
                "128a023997af7232ba124a74dac4dc664393b35f52872b816663cde9833db43b",
                "the default recipe's hash changed"
            );
        }
    }

    #[test]
    fn any_change_to_the_recipe_changes_the_hash() {
        let base = Recipe::default_template(DEFAULT_MIRROR);
        let mut changed = Vec::new();
        let mut r = base.clone();
        r.packages.push("jq".into());
        changed.push(r);
        let mut r = base.clone();
        r.mirror = "http://ftp.de.debian.org/debian".into();
        changed.push(r);
        let mut r = base.clone();
        r.user.uid = 1001;
        changed.push(r);
        let mut r = base.clone();
        r.kernel_package = None;
        changed.push(r);
        let mut r = base.clone();
        r.vm_init_package = None;
        changed.push(r);
        for r in changed {
            assert_ne!(r.hash(), base.hash(), "{r:?}");
        }
    }

    #[test]
    fn validation_refuses_unsafe_names() {
        let ok = Recipe::default_template(DEFAULT_MIRROR);
        assert_eq!(ok.validate(), Ok(()));
        let mut r = ok.clone();
        r.packages.push("git; rm -rf /".into());
        assert!(r.validate().unwrap_err().contains("package"));
        let mut r = ok.clone();
        r.vm_init_package = Some("busybox static".into());
        assert!(r.validate().unwrap_err().contains("busybox static"));
        let mut r = ok.clone();
        r.mirror = "file:///etc".into();
        assert!(r.validate().is_err());
        let mut r = ok.clone();
        r.user.uid = 0;
        assert!(r.validate().is_err());
        let mut r = ok;
        r.user.home = "/home/../etc".into();
        assert!(r.validate().is_err());
    }

    #[test]
    fn the_host_mirror_comes_from_one_line_or_deb822_sources() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(host_mirror(dir.path()), DEFAULT_MIRROR);
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://ftp.fr.debian.org/debian/\nSuites: bookworm\n\n\
             Types: deb\nURIs: http://deb.debian.org/debian-security\n",
        )
        .unwrap();
        assert_eq!(host_mirror(dir.path()), "http://ftp.fr.debian.org/debian");
        std::fs::write(
            dir.path().join("sources.list"),
            "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(host_mirror(dir.path()), "http://mirror.example/debian");
        let r = Recipe::default_template("http://mirror.example/debian");
        assert_eq!(r.security_mirror, "http://deb.debian.org/debian-security");
        let r = Recipe::default_template(DEFAULT_MIRROR);
        assert_eq!(r.security_mirror, "http://deb.debian.org/debian-security");
        assert!(r.apt_sources().contains("bookworm-security main"));
    }
}
