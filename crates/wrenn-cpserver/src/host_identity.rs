//! How a host agent gets, renews and keeps its identity — the domain behind the
//! agent-facing host routes (`api::hosts`), which only check input and shape answers.
//!
//! - [`issue_registration_token`]: a one-time token (64 hex, valid 1 hour, only its
//!   SHA-256 stored) for a `pending` host.
//! - [`register`]: the token is consumed by one conditional write (of concurrent
//!   attempts exactly one wins), the host goes `pending` → `online` with what it
//!   reported, and gets [credentials](issue_credentials).
//! - [`refresh`]: a new refresh token is stored before the presented one is revoked,
//!   so a crash in between leaves two valid tokens rather than none; of two concurrent
//!   refreshes with one token, the loser's new token is withdrawn.
//! - [`heartbeat`]: the reported machine replaces the stored one; an `unreachable`
//!   host comes back `online` (audited as `host/marked_up`, published as `host.up`).

use chrono::Utc;
use serde_json::json;
use wrenn_core::audit::{Actor, AuditEntry, AuditScope, AuditStatus};
use wrenn_core::auth::{
    HOST_REFRESH_TOKEN_LIFETIME, HostClaims, JwtError, OpaqueToken, REGISTRATION_TOKEN_LIFETIME,
};
use wrenn_core::events::{Event, EventResource, PLATFORM_STREAM, PlatformEvent, PlatformEventKind};
use wrenn_core::host_api::IssuedCredentials;
use wrenn_core::id::{HostId, HostRefreshTokenId, HostTokenId, PLATFORM_TEAM_ID, TeamId, UserId};
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::model::{Host, HostRefreshToken, HostToken};
use wrenn_core::repo::{HostSpec, RepoError, Store};
use wrenn_core::report::error_chain;
use wrenn_extension::{ApiError, ServerContext};

use crate::ca::{CaError, CertificateAuthority};

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The registration token is unknown, used, expired or malformed, or its host
    /// registered or went away meanwhile.
    #[error("invalid or expired registration token")]
    InvalidRegistrationToken,
    /// The refresh token is unknown, revoked, expired or malformed, or its host is gone.
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    /// No such host.
    #[error("host not found")]
    HostNotFound,
    /// The host CA could not sign the agent's certificate.
    #[error("could not sign the host certificate")]
    Certificate(#[source] CaError),
    /// The host JWT could not be signed.
    #[error("could not sign the host token")]
    Token(#[source] JwtError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] RepoError),
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::InvalidRegistrationToken | IdentityError::InvalidRefreshToken => {
                ApiError::unauthorized(e.to_string())
            }
            IdentityError::HostNotFound => ApiError::not_found("host"),
            IdentityError::Store(e) => e.into(),
            // The cause chain goes to the log, not to the agent.
            IdentityError::Certificate(_) | IdentityError::Token(_) => {
                ApiError::internal(error_chain(&e))
            }
        }
    }
}

/// The team a host's audit entries and events belong to (a platform host's: the
/// platform team).
pub fn host_team(host: &Host) -> TeamId {
    host.team_id.unwrap_or(PLATFORM_TEAM_ID)
}

/// Stores a fresh registration token for `host`, issued by `by`; returns the plaintext.
pub async fn issue_registration_token(
    store: &dyn Store,
    host: HostId,
    by: UserId,
) -> Result<OpaqueToken, RepoError> {
    let token = OpaqueToken::generate();
    let now = Utc::now();
    store
        .create_host_token(HostToken {
            id: HostTokenId::new(),
            host_id: host,
            token_hash: token.hash(),
            created_by: Some(by),
            created_at: now,
            expires_at: now + REGISTRATION_TOKEN_LIFETIME,
            used_at: None,
        })
        .await?;
    Ok(token)
}

/// Signs a host JWT and a certificate for the host's address (recording its
/// fingerprint and expiry on the host) and stores a fresh refresh token; returns what
/// was issued and the new refresh token's id.
pub async fn issue_credentials(
    ctx: &ServerContext,
    ca: &CertificateAuthority,
    host: &Host,
) -> Result<(IssuedCredentials, HostRefreshTokenId), IdentityError> {
    let now = Utc::now();
    let cert = ca
        .issue_host_cert(host.id, &host.address, now)
        .map_err(IdentityError::Certificate)?;
    ctx.store
        .update_host_cert(host.id, &cert.fingerprint, cert.expires_at)
        .await?;
    let jwt = ctx
        .auth
        .jwt()
        .sign_host(&HostClaims::new(host.id))
        .map_err(IdentityError::Token)?;
    let refresh = OpaqueToken::generate();
    let stored = ctx
        .store
        .create_refresh_token(HostRefreshToken {
            id: HostRefreshTokenId::new(),
            host_id: host.id,
            token_hash: refresh.hash(),
            expires_at: now + HOST_REFRESH_TOKEN_LIFETIME,
            created_at: now,
            revoked_at: None,
        })
        .await?;
    let issued = IssuedCredentials {
        token: jwt,
        refresh_token: refresh.expose_secret().to_owned(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        ca_cert_pem: ca.cert_pem().to_owned(),
    };
    Ok((issued, stored.id))
}

/// Trades a one-time registration token for credentials: the host goes `pending` →
/// `online` with `spec` (already validated). Returns the registered host.
pub async fn register(
    ctx: &ServerContext,
    ca: &CertificateAuthority,
    token: &str,
    spec: &HostSpec,
) -> Result<(Host, IssuedCredentials), IdentityError> {
    let token =
        OpaqueToken::parse(token.trim()).map_err(|_| IdentityError::InvalidRegistrationToken)?;
    let record = ctx
        .store
        .consume_host_token(&token.hash(), Utc::now())
        .await?
        .ok_or(IdentityError::InvalidRegistrationToken)?;
    let host_id = record.host_id;
    match ctx.store.register_host(host_id, spec).await {
        Ok(true) => {}
        // Already registered (an older token of a re-issued pair) or deleted meanwhile.
        Ok(false) | Err(RepoError::NotFound { .. }) => {
            return Err(IdentityError::InvalidRegistrationToken);
        }
        Err(e) => return Err(e.into()),
    }
    ctx.hosts.evict(host_id);
    let host = ctx.store.get_host(host_id).await?;
    let (issued, _) = issue_credentials(ctx, ca, &host).await?;
    tracing::info!(host_id = %host_id, address = %spec.address, "host registered");
    ctx.audit(
        AuditEntry::new(
            host_team(&host),
            Actor::system(),
            "host",
            Some(host_id.to_string()),
            "register",
        )
        .scope(AuditScope::Admin)
        .metadata(json!({ "address": spec.address, "arch": spec.arch })),
    )
    .await;
    Ok((host, issued))
}

/// Trades a refresh token for new credentials (issue first, revoke second).
pub async fn refresh(
    ctx: &ServerContext,
    ca: &CertificateAuthority,
    presented: &str,
) -> Result<(Host, IssuedCredentials), IdentityError> {
    let presented =
        OpaqueToken::parse(presented.trim()).map_err(|_| IdentityError::InvalidRefreshToken)?;
    let old = ctx
        .store
        .get_valid_refresh_token(&presented.hash(), Utc::now())
        .await?
        .ok_or(IdentityError::InvalidRefreshToken)?;
    let host = match ctx.store.get_host(old.host_id).await {
        Ok(h) => h,
        Err(RepoError::NotFound { .. }) => return Err(IdentityError::InvalidRefreshToken),
        Err(e) => return Err(e.into()),
    };
    let (issued, new_id) = issue_credentials(ctx, ca, &host).await?;
    if !ctx.store.revoke_refresh_token(old.id).await? {
        // A concurrent refresh spent the same token first: withdraw ours.
        if let Err(e) = ctx.store.revoke_refresh_token(new_id).await {
            tracing::warn!(host_id = %old.host_id, error = %e, "could not withdraw a losing refresh token");
        }
        return Err(IdentityError::InvalidRefreshToken);
    }
    tracing::info!(host_id = %old.host_id, "host credentials refreshed");
    Ok((host, issued))
}

/// What a heartbeat reported, validated; `None` keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatReport {
    /// `host:port` of the agent.
    pub address: Option<String>,
    /// CPU architecture.
    pub arch: Option<String>,
    /// Logical CPUs.
    pub cpu_cores: Option<i32>,
    /// Memory, MiB.
    pub memory_mb: Option<i32>,
    /// Disk, GiB.
    pub disk_gb: Option<i32>,
}

/// Records a heartbeat of `id`.
pub async fn heartbeat(
    ctx: &ServerContext,
    id: HostId,
    report: HeartbeatReport,
) -> Result<(), IdentityError> {
    let current = match ctx.store.get_host(id).await {
        Ok(h) => h,
        Err(RepoError::NotFound { .. }) => return Err(IdentityError::HostNotFound),
        Err(e) => return Err(e.into()),
    };
    let spec = HostSpec {
        address: report.address.unwrap_or(current.address.clone()),
        arch: report.arch.unwrap_or(current.arch.clone()),
        cpu_cores: report.cpu_cores.unwrap_or(current.cpu_cores),
        memory_mb: report.memory_mb.unwrap_or(current.memory_mb),
        disk_gb: report.disk_gb.unwrap_or(current.disk_gb),
    };
    let before = match ctx.store.heartbeat(id, &spec).await {
        Ok(s) => s,
        Err(RepoError::NotFound { .. }) => return Err(IdentityError::HostNotFound),
        Err(e) => return Err(e.into()),
    };
    if spec.address != current.address {
        ctx.hosts.evict(id);
    }
    if before == HostStatus::Unreachable {
        marked_up(ctx, &current).await;
    }
    Ok(())
}

/// Audits and publishes a host that heartbeats again after being `unreachable`.
async fn marked_up(ctx: &ServerContext, host: &Host) {
    tracing::info!(host_id = %host.id, "host heartbeating again; marked online");
    ctx.audit(host_health_audit(host, "marked_up").status(AuditStatus::Success))
        .await;
    publish_host_event(ctx, host, PlatformEventKind::HostUp).await;
}

/// An audit entry the platform writes about `host`'s health (`marked_up`,
/// `marked_down`), in the host's team's trail.
pub fn host_health_audit(host: &Host, action: &str) -> AuditEntry {
    AuditEntry::new(
        host_team(host),
        Actor::system(),
        "host",
        Some(host.id.to_string()),
        action,
    )
    .scope(AuditScope::Team)
}

/// Publishes a platform event about `host` (`host.up`, `host.down`) to its team's
/// stream; a failure is logged.
pub async fn publish_host_event(ctx: &ServerContext, host: &Host, kind: PlatformEventKind) {
    let ev = PlatformEvent {
        event: kind,
        timestamp: Utc::now(),
        team_id: host_team(host),
        actor: Actor::system(),
        resource: EventResource {
            id: host.id.to_string(),
            kind: "host".into(),
        },
    };
    ctx.lifecycle
        .events()
        .publish(PLATFORM_STREAM, Event::Platform(ev))
        .await;
}
