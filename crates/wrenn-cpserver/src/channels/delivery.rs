//! Sending one notification: the signed webhook POST and each chat provider's native
//! API call, over an HTTP client that follows no redirects, uses no proxy, gives up
//! after the configured timeout and connects only to addresses the
//! [`AddressPolicy`] allows.
//!
//! # Webhook
//!
//! `POST {url}` with the JSON payload `{event, timestamp, team_id, actor{type, id?,
//! name?}, resource{id, type}}` and the headers
//! - `Content-Type: application/json`
//! - `X-Wrenn-Delivery: <uuid>` — the same for every attempt of one delivery (and for
//!   a redelivery of the same event to the same channel after a dispatcher restart),
//!   so receivers can deduplicate;
//! - `X-Wrenn-Timestamp: <RFC3339>` — when this attempt was sent;
//! - `X-WRENN-SIGNATURE: sha256=<hex(HMAC-SHA256(secret, timestamp + "." + body))>`.
//!
//! Only a 2xx answer is success.
//!
//! # Chat providers
//!
//! A one-line text ([`message_text`]) in each provider's own shape: Slack and Google
//! Chat `{"text"}`, Discord `{"content"}`, Teams `{"text"}` (incoming-webhook
//! MessageCard), Telegram `POST {api_url}/bot{token}/sendMessage {"chat_id","text"}`,
//! Matrix `PUT {homeserver}/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}`
//! with the access token as bearer and the delivery id as transaction id (so the
//! homeserver drops a retried duplicate).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use reqwest::{Client, Method, Url};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;
use wrenn_core::audit::Actor;
use wrenn_core::events::{EventResource, PlatformEvent};

use super::address::{AddressPolicy, GuardedResolver, Refused};
use super::provider::{Provider, TELEGRAM_API_URL, target_url};

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-WRENN-SIGNATURE";
/// Header carrying the delivery id.
pub const DELIVERY_HEADER: &str = "X-Wrenn-Delivery";
/// Header carrying the attempt's timestamp.
pub const TIMESTAMP_HEADER: &str = "X-Wrenn-Timestamp";
/// `User-Agent` of deliveries.
pub const USER_AGENT: &str = concat!("wrenn-channels/", env!("CARGO_PKG_VERSION"));

/// Why an attempt failed. Messages never contain the target URL (which may carry a
/// token) nor any config value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The target resolves to an address the policy refuses.
    #[error("target refused: {0}")]
    Refused(String),
    /// The target answered with a non-2xx status.
    #[error("target answered HTTP {status}")]
    Status {
        /// The status.
        status: u16,
    },
    /// No answer within the timeout.
    #[error("target did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed (DNS, TCP, TLS) or the exchange broke off.
    #[error("could not reach the target: {0}")]
    Transport(String),
    /// The stored config cannot be used (a required field is missing).
    #[error("unusable channel config: {0}")]
    Config(String),
}

impl DeliveryError {
    /// HTTP status of the answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status } => Some(*status),
            _ => None,
        }
    }

    /// Whether another attempt may succeed: `5xx`, timeouts, transport failures,
    /// `408`, `425` and `429`. Other answers (`3xx`: redirects are not followed; `4xx`:
    /// a deleted Slack webhook answers 404, a bad Telegram chat 400), refused targets
    /// and unusable configs will not change by retrying, so they are dead-lettered at
    /// once.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status } => *status >= 500 || matches!(status, 408 | 425 | 429),
            Self::Timeout(_) | Self::Transport(_) => true,
            Self::Refused(_) | Self::Config(_) => false,
        }
    }
}

/// The webhook payload.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookPayload<'a> {
    /// Event type.
    pub event: &'static str,
    /// When it happened (RFC 3339, UTC).
    pub timestamp: String,
    /// `team-…`.
    pub team_id: String,
    /// Who caused it.
    pub actor: &'a Actor,
    /// What it is about.
    pub resource: &'a EventResource,
}

impl<'a> WebhookPayload<'a> {
    /// The payload of `event`.
    pub fn new(event: &'a PlatformEvent) -> Self {
        Self {
            event: event.event.as_str(),
            timestamp: event.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true),
            team_id: event.team_id.to_string(),
            actor: &event.actor,
            resource: &event.resource,
        }
    }
}

/// `sha256=hex(HMAC-SHA256(secret, timestamp + "." + body))`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The one-line text chat providers receive.
pub fn message_text(event: &PlatformEvent) -> String {
    let who = match (&event.actor.id, event.actor.name.as_str()) {
        (_, name) if !name.is_empty() => format!(" by {name}"),
        (Some(id), _) => format!(" by {id}"),
        (None, _) => String::new(),
    };
    format!(
        "[Wrenn] {}: {} {}{} (team {}) at {}",
        event.event.as_str(),
        event.resource.kind,
        event.resource.id,
        who,
        event.team_id,
        event.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// Sends notifications.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: Client,
    policy: Arc<AddressPolicy>,
    timeout: Duration,
}

impl Deliverer {
    /// A deliverer enforcing `policy`, each attempt bounded by `timeout`.
    pub fn new(policy: Arc<AddressPolicy>, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(USER_AGENT)
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .build()?;
        Ok(Self {
            client,
            policy,
            timeout,
        })
    }

    /// The address policy.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// One attempt of delivering `event` through `provider` with the plaintext
    /// `config`; `Ok(status)` on a 2xx answer.
    pub async fn send(
        &self,
        provider: Provider,
        config: &BTreeMap<String, String>,
        event: &PlatformEvent,
        delivery_id: Uuid,
    ) -> Result<u16, DeliveryError> {
        let field = |name: &str| {
            config
                .get(name)
                .map(String::as_str)
                .ok_or_else(|| DeliveryError::Config(format!("{name} is missing")))
        };
        let url = |name: &str, raw: &str| {
            target_url(name, raw).map_err(|e| DeliveryError::Config(e.to_string()))
        };
        let text = message_text(event);
        let request = match provider {
            Provider::Webhook => {
                let target = url("url", field("url")?)?;
                let body = serde_json::to_vec(&WebhookPayload::new(event))
                    .map_err(|e| DeliveryError::Config(e.to_string()))?;
                let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
                let secret = field("secret")?;
                self.request(Method::POST, target)?
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(DELIVERY_HEADER, delivery_id.to_string())
                    .header(
                        SIGNATURE_HEADER,
                        signature(secret.as_bytes(), &timestamp, &body),
                    )
                    .header(TIMESTAMP_HEADER, timestamp)
                    .body(body)
            }
            Provider::Slack | Provider::Teams | Provider::GoogleChat => {
                let target = url("webhook_url", field("webhook_url")?)?;
                self.request(Method::POST, target)?
                    .json(&json!({ "text": text }))
            }
            Provider::Discord => {
                let target = url("webhook_url", field("webhook_url")?)?;
                self.request(Method::POST, target)?
                    .json(&json!({ "content": text }))
            }
            Provider::Telegram => {
                let base = config
                    .get("api_url")
                    .map_or(TELEGRAM_API_URL, String::as_str);
                let mut target = url("api_url", base)?;
                target
                    .path_segments_mut()
                    .map_err(|()| DeliveryError::Config("api_url cannot take a path".into()))?
                    .pop_if_empty()
                    .push(&format!("bot{}", field("bot_token")?))
                    .push("sendMessage");
                self.request(Method::POST, target)?.json(&json!({
                    "chat_id": field("chat_id")?,
                    "text": text,
                }))
            }
            Provider::Matrix => {
                let mut target = url("homeserver_url", field("homeserver_url")?)?;
                let txn = delivery_id.simple().to_string();
                target
                    .path_segments_mut()
                    .map_err(|()| {
                        DeliveryError::Config("homeserver_url cannot take a path".into())
                    })?
                    .pop_if_empty()
                    .extend([
                        "_matrix",
                        "client",
                        "v3",
                        "rooms",
                        field("room_id")?,
                        "send",
                        "m.room.message",
                        &txn,
                    ]);
                self.request(Method::PUT, target)?
                    .bearer_auth(field("access_token")?)
                    .json(&json!({ "msgtype": "m.text", "body": text }))
            }
        };
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        // Drain (bounded by the client's timeout) so the connection can be reused.
        let _ = response.bytes().await;
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(DeliveryError::Status {
                status: status.as_u16(),
            })
        }
    }

    /// A request to `url`, after checking a literal IP host (names are checked by
    /// the resolver, on the addresses then connected to).
    fn request(&self, method: Method, url: Url) -> Result<reqwest::RequestBuilder, DeliveryError> {
        let host = url.host_str().unwrap_or_default();
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>();
        if let Ok(ip) = literal {
            self.policy
                .check(ip)
                .map_err(|r| DeliveryError::Refused(r.to_string()))?;
        }
        Ok(self.client.request(method, url))
    }

    fn transport(&self, e: reqwest::Error) -> DeliveryError {
        let e = e.without_url();
        if let Some(refused) = find_source::<Refused>(&e) {
            return DeliveryError::Refused(refused.to_string());
        }
        if let Some(refused) = find_source::<super::address::ResolveError>(&e) {
            return match refused {
                super::address::ResolveError::Refused(r) => DeliveryError::Refused(r.to_string()),
                other => DeliveryError::Transport(other.to_string()),
            };
        }
        if e.is_timeout() {
            return DeliveryError::Timeout(self.timeout);
        }
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        DeliveryError::Transport(message)
    }
}

/// The first error of type `T` in `e`'s source chain.
fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use wrenn_core::events::PlatformEventKind;
    use wrenn_core::id::{SandboxId, TeamId, UserId};

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently (Python's `hmac`):
        // hmac.new(b"whsec", b'2024-05-01T12:00:00Z.{"event":"host.up"}', sha256).
        assert_eq!(
            signature(b"whsec", "2024-05-01T12:00:00Z", br#"{"event":"host.up"}"#),
            "sha256=5dfff48b23ccd4d8fed229c22271af1cebd2aa184f89f85dd2462c62bc165efb"
        );
        let a = signature(b"k", "2024-01-01T00:00:00Z", b"{}");
        assert_ne!(a, signature(b"k", "2024-01-01T00:00:01Z", b"{}"));
        assert_ne!(a, signature(b"other", "2024-01-01T00:00:00Z", b"{}"));
        assert_eq!(a.len(), "sha256=".len() + 64);
    }

    #[test]
    fn the_payload_has_the_contract_shape() {
        let ev = PlatformEvent::capsule(
            PlatformEventKind::CapsuleCreated,
            TeamId::new(),
            Actor::user(UserId::new(), "ann@example.com"),
            SandboxId::new(),
        );
        let v = serde_json::to_value(WebhookPayload::new(&ev)).unwrap();
        assert_eq!(v["event"], "capsule.created");
        assert!(v["team_id"].as_str().unwrap().starts_with("team-"));
        assert_eq!(v["actor"]["type"], "user");
        assert_eq!(v["actor"]["name"], "ann@example.com");
        assert!(v["actor"]["id"].as_str().unwrap().starts_with("usr-"));
        assert_eq!(v["resource"]["type"], "capsule");
        assert!(v["resource"]["id"].as_str().unwrap().starts_with("cl-"));
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "{ts}"
        );
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "{keys:?}");
        let text = message_text(&ev);
        assert!(
            text.starts_with("[Wrenn] capsule.created: capsule cl-"),
            "{text}"
        );
        assert!(text.contains("by ann@example.com"), "{text}");
    }

    #[test]
    fn only_transient_failures_are_retried() {
        for s in [500, 502, 503, 408, 429] {
            assert!(DeliveryError::Status { status: s }.is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 301, 302] {
            assert!(!DeliveryError::Status { status: s }.is_retryable(), "{s}");
        }
        assert!(DeliveryError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!DeliveryError::Refused("x".into()).is_retryable());
    }
}
