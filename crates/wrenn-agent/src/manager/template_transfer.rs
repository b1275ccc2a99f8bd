//! Templates moving between hosts: [`SandboxManager::export_template`] streams a
//! template directory as a tar archive, [`SandboxManager::import_template`] unpacks one
//! beside the templates and moves it into place once complete.
//!
//! The archive is GNU tar's (the host's `tar`, as the process runtime's copies use the
//! host's `cp`): it keeps what a template directory holds — hard links between layers,
//! sparse disk images, numeric owners and the extended attributes and character devices
//! that mark overlay whiteouts and opaque directories — and refuses members that would
//! land outside the directory it unpacks into. The control plane relays the stream
//! between two agents' authenticated channels; agents never call each other.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use wrenn_core::id::{TeamId, TemplateId};

use super::SandboxManager;
use super::disk::{path_exists, remove_dir_all_async};
use crate::error::{AgentError, AgentResult};
use crate::runtime::error_chain;

/// Archive bytes per message.
const CHUNK: usize = 1 << 20;
/// Messages buffered ahead of a slow receiver.
const AHEAD: usize = 4;

/// `tar` options both directions share.
const TAR_FORMAT: [&str; 4] = [
    "--format=gnu",
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
];

impl SandboxManager {
    /// The template `(team, template)` as a stream of tar archive chunks. The `tar`
    /// process stops when the stream is dropped.
    pub async fn export_template(
        &self,
        team: TeamId,
        template: TemplateId,
    ) -> AgentResult<impl Stream<Item = AgentResult<Vec<u8>>> + Send + 'static> {
        let dir = self.layout.template_dir(team, template);
        if !path_exists(dir.clone()).await {
            return Err(AgentError::NotFound(format!(
                "template {template} of {team} is not on this host"
            )));
        }
        let mut child = Command::new("tar")
            .args(TAR_FORMAT)
            .args(["--sparse", "-C"])
            .arg(&dir)
            .args(["-cf", "-", "."])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AgentError::internal(format!("start tar: {}", error_chain(&e))))?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<AgentResult<Vec<u8>>>(AHEAD);
        tokio::spawn(async move {
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                // Fill whole chunks: fewer, larger messages.
                while filled < CHUNK {
                    match stdout.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => {
                            let _ = tx
                                .send(Err(AgentError::internal(format!(
                                    "read the archive: {}",
                                    error_chain(&e)
                                ))))
                                .await;
                            return;
                        }
                    }
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                if tx.send(Ok(buf)).await.is_err() {
                    // The receiver went away: `child` is dropped and killed.
                    return;
                }
            }
            if let Err(e) = finished(child, "archive").await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Unpacks the archive `chunks` carries into the template directory of
    /// `(team, template)`, replacing a same-named one unless a sandbox here stands on it;
    /// returns the size it takes. A failed or interrupted stream leaves nothing behind.
    pub async fn import_template<S, B, E>(
        &self,
        team: TeamId,
        template: TemplateId,
        mut chunks: S,
    ) -> AgentResult<u64>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::error::Error,
    {
        let dest = self.layout.template_dir(team, template);
        let parent = self.layout.team_templates_dir(team);
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| io_err("create the team's template directory", &e))?;
        let staging = parent.join(format!(".import-{template}-{}", rand::random::<u32>()));
        tokio::fs::create_dir(&staging)
            .await
            .map_err(|e| io_err("create the import directory", &e))?;
        let result = async {
            let mut child = Command::new("tar")
                .args(TAR_FORMAT)
                .args(["--same-permissions", "-C"])
                .arg(&staging)
                .args(["-xf", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| AgentError::internal(format!("start tar: {}", error_chain(&e))))?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| {
                    AgentError::internal(format!("the archive stream broke: {}", error_chain(&e)))
                })?;
                if let Err(e) = stdin.write_all(chunk.as_ref()).await {
                    // tar stopped reading: its own error says why.
                    drop(stdin);
                    finished(child, "unpack").await?;
                    return Err(io_err("unpack the archive", &e));
                }
            }
            drop(stdin);
            finished(child, "unpack").await
        }
        .await;
        if let Err(e) = result {
            let _ = remove_dir_all_async(staging).await;
            return Err(e);
        }
        // Capsules standing on a copy this host already has keep it: their overlays
        // reference its directories.
        if self.all().iter().any(|sb| {
            sb.with(|st| st.config.template_team_id == team && st.config.template_id == template)
        }) && path_exists(dest.clone()).await
        {
            tracing::warn!(team_id = %team, template_id = %template, "template in use here: the copy it has is kept");
            let _ = remove_dir_all_async(staging).await;
            return Ok(dir_size(dest).await);
        }
        replace_dir(&staging, &dest).await?;
        Ok(dir_size(dest).await)
    }
}

fn io_err(what: &str, e: &std::io::Error) -> AgentError {
    AgentError::internal(format!("{what}: {}", error_chain(e)))
}

/// Waits for `tar`; its stderr is the error when it failed.
async fn finished(mut child: Child, what: &str) -> AgentResult<()> {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr).await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| io_err(&format!("wait for the {what} tar"), &e))?;
    if status.success() {
        Ok(())
    } else {
        Err(AgentError::internal(format!(
            "{what} tar failed ({status}): {}",
            stderr.trim()
        )))
    }
}

/// Moves `staging` to `dest`; a directory already at `dest` is moved aside first and
/// removed after, so `dest` is never half written.
async fn replace_dir(staging: &Path, dest: &Path) -> AgentResult<()> {
    let old: Option<PathBuf> = if path_exists(dest.to_path_buf()).await {
        let aside = dest.with_extension(format!("old-{}", rand::random::<u32>()));
        tokio::fs::rename(dest, &aside)
            .await
            .map_err(|e| io_err("move the previous template aside", &e))?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = tokio::fs::rename(staging, dest).await {
        if let Some(aside) = &old {
            let _ = tokio::fs::rename(aside, dest).await;
        }
        let _ = remove_dir_all_async(staging.to_path_buf()).await;
        return Err(io_err("move the imported template into place", &e));
    }
    if let Some(aside) = old {
        let _ = remove_dir_all_async(aside).await;
    }
    Ok(())
}

/// Bytes the files under `dir` take on disk.
async fn dir_size(dir: PathBuf) -> u64 {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0u64;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    total += meta.blocks() * 512;
                }
            }
        }
        total
    })
    .await
    .unwrap_or(0)
}
