//! [`Authenticator`]: the control plane's credential checks behind the extractors of
//! [`wrenn_extension::auth`]. API keys are looked up by hash behind a short-TTL cache
//! (unknown keys are remembered briefly too, so a flood of bad keys does not reach the
//! database), and their `last_used` is recorded in batches ([`Authenticate::flush_usage`],
//! called by a worker) instead of a write per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use wrenn_core::auth::{JwtError, JwtKeys, hash_api_key, looks_like_api_key};
use wrenn_core::id::{ApiKeyId, TeamId};
use wrenn_core::model::UserStatus;
use wrenn_core::repo::{ApiKeyAuth, RepoError, Store};
use wrenn_extension::ApiError;
use wrenn_extension::auth::{AuthContext, Authenticate, Principal, UserAuth, UserPrincipal};

/// How long an API-key lookup is trusted.
pub const API_KEY_CACHE_TTL: Duration = Duration::from_secs(10);
/// How long an unknown API key is remembered as unknown.
pub const API_KEY_NEGATIVE_TTL: Duration = Duration::from_secs(2);
const API_KEY_CACHE_MAX: usize = 10_000;

struct CachedKey {
    key: Option<ApiKeyAuth>,
    at: Instant,
}

/// The control plane's [`Authenticate`]: credentials checked against the JWT keys and
/// the store.
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
}

#[async_trait]
impl Authenticate for Authenticator {
    fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    async fn api_key(&self, presented: &str) -> Result<AuthContext, ApiError> {
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

    async fn user_token(&self, token: &str) -> Result<UserAuth, ApiError> {
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

    fn evict_api_key(&self, id: ApiKeyId) {
        lock(&self.cache).retain(|_, c| c.key.as_ref().is_none_or(|k| k.key.id != id));
        lock(&self.usage).remove(&id);
    }

    fn evict_team(&self, team: TeamId) {
        lock(&self.cache).retain(|_, c| c.key.as_ref().is_none_or(|k| k.key.team_id != team));
    }

    async fn flush_usage(&self) -> Result<usize, RepoError> {
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
