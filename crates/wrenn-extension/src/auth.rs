//! Authentication: who is calling, for which team, with what role.
//!
//! Handlers ask for one of the extractors — [`AuthContext`] (API key or user JWT),
//! [`UserAuth`] (user JWT only), [`AdminAuth`] (platform admin), [`HostAuth`] (host
//! JWT) — and get either the caller or a 401/403 in the standard envelope. The role
//! in a JWT is only a hint: the membership is re-read from the database on every
//! request. API keys are looked up by hash behind a short-TTL cache, and their
//! `last_used` is recorded in batches instead of a write per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use wrenn_core::audit::Actor;
use wrenn_core::auth::{JwtError, JwtKeys, Role, hash_api_key, looks_like_api_key};
use wrenn_core::id::{ApiKeyId, HostId, TeamId, UserId};
use wrenn_core::model::UserStatus;
use wrenn_core::repo::{ApiKeyAuth, RepoError, Store};

use crate::context::ServerContext;
use crate::error::ApiError;

/// Header carrying a team API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Header carrying a host JWT.
pub const HOST_TOKEN_HEADER: &str = "x-host-token";
/// How long an API-key lookup is trusted.
pub const API_KEY_CACHE_TTL: Duration = Duration::from_secs(10);
/// How long an unknown API key is remembered as unknown.
pub const API_KEY_NEGATIVE_TTL: Duration = Duration::from_secs(2);
const API_KEY_CACHE_MAX: usize = 10_000;

/// A logged-in user, with their role in the team re-read from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPrincipal {
    /// The user.
    pub id: UserId,
    /// Email.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role in the token's team (from the database).
    pub role: Role,
    /// Platform admin (from the database).
    pub is_admin: bool,
}

/// Who is calling. New kinds of callers may be added: match with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Principal {
    /// A user with a JWT.
    User(UserPrincipal),
    /// A team API key.
    ApiKey {
        /// The key.
        id: ApiKeyId,
        /// Its name.
        name: String,
    },
}

/// An authenticated caller acting in a team (API key or user JWT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthContext {
    /// The team the caller acts in.
    pub team_id: TeamId,
    /// The caller.
    pub principal: Principal,
}

impl AuthContext {
    /// The caller as an audit actor.
    pub fn actor(&self) -> Actor {
        match &self.principal {
            Principal::User(u) => Actor::user(u.id, u.email.clone()),
            Principal::ApiKey { id, name } => Actor::api_key(*id, name.clone()),
        }
    }

    /// The user, if the caller is one.
    pub fn user(&self) -> Option<&UserPrincipal> {
        match &self.principal {
            Principal::User(u) => Some(u),
            Principal::ApiKey { .. } => None,
        }
    }
}

/// A caller authenticated with a user JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAuth {
    /// The team the token acts in.
    pub team_id: TeamId,
    /// The user.
    pub user: UserPrincipal,
}

impl UserAuth {
    /// The caller as an audit actor.
    pub fn actor(&self) -> Actor {
        Actor::user(self.user.id, self.user.email.clone())
    }

    /// 403 unless the caller's role satisfies `allowed`.
    pub fn require(&self, allowed: impl Fn(Role) -> bool, what: &str) -> Result<(), ApiError> {
        if allowed(self.user.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "your role ({}) may not {what}",
                self.user.role
            )))
        }
    }
}

/// A platform administrator (the flag is re-read from the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAuth(pub UserAuth);

/// A host agent authenticated with its host JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAuth(pub HostId);

struct CachedKey {
    key: Option<ApiKeyAuth>,
    at: Instant,
}

/// Checks credentials against the JWT keys and the store.
pub struct Authenticator {
    jwt: JwtKeys,
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, CachedKey>>,
    usage: Mutex<HashMap<ApiKeyId, DateTime<Utc>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Authenticator {
    /// Over the given signing keys and store.
    pub fn new(jwt: JwtKeys, store: Arc<dyn Store>) -> Self {
        Self {
            jwt,
            store,
            cache: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
        }
    }

    /// The JWT keys (to sign tokens at login).
    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    /// Authenticates a presented API key.
    pub async fn api_key(&self, presented: &str) -> Result<AuthContext, ApiError> {
        if !looks_like_api_key(presented) {
            return Err(ApiError::unauthorized("invalid API key"));
        }
        let hash = hash_api_key(presented);
        let cached = lock(&self.cache).get(&hash).and_then(|c| {
            let ttl = if c.key.is_some() {
                API_KEY_CACHE_TTL
            } else {
                API_KEY_NEGATIVE_TTL
            };
            (c.at.elapsed() < ttl).then(|| c.key.clone())
        });
        let key = match cached {
            Some(k) => k,
            None => {
                let k = self.store.get_api_key_by_hash(&hash).await?;
                let mut cache = lock(&self.cache);
                if cache.len() >= API_KEY_CACHE_MAX {
                    cache.retain(|_, c| c.at.elapsed() < API_KEY_CACHE_TTL);
                    if cache.len() >= API_KEY_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(
                    hash,
                    CachedKey {
                        key: k.clone(),
                        at: Instant::now(),
                    },
                );
                k
            }
        };
        let key = key
            .ok_or_else(|| ApiError::unauthorized("invalid API key"))?
            .key;
        lock(&self.usage).insert(key.id, Utc::now());
        Ok(AuthContext {
            team_id: key.team_id,
            principal: Principal::ApiKey {
                id: key.id,
                name: key.name,
            },
        })
    }

    /// Authenticates a user JWT, re-reading the user and their membership.
    pub async fn user_token(&self, token: &str) -> Result<UserAuth, ApiError> {
        let claims = self.jwt.verify_user(token).map_err(|e| match e {
            JwtError::Expired => ApiError::unauthorized("token has expired"),
            other => ApiError::unauthorized(format!("invalid token: {other}")),
        })?;
        let user = match self.store.get_user(claims.sub).await {
            Ok(u) => u,
            Err(RepoError::NotFound { .. }) => {
                return Err(ApiError::unauthorized("user no longer exists"));
            }
            Err(e) => return Err(e.into()),
        };
        match user.status {
            UserStatus::Active => {}
            UserStatus::Inactive => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "account_not_activated",
                    "account is not activated",
                ));
            }
            UserStatus::Disabled | UserStatus::Deleted => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "account_deactivated",
                    "account is deactivated",
                ));
            }
        }
        let membership = self
            .store
            .get_membership(claims.team_id, user.id)
            .await?
            .ok_or_else(|| ApiError::forbidden("you are not a member of this team"))?;
        Ok(UserAuth {
            team_id: claims.team_id,
            user: UserPrincipal {
                id: user.id,
                email: user.email,
                name: user.name,
                role: membership.role,
                is_admin: user.is_admin,
            },
        })
    }

    /// Authenticates a host JWT.
    pub fn host_token(&self, token: &str) -> Result<HostId, ApiError> {
        self.jwt
            .verify_host(token)
            .map(|c| c.sub)
            .map_err(|e| ApiError::unauthorized(format!("invalid host token: {e}")))
    }

    /// API key (`X-API-Key`) if present, else user JWT (`Authorization: Bearer`).
    pub async fn from_headers(&self, headers: &HeaderMap) -> Result<AuthContext, ApiError> {
        if let Some(key) = headers.get(API_KEY_HEADER) {
            let key = key
                .to_str()
                .map_err(|_| ApiError::unauthorized("invalid API key"))?;
            return self.api_key(key.trim()).await;
        }
        if let Some(token) = bearer(headers)? {
            let u = self.user_token(token).await?;
            return Ok(AuthContext {
                team_id: u.team_id,
                principal: Principal::User(u.user),
            });
        }
        Err(ApiError::unauthorized(
            "X-API-Key or Authorization: Bearer <token> required",
        ))
    }

    /// Forgets a cached key at once (after it is deleted).
    pub fn evict_api_key(&self, id: ApiKeyId) {
        lock(&self.cache).retain(|_, c| c.key.as_ref().is_none_or(|k| k.key.id != id));
        lock(&self.usage).remove(&id);
    }

    /// Forgets every cached key of a team (team deleted, keys purged).
    pub fn evict_team(&self, team: TeamId) {
        lock(&self.cache).retain(|_, c| c.key.as_ref().is_none_or(|k| k.key.team_id != team));
    }

    /// Writes the batched `last_used` times; returns how many keys were updated.
    pub async fn flush_usage(&self) -> Result<usize, RepoError> {
        let batch: Vec<_> = lock(&self.usage).drain().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.touch_api_keys(&batch).await {
            // Put them back (newer uses win) so the next flush retries.
            let mut usage = lock(&self.usage);
            for (id, at) in batch {
                usage.entry(id).or_insert(at);
            }
            return Err(e);
        }
        Ok(batch.len())
    }
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::unauthorized(
            "Authorization header must be 'Bearer <token>'",
        )),
    }
}

impl<S> FromRequestParts<S> for AuthContext
where
    ServerContext: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ctx) = parts.extensions.get::<AuthContext>() {
            return Ok(ctx.clone());
        }
        let ctx = ServerContext::from_ref(state);
        let auth = ctx.auth.from_headers(&parts.headers).await?;
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}

impl<S> FromRequestParts<S> for UserAuth
where
    ServerContext: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ctx = ServerContext::from_ref(state);
        let token = bearer(&parts.headers)?
            .ok_or_else(|| ApiError::unauthorized("Authorization: Bearer <token> required"))?;
        ctx.auth.user_token(token).await
    }
}

impl<S> FromRequestParts<S> for AdminAuth
where
    ServerContext: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = UserAuth::from_request_parts(parts, state).await?;
        if !user.user.is_admin {
            return Err(ApiError::forbidden("admin access required"));
        }
        Ok(AdminAuth(user))
    }
}

impl<S> FromRequestParts<S> for HostAuth
where
    ServerContext: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ctx = ServerContext::from_ref(state);
        let token = parts
            .headers
            .get(HOST_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("X-Host-Token required"))?;
        ctx.auth.host_token(token.trim()).map(HostAuth)
    }
}
