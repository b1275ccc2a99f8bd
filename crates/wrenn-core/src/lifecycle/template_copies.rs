//! Templates on every host: a capsule created from a snapshot template on a host that
//! does not hold the template's files gets a copy first, relayed from a host that does
//! ([`HostAgents::copy_template`](crate::agents::HostAgents::copy_template) over the
//! control plane's authenticated channels to both agents).
//!
//! The store records which hosts hold each template (`template_hosts`): the host that
//! made it, then every host it was copied to. A template with no record (made before
//! Wrenn kept them) is left to the host it is placed on, as before. Copies to one host
//! are made one at a time per template, and a host that already holds the template
//! when its turn comes is not copied to again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::agents::HostCallError;
use crate::id::{HostId, TemplateId};
use crate::model::{Template, TemplateKind};

use super::service::{Lifecycle, with_timeout};

/// The turn of one (template, destination host) copy.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// One lock per (template, destination host) being copied to.
#[derive(Debug, Default)]
pub(super) struct CopyLocks(Mutex<HashMap<(TemplateId, HostId), Turn>>);

impl CopyLocks {
    fn lock_for(&self, template: TemplateId, host: HostId) -> Turn {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Forget locks nobody holds or waits for.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(locks.entry((template, host)).or_default())
    }
}

impl Lifecycle {
    /// Makes sure `host` holds `template`'s files before a capsule starts from it
    /// there: snapshot templates are copied from a host that holds them.
    pub(super) async fn place_template(
        &self,
        template: &Template,
        host: HostId,
    ) -> Result<(), HostCallError> {
        if template.kind != TemplateKind::Snapshot {
            return Ok(());
        }
        let store = &self.inner.store;
        let holders = |e: crate::repo::RepoError| {
            HostCallError::Unavailable(format!("where template {} is: {e}", template.name))
        };
        let lock = self.inner.copies.lock_for(template.id, host);
        let _turn = lock.lock().await;
        let held_by = store.template_hosts(template.id).await.map_err(holders)?;
        if held_by.is_empty() || held_by.contains(&host) {
            return Ok(());
        }
        let mut last = None;
        for from in held_by {
            let copied = with_timeout(
                self.inner.timeouts.snapshot,
                "copy template",
                self.inner
                    .agents
                    .copy_template(from, host, template.team_id, template.id),
            )
            .await;
            match copied {
                Ok(size) => {
                    info!(template_id = %template.id, from = %from, to = %host, size, "template copied");
                    store
                        .add_template_host(template.id, host)
                        .await
                        .map_err(holders)?;
                    return Ok(());
                }
                Err(e) => {
                    warn!(template_id = %template.id, from = %from, to = %host, error = %e, "could not copy the template from this host");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            HostCallError::Unavailable(format!("no host holds template {}", template.name))
        }))
    }
}
