//! Authentication: who is calling, for which team, with what role.
//!
//! Handlers ask for one of the extractors — [`AuthContext`] (API key or user JWT),
//! [`UserAuth`] (user JWT only), [`AdminAuth`] (platform admin), [`HostAuth`] (host
//! JWT) — and get either the caller or a 401/403 in the standard envelope. The role
//! in a JWT is only a hint: the membership is re-read from the database on every
//! request. The extractors check credentials through the [`Authenticate`] of
//! [`ServerContext::auth`] (`wrenn-cpserver`'s `Authenticator` in a stock build).

use async_trait::async_trait;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use wrenn_core::audit::Actor;
use wrenn_core::auth::{JwtKeys, Role};
use wrenn_core::id::{ApiKeyId, HostId, TeamId, UserId};
use wrenn_core::repo::RepoError;

use crate::context::ServerContext;
use crate::error::ApiError;

/// Header carrying a team API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Header carrying a host JWT.
pub const HOST_TOKEN_HEADER: &str = "x-host-token";

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

/// How the control plane checks credentials: what the extractors of this module call
/// through [`ServerContext::auth`]. `wrenn-cpserver` implements it over the JWT keys
/// and the store, with the API-key cache and batched `last_used` writes.
#[async_trait]
pub trait Authenticate: Send + Sync + std::fmt::Debug {
    /// The JWT keys (to sign tokens at login, and to verify them).
    fn jwt(&self) -> &JwtKeys;

    /// Authenticates a presented API key.
    async fn api_key(&self, presented: &str) -> Result<AuthContext, ApiError>;

    /// Authenticates a user JWT, re-reading the user and their membership.
    async fn user_token(&self, token: &str) -> Result<UserAuth, ApiError>;

    /// Authenticates a host JWT.
    fn host_token(&self, token: &str) -> Result<HostId, ApiError> {
        self.jwt()
            .verify_host(token)
            .map(|c| c.sub)
            .map_err(|e| ApiError::unauthorized(format!("invalid host token: {e}")))
    }

    /// API key (`X-API-Key`) if present, else user JWT (`Authorization: Bearer`).
    async fn authenticate(&self, headers: &HeaderMap) -> Result<AuthContext, ApiError> {
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

    /// Forgets a cached API key at once (after it is deleted).
    fn evict_api_key(&self, id: ApiKeyId);

    /// Forgets every cached API key of a team (team deleted, keys purged).
    fn evict_team(&self, team: TeamId);

    /// Writes the batched `last_used` times of API keys; returns how many were updated.
    async fn flush_usage(&self) -> Result<usize, RepoError>;
}

/// The token of an `Authorization: Bearer` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
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
        let auth = ctx.auth.authenticate(&parts.headers).await?;
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
