//! The API error envelope: `{"error":{"code":"snake_case","message":"…"}}`.
//!
//! Every handler — core or extension — returns [`ApiError`] on failure, and every
//! domain error converts into it here, in one place.

use std::borrow::Cow;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use wrenn_core::agents::HostCallError;
use wrenn_core::auth::{AuthError, JwtError, RoleError};
use wrenn_core::id::IdError;
use wrenn_core::lifecycle::LifecycleError;
use wrenn_core::repo::RepoError;
use wrenn_core::scheduler::SchedulerError;
use wrenn_core::validate::ValidationError;

/// An error answer: HTTP status, stable snake_case code, human message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (what SDKs dispatch on).
    pub code: Cow<'static, str>,
    /// Human-readable message.
    pub message: String,
    /// Extra top-level fields of the `error` object (e.g. `sandbox_ids`).
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// Any status and code.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }

    /// Adds a top-level field to the `error` object.
    pub fn with_detail(mut self, key: &str, value: serde_json::Value) -> Self {
        self.details
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 409 with a specific code (`conflict`, `invalid_state`, …).
    pub fn conflict(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 413 `too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 500 `internal_error`. The detail is logged, not returned.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal server error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        if let Some(details) = self.details {
            error.extend(details);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound { entity } => Self::not_found(entity),
            RepoError::Conflict(m) => Self::conflict("conflict", m),
            RepoError::Invalid(m) => Self::bad_request(m),
            RepoError::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database is unavailable; try again shortly",
                )
            }
            other => Self::internal(other),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<RoleError> for ApiError {
    fn from(e: RoleError) -> Self {
        Self::forbidden(e.to_string())
    }
}

impl From<JwtError> for ApiError {
    fn from(e: JwtError) -> Self {
        Self::unauthorized(format!("invalid or expired token: {e}"))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Jwt(e) => e.into(),
            AuthError::Role(e) => e.into(),
            other => Self::bad_request(other.to_string()),
        }
    }
}

impl From<HostCallError> for ApiError {
    fn from(e: HostCallError) -> Self {
        match e {
            HostCallError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
            HostCallError::InvalidArgument(m) => Self::bad_request(m),
            HostCallError::FailedPrecondition(m) => Self::conflict("conflict", m),
            HostCallError::Unavailable(m) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "host_unavailable", m)
            }
            HostCallError::Timeout(m) => Self::new(StatusCode::GATEWAY_TIMEOUT, "agent_error", m),
            e @ HostCallError::ResourceExhausted(_) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "host_capacity_exhausted",
                e.to_string(),
            ),
            HostCallError::Internal(m) => Self::new(StatusCode::BAD_GATEWAY, "agent_error", m),
        }
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::Store(e) => e.into(),
            e @ SchedulerError::ExceedsHostCapacity { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "capsule_too_large", e.to_string())
            }
            // Hosts exist but are full now: the caller may retry later.
            e @ (SchedulerError::InsufficientResources { .. }
            | SchedulerError::HostsFull { .. }) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_capacity",
                e.to_string(),
            ),
            other => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_hosts_available",
                other.to_string(),
            ),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Invalid(e) => e.into(),
            LifecycleError::NotFound(what) => Self::not_found(what),
            e @ LifecycleError::InvalidState { .. } => {
                Self::conflict("invalid_state", e.to_string())
            }
            e @ LifecycleError::TemplateBuilding { .. } => {
                Self::conflict("template_building", e.to_string())
            }
            e @ LifecycleError::NameReserved(_) => Self::conflict("name_reserved", e.to_string()),
            e @ LifecycleError::NameTaken(_) => {
                Self::conflict("template_name_taken", e.to_string())
            }
            LifecycleError::NoHosts(e) => e.into(),
            e @ LifecycleError::QuotaExceeded { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                e.to_string(),
            ),
            LifecycleError::Agent(e) => e.into(),
            LifecycleError::Store(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_errors_map_to_stable_codes() {
        let e: ApiError = LifecycleError::NotFound("capsule").into();
        assert_eq!((e.status, &*e.code), (StatusCode::NOT_FOUND, "not_found"));
        let e: ApiError = LifecycleError::NameTaken("x".into()).into();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::CONFLICT, "template_name_taken")
        );
        let e: ApiError = LifecycleError::NoHosts(SchedulerError::NoPlatformHosts).into();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "no_hosts_available")
        );
        let e: ApiError = LifecycleError::NoHosts(SchedulerError::InsufficientResources {
            memory_mb: 512,
            disk_mb: 1024,
        })
        .into();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::TOO_MANY_REQUESTS, "insufficient_capacity")
        );
        let e: ApiError = LifecycleError::NoHosts(SchedulerError::ExceedsHostCapacity {
            resource: "vCPUs",
            requested: 16,
            limit: 8,
            reserve: "",
        })
        .into();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::BAD_REQUEST, "capsule_too_large")
        );
        let e: ApiError = LifecycleError::QuotaExceeded { limit: 5, live: 5 }.into();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
        );
        let e: ApiError = HostCallError::ResourceExhausted("host memory exhausted".into()).into();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::TOO_MANY_REQUESTS, "host_capacity_exhausted")
        );
        let e: ApiError = RepoError::Unavailable("connection refused".into()).into();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
        );
        let e: ApiError = RepoError::Backend("boom".into()).into();
        assert_eq!(
            e.message, "internal server error",
            "internals are not leaked"
        );
    }

    #[tokio::test]
    async fn the_envelope_carries_details_at_top_level() {
        let resp = ApiError::conflict("host_has_sandboxes", "busy")
            .with_detail("sandbox_ids", json!(["cl-1"]))
            .into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "host_has_sandboxes");
        assert_eq!(v["error"]["sandbox_ids"][0], "cl-1");
    }
}
