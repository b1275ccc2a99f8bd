//! Template builds: a recipe ([`recipe`]) run step by step in a capsule, then
//! captured into a template.
//!
//! [`submit`] checks a request and queues it as a `pending` build; the build worker
//! ([`worker::worker`], two builds at a time, on one replica) claims pending builds
//! with a conditional update and runs them:
//! 1. creates a capsule from the base template (through the lifecycle service, on the
//!    host the scheduler picks) and records it on the build;
//! 2. unpacks the build's archive, if it has one (stored with the build in the
//!    database, so any replica's worker can read it), into
//!    [`worker::BUILD_FILES`], and unless `skip_pre_post` runs `apt-get update`;
//! 3. runs the steps one after another through the data plane, appending each step's
//!    output to the build's logs as it comes (`current_step`/`total_steps` show
//!    progress); then, unless `skip_pre_post`, runs `apt-get clean`, and removes the
//!    unpacked archive;
//! 4. starts the `START` command, if any, and retries the healthcheck, if any, until
//!    it succeeds or its `--timeout` (default
//!    [`recipe::DEFAULT_HEALTHCHECK_TIMEOUT`]) passes;
//! 5. snapshots the capsule into the template `name` of the build's team (the platform
//!    team for admin builds), with the recipe's user, environment and start command;
//! 6. destroys the capsule — always, whatever happened.
//!
//! A failing step fails the build (`failed`, with the step's output in the logs and
//! the reason in `error`) and registers nothing. [`cancel`] moves a pending or running
//! build to `cancelled`; the worker notices within a second, kills the running step
//! (by dropping its stream), destroys the capsule and registers nothing.
//!
//! One control plane replica runs builds at a time: the build worker is a
//! [singleton](wrenn_extension::Worker::singleton), and any replica queues builds
//! for it. Running builds do not survive the control plane that runs them: when a
//! build worker starts — on a fresh control plane, or on another replica taking over
//! from one that stopped or died — every build still `running` is marked `failed`
//! ("the control plane restarted while the build ran", [`fail_left_running`]) and
//! their capsules are destroyed; `pending` builds run.

pub mod recipe;
pub mod worker;

use axum::http::StatusCode;
use wrenn_core::audit::{Actor, AuditEntry, AuditScope, AuditStatus};
use wrenn_core::id::{BuildId, PLATFORM_TEAM_ID, TeamId};
use wrenn_core::lifecycle::{DEFAULT_MEMORY_MB, DEFAULT_VCPUS};
use wrenn_core::model::{BuildStatus, TemplateBuild};
use wrenn_core::repo::RepoError;
use wrenn_core::validate::{self, ValidationError};
use wrenn_extension::{ApiError, ServerContext};

pub use recipe::{Recipe, RecipeError, Step};

/// The error stored on builds that a stopped control plane left unfinished.
pub const RESTARTED_ERROR: &str = "the control plane restarted while the build ran";

/// Largest archive a build may carry, in bytes.
pub const MAX_ARCHIVE_BYTES: usize = 100 * 1024 * 1024;

/// What a caller asks to build (`POST …/builds`, and the format of recipe files such
/// as the shipped `templates/code-runner-beta.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// Name of the template to produce (must not exist yet).
    pub name: String,
    /// Template to start from (default `minimal`).
    pub base_template: Option<String>,
    /// Steps: `RUN [--timeout=5m] <shell>` (or a bare shell line), `COPY <src>... <dest>`
    /// (from the archive), `ENV K=V`, `WORKDIR <dir>`, `USER <name>`, `START <command>`.
    pub recipe: Vec<String>,
    /// Command retried at the end until it succeeds: `[--timeout=5m] <command>`
    /// (default 120 s; empty: none).
    pub healthcheck: Option<String>,
    /// vCPUs of the build capsule and the template (default 1).
    pub vcpus: Option<i64>,
    /// Memory (MiB) of the build capsule and the template (default 512).
    pub memory_mb: Option<i64>,
    /// Skips the implicit steps: `apt-get update` before the recipe and `apt-get
    /// clean` after it.
    #[serde(default)]
    pub skip_pre_post: bool,
}

/// Why a build request or a cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A field is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The recipe is malformed.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The archive is missing, malformed or not wanted.
    #[error("{0}")]
    Archive(String),
    /// The healthcheck is malformed.
    #[error("{0}")]
    Healthcheck(String),
    /// The base template does not exist for the team.
    #[error("base template {0:?} not found")]
    BaseNotFound(String),
    /// The template name is taken (by the team, the platform, or a build in progress).
    #[error("{0}")]
    NameTaken(String),
    /// No such build (for this caller).
    #[error("build not found")]
    NotFound,
    /// The build already finished.
    #[error("build {id} is already {status}; only pending or running builds can be cancelled")]
    Finished {
        /// The build.
        id: BuildId,
        /// Its final status.
        status: BuildStatus,
    },
    /// Storage failed.
    #[error("storage failed")]
    Store(#[source] RepoError),
}

impl From<RepoError> for BuildError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound { .. } => Self::NotFound,
            other => Self::Store(other),
        }
    }
}

impl From<BuildError> for ApiError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Invalid(e) => e.into(),
            e @ (BuildError::Recipe(_)
            | BuildError::BaseNotFound(_)
            | BuildError::Archive(_)
            | BuildError::Healthcheck(_)) => ApiError::bad_request(e.to_string()),
            e @ BuildError::NameTaken(_) => {
                ApiError::conflict("template_name_taken", e.to_string())
            }
            BuildError::NotFound => ApiError::not_found("build"),
            e @ BuildError::Finished { .. } => {
                ApiError::new(StatusCode::CONFLICT, "build_finished", e.to_string())
            }
            BuildError::Store(e) => e.into(),
        }
    }
}

/// Checks `req` and queues it as a `pending` build of a template of `team` (the
/// platform team for platform templates), with `archive` (a tar file, compressed
/// or not) for its `COPY` steps. The template's default user and environment are
/// the base template's, changed by the recipe's `USER` and `ENV`.
pub async fn submit(
    ctx: &ServerContext,
    team: TeamId,
    req: BuildRequest,
    archive: Option<Vec<u8>>,
    actor: &Actor,
) -> Result<TemplateBuild, BuildError> {
    validate::safe_name("name", &req.name)?;
    let base_name = req
        .base_template
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| wrenn_core::id::BUILTIN_TEMPLATE_NAME.to_owned());
    validate::safe_name("base_template", &base_name)?;
    let recipe = Recipe::parse(&req.recipe)?;
    match &archive {
        Some(data) => check_archive(data)?,
        None if recipe.needs_archive() => {
            return Err(BuildError::Archive(
                "COPY steps need an archive: send the build as multipart/form-data with a \
                 `config` field (this JSON) and an `archive` file (tar or tar.gz)"
                    .into(),
            ));
        }
        None => {}
    }
    let vcpus = req
        .vcpus
        .map(validate::vcpus)
        .transpose()?
        .unwrap_or(DEFAULT_VCPUS);
    let memory_mb = req
        .memory_mb
        .map(validate::memory_mb)
        .transpose()?
        .unwrap_or(DEFAULT_MEMORY_MB);
    let healthcheck = req.healthcheck.unwrap_or_default().trim().to_owned();
    if !healthcheck.is_empty() {
        recipe::parse_healthcheck(&healthcheck).map_err(BuildError::Healthcheck)?;
    }
    let base = match ctx.store.get_template_for_team(team, &base_name).await {
        Ok(t) => t,
        Err(RepoError::NotFound { .. }) => return Err(BuildError::BaseNotFound(base_name)),
        Err(e) => return Err(BuildError::Store(e)),
    };
    match ctx.store.get_template_for_team(team, &req.name).await {
        Ok(t) => {
            let whose = if t.team_id == PLATFORM_TEAM_ID && team != PLATFORM_TEAM_ID {
                "a platform template"
            } else {
                "a template"
            };
            return Err(BuildError::NameTaken(format!(
                "{whose} named {:?} already exists; delete it first",
                req.name
            )));
        }
        Err(RepoError::NotFound { .. }) => {}
        Err(e) => return Err(BuildError::Store(e)),
    }
    if let Some(b) = ctx.store.active_build_for(team, &req.name).await? {
        return Err(BuildError::NameTaken(format!(
            "build {} is already producing a template named {:?}",
            b.id, req.name
        )));
    }
    let archive_bytes = archive.as_ref().map_or(0, Vec::len);
    let build = ctx
        .store
        .create_build(
            TemplateBuild {
                id: BuildId::new(),
                team_id: team,
                name: req.name,
                base_template: base.name.clone(),
                total_steps: i32::try_from(recipe.steps.len()).unwrap_or(i32::MAX),
                recipe: req.recipe,
                healthcheck,
                skip_pre_post: req.skip_pre_post,
                default_user: recipe.user(&base.default_user),
                default_env: recipe.env(&base.default_env),
                vcpus,
                memory_mb,
                status: BuildStatus::Pending,
                current_step: 0,
                logs: Vec::new(),
                error: String::new(),
                sandbox_id: None,
                host_id: None,
                template_id: None,
                created_at: chrono::Utc::now(),
                started_at: None,
                completed_at: None,
            },
            archive.as_deref(),
        )
        .await?;
    tracing::info!(build_id = %build.id, team_id = %team, name = %build.name, steps = build.total_steps, archive_bytes, "template build queued");
    ctx.audit(
        audit_entry(team, actor, &build, "create").metadata(serde_json::json!({
            "name": build.name,
        })),
    )
    .await;
    Ok(build)
}

/// Refuses what cannot be a tar archive (plain or compressed with gzip, bzip2, xz or
/// zstd) before it is stored; the build capsule's `tar` unpacks it.
fn check_archive(data: &[u8]) -> Result<(), BuildError> {
    if data.len() > MAX_ARCHIVE_BYTES {
        return Err(BuildError::Archive(format!(
            "the archive is larger than {} MiB",
            MAX_ARCHIVE_BYTES / (1024 * 1024)
        )));
    }
    let compressed = [
        &b"\x1f\x8b"[..],
        b"BZh",
        b"\xfd7zXZ\x00",
        b"\x28\xb5\x2f\xfd",
    ]
    .iter()
    .any(|magic| data.starts_with(magic));
    let tar = data.get(257..262) == Some(b"ustar");
    if compressed || tar {
        return Ok(());
    }
    let what = if data.is_empty() {
        "the archive is empty".to_owned()
    } else if data.starts_with(b"PK\x03\x04") {
        "zip archives are not supported".to_owned()
    } else {
        "the archive is not a tar file".to_owned()
    };
    Err(BuildError::Archive(format!(
        "{what}: send a tar file, plain or compressed with gzip, bzip2, xz or zstd"
    )))
}

/// Marks the builds a previous control plane left `running` as `failed` (they do
/// not survive it); `pending` builds are left to run. The build worker calls it when
/// it starts, holding the builds' lease: no other control plane runs builds then.
/// Returns how many.
pub async fn fail_left_running(store: &dyn wrenn_core::repo::Store) -> Result<u64, RepoError> {
    let failed = store.fail_running_builds(RESTARTED_ERROR).await?;
    if failed > 0 {
        tracing::warn!(
            failed,
            "template builds left running by a previous control plane marked failed"
        );
    }
    Ok(failed)
}

/// A build of `team` (any build when `team` is `None`: platform admins).
pub async fn get(
    ctx: &ServerContext,
    team: Option<TeamId>,
    id: BuildId,
) -> Result<TemplateBuild, BuildError> {
    let build = ctx.store.get_build(id).await?;
    match team {
        Some(t) if t != build.team_id => Err(BuildError::NotFound),
        _ => Ok(build),
    }
}

/// Builds of `team` (every build when `None`), newest first, at most 200.
pub async fn list(
    ctx: &ServerContext,
    team: Option<TeamId>,
) -> Result<Vec<TemplateBuild>, BuildError> {
    let builds = ctx.store.list_builds(200).await?;
    Ok(builds
        .into_iter()
        .filter(|b| team.is_none_or(|t| t == b.team_id))
        .collect())
}

/// Cancels a pending or running build of `team` (any build when `None`). The worker
/// running it kills the step in progress and destroys its capsule.
pub async fn cancel(
    ctx: &ServerContext,
    team: Option<TeamId>,
    id: BuildId,
    actor: &Actor,
) -> Result<(), BuildError> {
    let build = get(ctx, team, id).await?;
    const ERROR: &str = "cancelled";
    for from in [BuildStatus::Pending, BuildStatus::Running] {
        if ctx
            .store
            .build_status_if(id, from, BuildStatus::Cancelled, ERROR)
            .await?
            .is_some()
        {
            tracing::info!(build_id = %id, from = %from, "template build cancelled");
            ctx.audit(
                audit_entry(build.team_id, actor, &build, "cancel").status(AuditStatus::Warning),
            )
            .await;
            return Ok(());
        }
    }
    let now = ctx.store.get_build(id).await?;
    Err(BuildError::Finished {
        id,
        status: now.status,
    })
}

/// The audit entry of a build action, in the team's trail (scope `admin` for
/// platform builds).
fn audit_entry(team: TeamId, actor: &Actor, build: &TemplateBuild, action: &str) -> AuditEntry {
    let entry = AuditEntry::new(
        team,
        actor.clone(),
        "build",
        Some(build.id.to_string()),
        action,
    );
    if team == PLATFORM_TEAM_ID {
        entry.scope(AuditScope::Admin)
    } else {
        entry
    }
}
