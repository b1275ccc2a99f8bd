//! Outgoing email.

/// One plain-text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// Why an email could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("could not send email: {0}")]
pub struct MailError(pub String);

/// Sends email. The control plane uses SMTP when `SMTP_HOST` is configured; with no
/// mailer, flows that would email a link (activation) complete at once instead.
#[async_trait::async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Sends one message.
    async fn send(&self, email: Email) -> Result<(), MailError>;
}
