//! The build worker: claims pending builds (two at a time) and runs them. See the
//! [module docs](super) for what a build does.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use wrenn_core::agents::HostCallError;
use wrenn_core::audit::Actor;
use wrenn_core::data_plane::{Command, ProcessEvent};
use wrenn_core::lifecycle::start_command::START_COMMAND_TAG;
use wrenn_core::lifecycle::{
    CreateSandbox, LifecycleError, ResourceRequest, SandboxStatus, TemplateDefaults,
};
use wrenn_core::model::{BuildStatus, Sandbox, Template, TemplateBuild};
use wrenn_core::repo::RepoError;
use wrenn_extension::{ServerContext, Worker};

use super::RESTARTED_ERROR;
use super::recipe::{Recipe, Step};

/// Builds run at the same time by one control plane.
pub const CONCURRENCY: usize = 2;
/// How often the worker looks for pending builds, and a running build for a cancel.
pub const POLL: Duration = Duration::from_secs(1);
/// How long one healthcheck attempt may take.
const HEALTHCHECK_ATTEMPT: Duration = Duration::from_secs(30);
/// How long unpacking the build's archive, or a pre- or post-build step, may take.
const HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(600);
/// Where the build's archive is unpacked in the build capsule (removed before the
/// snapshot).
pub const BUILD_FILES: &str = "/tmp/build-files";
/// What runs before the recipe unless the build skips it: fresh package lists, so
/// that `apt-get install` steps work. A failure is logged, not fatal.
const PRE_BUILD: &str = "if command -v apt-get >/dev/null 2>&1; then apt-get update; fi";
/// What runs after the recipe unless the build skips it: downloaded packages the
/// template does not need (the package lists stay, so that capsules install
/// packages without updating first, as in the default image). A failure is logged,
/// not fatal.
const POST_BUILD: &str = "if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi";
/// Unpacks the archive `$1` (any compression GNU tar recognises) into `$2`.
const UNPACK: &str = "set -e; mkdir -p \"$2\"; tar -xf \"$1\" -C \"$2\" --no-same-owner; rm -f \"$1\"; \
     echo \"unpacked $(find \"$2\" -mindepth 1 | wc -l) entries into $2\"";
/// A `COPY` step, run as root: `$1` files root, `$2` owner, `$3` base directory of a
/// relative destination (empty: the owner's home), `$4` destination, then the
/// sources. Only what is copied changes owner, never a destination that existed.
const COPY: &str = r#"set -e
root=$1; owner=$2; base=$3; dest=$4; shift 4
group=$(id -gn "$owner")
[ -n "$base" ] || base=$(getent passwd "$owner" | cut -d: -f6)
case $dest in /*) ;; *) dest="$base/$dest" ;; esac
into=0
case $dest in */) into=1 ;; esac
[ $# -gt 1 ] && into=1
[ -d "$dest" ] && into=1
for src do
  from="$root/$src"
  if [ ! -e "$from" ] && [ ! -L "$from" ]; then
    echo "COPY: $src is not in the build archive" >&2; exit 1
  fi
  if [ -d "$from" ] && [ ! -L "$from" ]; then
    # A directory's contents (like Dockerfile's COPY).
    [ -d "$dest" ] || { mkdir -p "$dest"; chown "$owner:$group" "$dest"; }
    tar -C "$from" --owner="$owner" --group="$group" -cf - . | tar -C "$dest" -xpf -
  elif [ $into = 1 ]; then
    [ -d "$dest" ] || { mkdir -p "$dest"; chown "$owner:$group" "$dest"; }
    tar -C "$(dirname "$from")" --owner="$owner" --group="$group" -cf - "$(basename "$from")"       | tar -C "$dest" -xpf -
  else
    mkdir -p "$(dirname "$dest")"
    cp -P "$from" "$dest"
    chown -h "$owner:$group" "$dest"
  fi
  echo "copied $src to $dest"
done"#;
/// How long the build capsule may take to start.
const CREATE_WAIT: Duration = Duration::from_secs(600);
/// How long destroying the build capsule is waited for.
const DESTROY_WAIT: Duration = Duration::from_secs(60);
/// Longest stored log line, in bytes (longer lines are cut).
const MAX_LINE: usize = 4096;
/// Output lines buffered before they are written to the build.
const FLUSH_LINES: usize = 64;
/// Longest time output stays buffered.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Metadata key under which the build capsule carries its build id.
const BUILD_METADATA_KEY: &str = "wrenn_build";

/// The worker that runs template builds. The control plane runs it as a
/// [singleton](Worker::singleton): one replica runs the builds at a time. When it
/// starts (on the replica that holds the builds' lease), every build still
/// `running` was left by a control plane that stopped or died: it fails them
/// ([`super::fail_left_running`]) and destroys their capsules, then runs pending
/// builds — including those queued before it took over.
pub fn worker() -> Worker {
    Worker::new("template-builds", |ctx: ServerContext, cancel| async move {
        super::fail_left_running(ctx.store.as_ref()).await?;
        destroy_orphaned_capsules(&ctx).await?;
        run_pool(ctx, cancel).await;
        Ok(())
    })
}

/// Destroys the capsules of builds a previous control plane left unfinished (failed
/// with [`RESTARTED_ERROR`] when a build worker took over) that still hold resources.
async fn destroy_orphaned_capsules(ctx: &ServerContext) -> Result<(), RepoError> {
    let orphans = ctx.store.list_builds(200).await?.into_iter().filter(|b| {
        b.status == BuildStatus::Failed && b.error == RESTARTED_ERROR && b.sandbox_id.is_some()
    });
    for build in orphans {
        let Some(id) = build.sandbox_id else { continue };
        let sb = match ctx.store.get_sandbox(id).await {
            Ok(sb) => sb,
            Err(RepoError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        if sb.status.is_terminal() || sb.status == SandboxStatus::Stopping {
            continue;
        }
        info!(build_id = %build.id, sandbox_id = %id, "destroying the capsule of a build a previous control plane left unfinished");
        if let Err(e) = ctx
            .lifecycle
            .destroy(sb.team_id, id, &Actor::system())
            .await
        {
            warn!(build_id = %build.id, sandbox_id = %id, error = %e, "could not destroy an orphaned build capsule");
        }
    }
    Ok(())
}

async fn run_pool(ctx: ServerContext, cancel: CancellationToken) {
    let mut running = JoinSet::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
        while running.len() < CONCURRENCY {
            let build = match claim_next(&ctx).await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "could not look for pending template builds");
                    break;
                }
            };
            let span = info_span!("template.build", build_id = %build.id, team_id = %build.team_id, name = %build.name);
            let (ctx, stop) = (ctx.clone(), cancel.child_token());
            running.spawn(async move { run(ctx, build, stop).await }.instrument(span));
        }
    }
    // Shutting down: running builds see the cancellation, fail and clean up.
    while running.join_next().await.is_some() {}
}

/// Takes the oldest pending build (`pending → running`), if any.
async fn claim_next(ctx: &ServerContext) -> Result<Option<TemplateBuild>, RepoError> {
    // Another replica or a cancel may take the same build first: try the next one.
    for _ in 0..8 {
        let Some(next) = ctx.store.oldest_pending_build().await? else {
            return Ok(None);
        };
        if let Some(b) = ctx
            .store
            .build_status_if(next.id, BuildStatus::Pending, BuildStatus::Running, "")
            .await?
        {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// Why a build ended without a template.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// A step (or the healthcheck) failed.
    #[error("{0}")]
    Step(String),
    /// The build capsule could not be made or captured.
    #[error("{what}: {source}")]
    Lifecycle {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: LifecycleError,
    },
    /// A call inside the build capsule failed.
    #[error("{what}: {source}")]
    Host {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: HostCallError,
    },
    /// Storage failed.
    #[error("storage failed: {0}")]
    Store(#[from] RepoError),
    /// Someone cancelled the build.
    #[error("cancelled")]
    Cancelled,
    /// The control plane is shutting down.
    #[error("the control plane stopped while the build ran")]
    Shutdown,
}

/// Runs one claimed build to its end, whatever happens.
async fn run(ctx: ServerContext, build: TemplateBuild, stop: CancellationToken) {
    info!(steps = build.total_steps, base = %build.base_template, "template build started");
    let mut job = Job {
        ctx: ctx.clone(),
        build,
        stop,
        capsule: None,
        logs: LogBuffer::default(),
        step: 0,
    };
    let outcome = job.execute().await;
    if let Some(sb) = job.capsule.take() {
        job.say(format!("destroying build capsule {}", sb.id)).await;
        job.destroy(&sb).await;
    }
    let id = job.build.id;
    let store = &ctx.store;
    match outcome {
        Ok(template) => info!(template_id = %template.id, "template build succeeded"),
        Err(Failure::Cancelled) => {
            let _ = job.flush().await;
            info!("template build cancelled");
        }
        Err(failure) => {
            let error = failure.to_string();
            job.say(format!("build failed: {error}")).await;
            match store
                .build_status_if(id, BuildStatus::Running, BuildStatus::Failed, &error)
                .await
            {
                Ok(_) => warn!(error = %error, "template build failed"),
                Err(e) => warn!(error = %e, "could not record the failed build"),
            }
        }
    }
}

/// One build in progress.
struct Job {
    ctx: ServerContext,
    build: TemplateBuild,
    stop: CancellationToken,
    capsule: Option<Sandbox>,
    logs: LogBuffer,
    step: i32,
}

/// Where the recipe's steps have got to.
#[derive(Clone)]
struct Shell {
    /// The user the capsule runs processes as by default.
    capsule_user: String,
    /// The user steps run as.
    user: String,
    /// The capsule's default environment.
    base_env: BTreeMap<String, String>,
    /// Set by `ENV` steps so far.
    env: BTreeMap<String, String>,
    /// Set by the last `WORKDIR`.
    cwd: Option<String>,
}

impl Shell {
    /// `script` run by `/bin/sh` as the current user, in the current directory.
    fn command(&self, script: &str, extra: &[String]) -> Command {
        let mut sh = vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
        if !extra.is_empty() {
            sh.push("sh".into());
            sh.extend(extra.iter().cloned());
        }
        if self.user == self.capsule_user {
            return Command {
                cmd: sh.remove(0),
                args: sh,
                envs: self.env.clone(),
                cwd: self.cwd.clone(),
            };
        }
        // Another user: sudo (passwordless in the default image) resets the
        // environment, so `env` sets the whole of it again.
        let mut args: Vec<String> = ["-n", "-H", "-u", &self.user, "--", "env"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut all = self.base_env.clone();
        all.extend(self.env.clone());
        args.extend(all.into_iter().map(|(k, v)| format!("{k}={v}")));
        args.extend(sh);
        Command {
            cmd: "sudo".into(),
            args,
            envs: BTreeMap::new(),
            cwd: self.cwd.clone(),
        }
    }
}

impl Job {
    async fn execute(&mut self) -> Result<Template, Failure> {
        let recipe = Recipe::parse(&self.build.recipe).map_err(|e| Failure::Step(e.to_string()))?;
        let base = self
            .ctx
            .store
            .get_template_for_team(self.build.team_id, &self.build.base_template)
            .await?;
        let sb = self.create_capsule().await?;
        let mut shell = Shell {
            capsule_user: base.default_user.clone(),
            user: base.default_user.clone(),
            base_env: base.default_env.clone(),
            env: BTreeMap::new(),
            cwd: None,
        };
        let root = Shell {
            user: "root".into(),
            ..shell.clone()
        };
        let archive = self.unpack_archive(&sb, &root).await?;
        if !self.build.skip_pre_post {
            self.housekeeping(&sb, &root, "pre-build", PRE_BUILD)
                .await?;
        }
        let total = recipe.steps.len();
        for (i, step) in recipe.steps.iter().enumerate() {
            self.step = i32::try_from(i + 1).unwrap_or(i32::MAX);
            let line = &self.build.recipe[i];
            self.say(format!("step {}/{total}: {}", i + 1, line.trim()))
                .await;
            self.flush().await?;
            match step {
                Step::Run { script, timeout } => {
                    let cmd = shell.command(script, &[]);
                    self.run_step(&sb, cmd, &format!("step {}", i + 1), *timeout)
                        .await?;
                }
                Step::Copy { sources, dest } => {
                    let mut args = vec![
                        BUILD_FILES.to_owned(),
                        shell.user.clone(),
                        shell.cwd.clone().unwrap_or_default(),
                        dest.clone(),
                    ];
                    args.extend(sources.iter().cloned());
                    let cmd = root.command(COPY, &args);
                    self.run_step(&sb, cmd, &format!("step {}", i + 1), HOUSEKEEPING_TIMEOUT)
                        .await?;
                }
                Step::Env(k, v) => {
                    shell.env.insert(k.clone(), v.clone());
                }
                Step::Workdir(dir) => {
                    shell.cwd = None;
                    let cmd = shell.command(
                        "mkdir -p \"$1\" 2>/dev/null || { sudo -n mkdir -p \"$1\" && sudo -n chown \"$(id -un):$(id -gn)\" \"$1\"; }",
                        std::slice::from_ref(dir),
                    );
                    self.run_step(&sb, cmd, &format!("step {}", i + 1), HOUSEKEEPING_TIMEOUT)
                        .await?;
                    shell.cwd = Some(dir.clone());
                }
                Step::User(user) => {
                    let cmd = shell.command("id \"$1\"", std::slice::from_ref(user));
                    self.run_step(&sb, cmd, &format!("step {}", i + 1), HOUSEKEEPING_TIMEOUT)
                        .await?;
                    shell.user = user.clone();
                }
                Step::Start(_) => {
                    self.say("the start command runs after the last step".into())
                        .await;
                }
            }
        }
        self.flush().await?;
        if !self.build.skip_pre_post {
            self.housekeeping(&sb, &root, "post-build", POST_BUILD)
                .await?;
        }
        if archive {
            let cmd = root.command("rm -rf \"$1\"", &[BUILD_FILES.to_owned()]);
            self.say(format!("removing {BUILD_FILES}")).await;
            self.run_step(&sb, cmd, "removing the build files", HOUSEKEEPING_TIMEOUT)
                .await?;
        }
        let start = recipe.start();
        if let Some((command, cwd)) = &start {
            // As capsules made from the template will run it: the final user and
            // environment, in the directory the recipe had when it named it.
            let sh = Shell {
                cwd: (!cwd.is_empty()).then(|| cwd.clone()),
                ..shell
            };
            let cmd = sh.command(command, &[]);
            let started = self
                .guard(
                    self.ctx
                        .data_plane
                        .start_background(&sb, cmd, START_COMMAND_TAG.into()),
                )
                .await?
                .map_err(|source| Failure::Host {
                    what: "starting the start command".into(),
                    source,
                })?;
            self.say(format!("start command running (pid {})", started.pid))
                .await;
            shell = sh;
        }
        if !self.build.healthcheck.is_empty() {
            let (check, within) =
                super::recipe::parse_healthcheck(&self.build.healthcheck).map_err(Failure::Step)?;
            self.healthcheck(&sb, &shell, &check, within).await?;
        }
        self.check_cancelled().await?;
        self.say(format!("snapshotting into template {:?}", self.build.name))
            .await;
        self.flush().await?;
        let (start_command, start_cwd) = start.unwrap_or_default();
        let defaults = TemplateDefaults {
            default_user: self.build.default_user.clone(),
            default_env: self.build.default_env.clone(),
            start_command,
            start_cwd,
        };
        let template = self
            .ctx
            .lifecycle
            .snapshot_with(
                self.build.team_id,
                sb.id,
                Some(self.build.name.clone()),
                false,
                Some(defaults),
                &Actor::system(),
            )
            .await
            .map_err(|source| Failure::Lifecycle {
                what: "snapshotting the build capsule",
                source,
            })?;
        let id = self.build.id;
        self.say(format!("template {:?} registered", template.name))
            .await;
        self.flush().await?;
        let done = self
            .ctx
            .store
            .build_status_if(id, BuildStatus::Running, BuildStatus::Success, "")
            .await?;
        if done.is_none() {
            // Cancelled while the snapshot was taken: nothing may stay registered.
            crate::templates::remove_files_and_row(&self.ctx, &template).await;
            return Err(Failure::Cancelled);
        }
        self.ctx.store.set_build_template(id, template.id).await?;
        Ok(template)
    }

    /// Creates the build capsule from the base template and waits until it runs.
    async fn create_capsule(&mut self) -> Result<Sandbox, Failure> {
        self.say(format!(
            "creating build capsule from {:?}",
            self.build.base_template
        ))
        .await;
        let req = CreateSandbox {
            template: Some(self.build.base_template.clone()),
            resources: ResourceRequest {
                vcpus: Some(self.build.vcpus.into()),
                memory_mb: Some(self.build.memory_mb.into()),
                disk_size_mb: None,
            },
            timeout_sec: Some(0),
            metadata: BTreeMap::from([(BUILD_METADATA_KEY.to_owned(), self.build.id.to_string())]),
        };
        let lifecycle = self.ctx.lifecycle.clone();
        let (team, actor) = (self.build.team_id, Actor::system());
        let sb = lifecycle
            .create(team, &actor, req)
            .await
            .map_err(|source| Failure::Lifecycle {
                what: "creating the build capsule",
                source,
            })?;
        // From here on the capsule is destroyed whatever happens.
        self.capsule = Some(sb.clone());
        self.ctx
            .store
            .set_build_sandbox(self.build.id, sb.id, sb.host_id)
            .await?;
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        loop {
            let now = self.ctx.store.get_sandbox(sb.id).await?;
            match now.status {
                SandboxStatus::Running => {
                    self.say(format!("build capsule {} running", sb.id)).await;
                    self.capsule = Some(now.clone());
                    return Ok(now);
                }
                SandboxStatus::Starting if tokio::time::Instant::now() < deadline => {}
                other => {
                    let why = now
                        .metadata
                        .get(wrenn_core::repo::FAILURE_METADATA_KEY)
                        .cloned()
                        .unwrap_or_default();
                    return Err(Failure::Step(format!(
                        "the build capsule did not start ({other}) {why}"
                    )));
                }
            }
            self.guard(tokio::time::sleep(Duration::from_millis(200)))
                .await?;
        }
    }

    /// Writes the build's archive (if it has one) into the capsule and unpacks it
    /// into [`BUILD_FILES`]; whether there was one.
    async fn unpack_archive(&mut self, sb: &Sandbox, root: &Shell) -> Result<bool, Failure> {
        let Some(data) = self.ctx.store.build_archive(self.build.id).await? else {
            return Ok(false);
        };
        let size = data.len();
        self.say(format!("uploading the build archive ({size} bytes)"))
            .await;
        let path = format!("{BUILD_FILES}.archive");
        let chunks = futures::stream::iter(
            bytes::Bytes::from(data)
                .chunks(256 * 1024)
                .map(bytes::Bytes::copy_from_slice)
                .collect::<Vec<_>>(),
        )
        .boxed();
        self.guard(self.ctx.data_plane.write_file(sb, path.clone(), chunks))
            .await?
            .map_err(|source| Failure::Host {
                what: "uploading the build archive".into(),
                source,
            })?;
        let cmd = root.command(UNPACK, &[path, BUILD_FILES.to_owned()]);
        self.run_step(sb, cmd, "unpacking the build archive", HOUSEKEEPING_TIMEOUT)
            .await?;
        Ok(true)
    }

    /// A pre- or post-build `script`, run as root; its failure is logged, not fatal
    /// (the recipe's own steps say what they need).
    async fn housekeeping(
        &mut self,
        sb: &Sandbox,
        root: &Shell,
        phase: &str,
        script: &str,
    ) -> Result<(), Failure> {
        self.say(format!("{phase} (skip_pre_post skips this): {script}"))
            .await;
        match self
            .run_step(sb, root.command(script, &[]), phase, HOUSEKEEPING_TIMEOUT)
            .await
        {
            Ok(()) => Ok(()),
            Err(e @ (Failure::Step(_) | Failure::Host { .. })) => {
                self.say(format!("{e}; going on")).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs one command (`what`: "step 3", "pre-build", …), streaming its output into
    /// the logs; it is killed after `timeout`.
    async fn run_step(
        &mut self,
        sb: &Sandbox,
        cmd: Command,
        what: &str,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let stream = self
            .guard(self.ctx.data_plane.exec_stream(sb, cmd, Some(timeout)))
            .await?
            .map_err(|source| Failure::Host {
                what: what.to_owned(),
                source,
            })?;
        let mut stream = std::pin::pin!(stream);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut watch = tokio::time::interval(POLL);
        watch.tick().await;
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(ProcessEvent::Stdout(b) | ProcessEvent::Stderr(b))) => {
                        self.logs.push_bytes(&b);
                        if self.logs.lines.len() >= FLUSH_LINES {
                            self.flush().await?;
                        }
                    }
                    Some(Ok(ProcessEvent::Started { .. })) => {}
                    Some(Ok(ProcessEvent::Ended { exit_code, error })) => {
                        self.logs.end_output();
                        self.flush().await?;
                        if exit_code == 0 && error.is_none() {
                            return Ok(());
                        }
                        let why = error.map(|e| format!(": {e}")).unwrap_or_default();
                        return Err(Failure::Step(format!(
                            "{what} exited with status {exit_code}{why}"
                        )));
                    }
                    Some(Err(source)) => {
                        self.logs.end_output();
                        self.flush().await?;
                        return Err(Failure::Host { what: what.to_owned(), source });
                    }
                    None => {
                        self.logs.end_output();
                        self.flush().await?;
                        return Err(Failure::Step(format!("{what} ended without an exit status")));
                    }
                },
                _ = flush.tick() => self.flush().await?,
                // Dropping the stream (by returning) kills the step's process.
                _ = watch.tick() => self.check_cancelled().await?,
                _ = self.stop.cancelled() => return Err(Failure::Shutdown),
            }
        }
    }

    /// Retries `check` until it exits 0 or `within` passes.
    async fn healthcheck(
        &mut self,
        sb: &Sandbox,
        shell: &Shell,
        check: &str,
        within: Duration,
    ) -> Result<(), Failure> {
        self.say(format!("healthcheck: {check}")).await;
        let deadline = tokio::time::Instant::now() + within;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let out = self
                .guard(
                    self.ctx
                        .data_plane
                        .exec(sb, shell.command(check, &[]), HEALTHCHECK_ATTEMPT),
                )
                .await?;
            let last = match out {
                Ok(o) if o.exit_code == 0 => {
                    self.say(format!("healthcheck passed (attempt {attempts})"))
                        .await;
                    return Ok(());
                }
                Ok(o) => format!(
                    "exit status {}: {}{}",
                    o.exit_code,
                    String::from_utf8_lossy(&o.stdout).trim(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                self.logs.push_text(&last);
                return Err(Failure::Step(format!(
                    "healthcheck did not succeed within {}s ({attempts} attempts); last: {}",
                    within.as_secs(),
                    truncate(&last, 500)
                )));
            }
            self.check_cancelled().await?;
            self.guard(tokio::time::sleep(Duration::from_secs(1)))
                .await?;
        }
    }

    /// `fut`, unless the build is cancelled or the control plane stops first.
    async fn guard<T>(&self, fut: impl Future<Output = T>) -> Result<T, Failure> {
        let mut fut = std::pin::pin!(fut);
        let mut watch = tokio::time::interval(POLL);
        watch.tick().await;
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                _ = watch.tick() => self.check_cancelled().await?,
                _ = self.stop.cancelled() => return Err(Failure::Shutdown),
            }
        }
    }

    /// [`Failure::Cancelled`] once the build is no longer `running` in the store.
    async fn check_cancelled(&self) -> Result<(), Failure> {
        if self.stop.is_cancelled() {
            return Err(Failure::Shutdown);
        }
        match self.ctx.store.get_build(self.build.id).await?.status {
            BuildStatus::Running => Ok(()),
            _ => Err(Failure::Cancelled),
        }
    }

    /// Adds a line of the build's own to the logs.
    async fn say(&mut self, line: String) {
        self.logs.end_output();
        self.logs.lines.push(line);
        if let Err(e) = self.flush().await {
            warn!(error = %e, "could not write build logs");
        }
    }

    /// Writes buffered log lines to the build.
    async fn flush(&mut self) -> Result<(), Failure> {
        if self.logs.lines.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.logs.lines);
        self.ctx
            .store
            .append_build_logs(self.build.id, self.step, &lines)
            .await?;
        Ok(())
    }

    async fn destroy(&self, sb: &Sandbox) {
        match self
            .ctx
            .lifecycle
            .destroy_waiting(sb.team_id, sb.id, &Actor::system(), DESTROY_WAIT)
            .await
        {
            Ok(_) | Err(LifecycleError::NotFound(_)) => {}
            Err(LifecycleError::InvalidState {
                status: SandboxStatus::Stopped | SandboxStatus::Stopping,
                ..
            }) => {}
            Err(e) => warn!(sandbox_id = %sb.id, error = %e, "could not destroy the build capsule"),
        }
    }
}

/// Output waiting to be written: whole lines, and the unfinished last line.
#[derive(Default)]
struct LogBuffer {
    lines: Vec<String>,
    partial: Vec<u8>,
}

impl LogBuffer {
    fn push_bytes(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(at) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=at).collect();
            self.push_line(&line[..line.len() - 1]);
        }
        if self.partial.len() > MAX_LINE {
            let line = std::mem::take(&mut self.partial);
            self.push_line(&line);
        }
    }

    fn push_text(&mut self, text: &str) {
        for line in text.lines() {
            self.push_line(line.as_bytes());
        }
    }

    fn push_line(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches('\r');
        // Progress bars redraw with carriage returns: keep what was drawn last.
        let text = text.rsplit('\r').next().unwrap_or(text);
        self.lines.push(truncate(text, MAX_LINE));
    }

    /// Ends an unfinished last line (the process ended or a build line follows).
    fn end_output(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.push_line(&line);
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_split_into_lines_across_chunks() {
        let mut logs = LogBuffer::default();
        logs.push_bytes(b"one\ntw");
        logs.push_bytes(b"o\r\nprogress 10%\rprogress 100%\nlast");
        assert_eq!(logs.lines, ["one", "two", "progress 100%"]);
        logs.end_output();
        assert_eq!(logs.lines.last().map(String::as_str), Some("last"));
    }

    #[test]
    fn steps_as_another_user_go_through_sudo_with_the_whole_environment() {
        let mut shell = Shell {
            capsule_user: "wrenn-user".into(),
            user: "wrenn-user".into(),
            base_env: BTreeMap::from([("BASE".to_owned(), "1".to_owned())]),
            env: BTreeMap::from([("A".to_owned(), "2".to_owned())]),
            cwd: Some("/srv".into()),
        };
        let same = shell.command("echo hi", &[]);
        assert_eq!(
            (same.cmd.as_str(), same.args.clone()),
            ("/bin/sh", vec!["-c".to_owned(), "echo hi".to_owned()])
        );
        assert_eq!(same.envs["A"], "2");
        shell.user = "root".into();
        let other = shell.command("id \"$1\"", &["bob".to_owned()]);
        assert_eq!(other.cmd, "sudo");
        assert_eq!(
            other.args,
            [
                "-n",
                "-H",
                "-u",
                "root",
                "--",
                "env",
                "A=2",
                "BASE=1",
                "/bin/sh",
                "-c",
                "id \"$1\"",
                "sh",
                "bob"
            ]
        );
        assert_eq!(other.cwd.as_deref(), Some("/srv"));
    }
}
