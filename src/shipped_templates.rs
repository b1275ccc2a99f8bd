//! Templates shipped with Wrenn, built by `wrenn dev` on first start.
//!
//! - `code-runner-beta` ([`CODE_RUNNER_RECIPE`], `templates/code-runner-beta.json`): a
//!   Jupyter server on port 8888 (in a venv at `/opt/code-runner`, `jupyter-server` and
//!   `ipykernel` from PyPI) with an ipykernel kernelspec named `wrenn`, configured for
//!   the control plane's capsule proxy: no token or password inside the capsule (the
//!   proxy authenticates callers), remote access and any origin allowed, listening on
//!   0.0.0.0:8888, started by the template's start command. The SDK's
//!   `wrenn.code_runner.Capsule` uses it.
//!
//! [`ensure`] queues a platform build of each shipped template that does not exist
//! yet and reports its progress on standard error.
//!
//! Where the machine's egress re-signs TLS with its own certificate authority (a
//! corporate or sandbox proxy), capsules do not trust it and `pip install` fails.
//! `WRENN_DEV_TEMPLATE_CA=FILE` (PEM certificates) makes the shipped templates' builds
//! trust them: two steps are put first, installing the certificates into the capsule's
//! system store (`update-ca-certificates`) and pointing pip at it
//! (`ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt`, kept in the template). Unset,
//! the certificates the host's administrator added to the host's own store
//! (`/usr/local/share/ca-certificates/*.crt`) are used, so `wrenn dev` builds on such
//! a machine as it is.

use std::time::Duration;

use wrenn_core::audit::Actor;
use wrenn_core::id::PLATFORM_TEAM_ID;
use wrenn_core::model::BuildStatus;
use wrenn_core::repo::RepoError;
use wrenn_cpserver::builds::{self, BuildRequest};
use wrenn_cpserver::extension::ServerContext;

/// The recipe of `code-runner-beta`.
pub const CODE_RUNNER_RECIPE: &str = include_str!("../templates/code-runner-beta.json");

/// Environment variable naming extra CA certificates the shipped builds trust.
pub const TEMPLATE_CA_ENV: &str = "WRENN_DEV_TEMPLATE_CA";

/// How often a shipped template's build is looked at for progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Why a shipped template could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum ShippedTemplateError {
    /// The recipe file in the binary is malformed.
    #[error("the shipped recipe is malformed")]
    Recipe(#[source] serde_json::Error),
    /// The build was refused.
    #[error("the build was refused")]
    Build(#[source] builds::BuildError),
    /// Storage failed.
    #[error("storage failed")]
    Store(#[source] RepoError),
    /// The extra CA certificates could not be read.
    #[error("{TEMPLATE_CA_ENV}={path}: cannot read it")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The extra CA certificates are not PEM certificates.
    #[error("{TEMPLATE_CA_ENV}={0}: not PEM certificates (-----BEGIN CERTIFICATE-----)")]
    CaNotPem(String),
}

/// `req` with two first steps that make the capsule trust the PEM certificates `pem`
/// (system store and pip).
pub fn trusting(mut req: BuildRequest, pem: &str) -> BuildRequest {
    let pem = pem.trim();
    let mut steps = vec![
        format!(
            "RUN sudo tee /usr/local/share/ca-certificates/wrenn-dev-extra.crt >/dev/null <<'WRENN_PEM'\n{pem}\nWRENN_PEM\nsudo update-ca-certificates"
        ),
        "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt".to_owned(),
    ];
    steps.append(&mut req.recipe);
    req.recipe = steps;
    req
}

/// Where Debian keeps the CA certificates a host's administrator added
/// (`update-ca-certificates`): trusted by the shipped builds unless
/// [`TEMPLATE_CA_ENV`] names other certificates.
pub const HOST_EXTRA_CA_DIR: &str = "/usr/local/share/ca-certificates";

/// The CA certificates this host's administrator added ([`HOST_EXTRA_CA_DIR`]),
/// concatenated, if there are any.
fn host_extra_ca(dir: &std::path::Path) -> Option<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    files.sort();
    let pem: String = files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----") && !pem.contains("WRENN_PEM"))
        .collect::<Vec<_>>()
        .join("\n");
    (!pem.is_empty()).then_some(pem)
}

/// The extra CA certificates of [`TEMPLATE_CA_ENV`] if set, else those this host's
/// administrator added (a machine whose egress re-signs TLS trusts its proxy's CA so,
/// and the shipped builds then install from PyPI through it).
fn extra_ca() -> Result<Option<String>, ShippedTemplateError> {
    let Some(path) = std::env::var_os(TEMPLATE_CA_ENV).filter(|p| !p.is_empty()) else {
        return Ok(host_extra_ca(std::path::Path::new(HOST_EXTRA_CA_DIR)));
    };
    let shown = path.to_string_lossy().into_owned();
    let pem = std::fs::read_to_string(&path).map_err(|source| ShippedTemplateError::CaFile {
        path: shown.clone(),
        source,
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.contains("WRENN_PEM") {
        return Err(ShippedTemplateError::CaNotPem(shown));
    }
    Ok(Some(pem))
}

/// Every shipped recipe, parsed.
pub fn recipes() -> Result<Vec<BuildRequest>, ShippedTemplateError> {
    let code_runner =
        serde_json::from_str(CODE_RUNNER_RECIPE).map_err(ShippedTemplateError::Recipe)?;
    Ok(vec![code_runner])
}

/// Queues a platform build of each shipped template that does not exist yet (and is
/// not being built), and follows each build on standard error ("building template
/// NAME: step i/n"). Returns the names queued.
pub async fn ensure(ctx: &ServerContext) -> Result<Vec<String>, ShippedTemplateError> {
    let mut queued = Vec::new();
    let ca = extra_ca()?;
    for req in recipes()? {
        let req = match &ca {
            Some(pem) => trusting(req, pem),
            None => req,
        };
        match ctx
            .store
            .get_template_for_team(PLATFORM_TEAM_ID, &req.name)
            .await
        {
            Ok(_) => continue,
            Err(RepoError::NotFound { .. }) => {}
            Err(e) => return Err(ShippedTemplateError::Store(e)),
        }
        if ctx
            .store
            .active_build_for(PLATFORM_TEAM_ID, &req.name)
            .await
            .map_err(ShippedTemplateError::Store)?
            .is_some()
        {
            continue;
        }
        let name = req.name.clone();
        let build = builds::submit(ctx, PLATFORM_TEAM_ID, req, None, &Actor::system())
            .await
            .map_err(ShippedTemplateError::Build)?;
        eprintln!(
            "wrenn dev: building template {name} in the background ({} steps, build {}); \
             capsules from it answer 409 until it is ready",
            build.total_steps, build.id
        );
        let ctx = ctx.clone();
        tokio::spawn(follow(ctx, name.clone(), build.id));
        queued.push(name);
    }
    Ok(queued)
}

/// Reports a build's progress until it ends.
async fn follow(ctx: ServerContext, name: String, id: wrenn_core::id::BuildId) {
    let mut last = (-1, BuildStatus::Pending);
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let b = match ctx.store.get_build(id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(build_id = %id, error = %e, "could not follow the template build");
                return;
            }
        };
        if (b.current_step, b.status) != last
            && b.status == BuildStatus::Running
            && b.current_step > 0
        {
            eprintln!(
                "wrenn dev: building template {name}: step {}/{}",
                b.current_step, b.total_steps
            );
        }
        last = (b.current_step, b.status);
        match b.status {
            BuildStatus::Pending | BuildStatus::Running => {}
            BuildStatus::Success => {
                eprintln!("wrenn dev: template {name} is ready");
                return;
            }
            other => {
                eprintln!(
                    "wrenn dev: building template {name} {other}: {} (see GET /v1/admin/builds/{id}; \
                     it is built again on the next start)",
                    b.error
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_runner_recipe_parses_and_starts_jupyter() {
        let all = recipes().unwrap();
        let cr = &all[0];
        assert_eq!(cr.name, "code-runner-beta");
        let recipe = builds::Recipe::parse(&cr.recipe).unwrap();
        let (start, cwd) = recipe.start().expect("a start command");
        assert!(start.contains("jupyter server"), "{start}");
        assert_eq!(cwd, "/home/wrenn-user");
        assert!(cr.recipe.iter().any(|s| s.contains("--name wrenn")));
        assert!(
            start.contains("8888/api/kernels"),
            "a kernel is started: {start}"
        );
        assert!(
            cr.healthcheck
                .as_deref()
                .is_some_and(|h| h.contains("wait_for_ready"))
        );
    }

    #[test]
    fn the_hosts_added_certificates_are_found_and_other_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(host_extra_ca(dir.path()), None);
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("b.crt"), cert).unwrap();
        std::fs::write(dir.path().join("a.crt"), cert).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("c.crt"), "garbage").unwrap();
        assert_eq!(host_extra_ca(dir.path()), Some(format!("{cert}\n{cert}")));
        assert_eq!(host_extra_ca(&dir.path().join("missing")), None);
    }

    #[test]
    fn extra_certificates_come_first_and_the_recipe_stays_valid() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let cr = trusting(recipes().unwrap().remove(0), pem);
        assert!(cr.recipe[0].contains("update-ca-certificates"));
        assert!(cr.recipe[0].contains("MIIB"));
        assert_eq!(
            cr.recipe[1],
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
        );
        builds::Recipe::parse(&cr.recipe).unwrap();
    }
}
