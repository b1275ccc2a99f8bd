//! Notification channels: where a team's platform events (`capsule.created`,
//! `host.down`, …) are sent — a signed webhook, or a Slack, Discord, Teams, Google
//! Chat, Telegram or Matrix message.
//!
//! - [`provider`]: providers, their config fields, names, event types, redaction;
//! - [`crypto`]: configs encrypted at rest (AES-256-GCM per value);
//! - [`address`]: which target addresses may be reached (SSRF protection);
//! - [`delivery`]: one attempt, signed and shaped per provider;
//! - [`dispatcher`]: the worker that reads the platform stream and delivers, with
//!   retries, dead letters and at-least-once acknowledgement.
//!
//! The REST API (`/v1/channels`) and the dispatcher share one [`ChannelService`].

use std::sync::Arc;

use sha2::{Digest, Sha256};
use uuid::Uuid;
use wrenn_core::config::{ChannelsConfig, Config};
use wrenn_core::events::{EventId, PlatformEvent};
use wrenn_core::id::ChannelId;

pub mod address;
pub mod crypto;
pub mod delivery;
pub mod dispatcher;
pub mod provider;

pub use address::{AddressPolicy, Refused, ResolveError};
pub use crypto::{ConfigCipher, CryptoError};
pub use delivery::{Deliverer, DeliveryError};
pub use provider::{ConfigProblem, Provider};

/// Why the channel service could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelSetupError {
    /// The configuration carries no encryption key (the server fills in the
    /// generated one; an embedder building a context by hand must set it).
    #[error("no channel encryption key: set WRENN_ENCRYPTION_KEY")]
    NoKey,
    /// The HTTP client could not be built.
    #[error("channel delivery client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What the channels API and dispatcher share: the config cipher, the delivery
/// client and the delivery settings.
#[derive(Debug, Clone)]
pub struct ChannelService {
    /// Encrypts and decrypts config values.
    pub cipher: ConfigCipher,
    /// Sends notifications.
    pub deliverer: Deliverer,
    /// Delivery settings.
    pub config: ChannelsConfig,
}

impl ChannelService {
    /// The service for a server's configuration (its `encryption_key` must be set).
    pub fn from_config(config: &Config) -> Result<Self, ChannelSetupError> {
        let key = config.encryption_key.ok_or(ChannelSetupError::NoKey)?;
        Self::new(&key, &config.channels)
    }

    /// The service for `key` and `config`.
    pub fn new(key: &[u8; 32], config: &ChannelsConfig) -> Result<Self, ChannelSetupError> {
        let policy = Arc::new(AddressPolicy::from_config(config));
        Ok(Self {
            cipher: ConfigCipher::new(key),
            deliverer: Deliverer::new(policy, config.delivery_timeout)?,
            config: config.clone(),
        })
    }
}

/// A new webhook secret: 32 random bytes, hex.
pub fn generate_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The id of delivering the stream entry `entry` (carrying `event`) to `channel`:
/// derived from all three, so every attempt — and a redelivery of the same entry after
/// a dispatcher restart — carries the same `X-Wrenn-Delivery`, while distinct events
/// never share one (the event's own timestamp and resource are part of it, so even an
/// in-process stream that restarted its ids does not collide).
pub fn delivery_id(entry: &EventId, channel: ChannelId, event: &PlatformEvent) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"wrenn-channel-delivery\0");
    h.update(entry.0.as_bytes());
    h.update(b"\0");
    h.update(channel.uuid().as_bytes());
    h.update(serde_json::to_vec(event).unwrap_or_default());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wrenn_core::audit::Actor;
    use wrenn_core::events::PlatformEventKind;
    use wrenn_core::id::{SandboxId, TeamId};

    #[test]
    fn delivery_ids_are_stable_per_entry_and_channel() {
        let ev = PlatformEvent::capsule(
            PlatformEventKind::CapsulePaused,
            TeamId::new(),
            Actor::system(),
            SandboxId::new(),
        );
        let (a, b) = (ChannelId::new(), ChannelId::new());
        let entry = EventId("1-0".into());
        assert_eq!(delivery_id(&entry, a, &ev), delivery_id(&entry, a, &ev));
        assert_ne!(delivery_id(&entry, a, &ev), delivery_id(&entry, b, &ev));
        assert_ne!(
            delivery_id(&entry, a, &ev),
            delivery_id(&EventId("2-0".into()), a, &ev)
        );
        let mut later = ev.clone();
        later.timestamp += chrono::Duration::seconds(1);
        assert_ne!(delivery_id(&entry, a, &ev), delivery_id(&entry, a, &later));
    }

    #[test]
    fn secrets_are_32_random_bytes_in_hex() {
        let s = generate_secret();
        assert_eq!(s.len(), 64);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(s, generate_secret());
    }
}
