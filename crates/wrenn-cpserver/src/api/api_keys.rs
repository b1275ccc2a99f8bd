//! Team API keys.
//!
//! Minting and revoking a key needs a user JWT (a key cannot mint keys). Listing
//! also accepts a key of the team (`X-API-Key`): it only shows names and prefixes,
//! and it is the cheapest key-authenticated route, which the load benchmark uses.
//! The plaintext key is returned once, at creation; only its SHA-256 and its first
//! ten characters are stored.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::{AuditEntry, AuditStatus};
use wrenn_core::auth::api_key::DEFAULT_API_KEY_NAME;
use wrenn_core::auth::{ApiKey, Role};
use wrenn_core::id::{ApiKeyId, TeamId, UserId};
use wrenn_core::model::{self, ApiKeyWithCreator};
use wrenn_extension::extract::{Json, Path};
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext, UserAuth};

use super::tags;

/// Longest key name.
pub const MAX_API_KEY_NAME_LEN: usize = 128;

/// An API key as the API returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyBody {
    /// `key-…`.
    #[schema(value_type = String)]
    pub id: ApiKeyId,
    /// Owning team.
    #[schema(value_type = String)]
    pub team_id: TeamId,
    /// Display name.
    pub name: String,
    /// First 10 characters of the key (`wrn_ab12cd`).
    pub key_prefix: String,
    /// Creator (`usr-…`); absent once the creator's account is gone.
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<UserId>,
    /// Creator's email; null once the creator's account is gone.
    pub creator_email: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last authenticated use (recorded in batches, so up to a few seconds late).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<DateTime<Utc>>,
    /// The plaintext key: present only in the creation response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl ApiKeyBody {
    fn new(key: model::ApiKey, creator_email: Option<String>) -> Self {
        Self {
            id: key.id,
            team_id: key.team_id,
            name: key.name,
            key_prefix: key.key_prefix,
            created_by: key.created_by,
            creator_email,
            created_at: key.created_at,
            last_used: key.last_used,
            key: None,
        }
    }
}

impl From<ApiKeyWithCreator> for ApiKeyBody {
    fn from(k: ApiKeyWithCreator) -> Self {
        Self::new(k.key, k.creator_email)
    }
}

/// `POST /v1/api-keys` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateApiKey {
    /// Display name (default "Unnamed API Key"); at most 128 characters.
    pub name: Option<String>,
}

fn key_name(name: Option<String>) -> Result<String, ApiError> {
    let name = name.as_deref().map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Ok(DEFAULT_API_KEY_NAME.to_owned());
    }
    if name.chars().count() > MAX_API_KEY_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "name must be at most {MAX_API_KEY_NAME_LEN} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

/// Creates a key for the token's team. The response carries the plaintext `key`,
/// which is never shown again.
#[utoipa::path(post, path = "/v1/api-keys", tag = tags::API_KEYS, security(("bearer" = [])), request_body = CreateApiKey,
    responses((status = 201, body = ApiKeyBody), (status = 400), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id))]
async fn create(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(body): Json<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<ApiKeyBody>)> {
    auth.require(Role::can_manage_api_keys, "create API keys")?;
    let name = key_name(body.name)?;
    let plaintext = ApiKey::generate();
    let stored = ctx
        .store
        .create_api_key(model::ApiKey {
            id: ApiKeyId::new(),
            team_id: auth.team_id,
            name,
            key_hash: plaintext.hash(),
            key_prefix: plaintext.prefix().to_owned(),
            created_by: Some(auth.user.id),
            created_at: Utc::now(),
            last_used: None,
        })
        .await?;
    ctx.audit(
        AuditEntry::new(
            auth.team_id,
            auth.actor(),
            "api_key",
            Some(stored.id.to_string()),
            "create",
        )
        .metadata(json!({ "name": stored.name })),
    )
    .await;
    let mut body = ApiKeyBody::new(stored, Some(auth.user.email.clone()));
    body.key = Some(plaintext.expose_secret().to_owned());
    Ok((StatusCode::CREATED, Json(body)))
}

/// The team's keys, newest first (never the plaintext).
#[utoipa::path(get, path = "/v1/api-keys", tag = tags::API_KEYS, security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = [ApiKeyBody]), (status = 401)))]
async fn list(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
) -> ApiResult<Json<Vec<ApiKeyBody>>> {
    let keys = ctx.store.list_api_keys(auth.team_id).await?;
    Ok(Json(keys.into_iter().map(Into::into).collect()))
}

/// Revokes a key of the token's team; it stops working at once. Revoking a key that
/// does not exist (or belongs to another team) changes nothing and also answers 204.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = tags::API_KEYS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id (`key-…`)")),
    responses((status = 204), (status = 400), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id))]
async fn delete(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<ApiKeyId>,
) -> ApiResult<StatusCode> {
    auth.require(Role::can_manage_api_keys, "revoke API keys")?;
    if ctx.store.delete_api_key(auth.team_id, id).await? {
        ctx.auth.evict_api_key(id);
        ctx.audit(
            AuditEntry::new(
                auth.team_id,
                auth.actor(),
                "api_key",
                Some(id.to_string()),
                "revoke",
            )
            .status(AuditStatus::Warning),
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(delete))
}
