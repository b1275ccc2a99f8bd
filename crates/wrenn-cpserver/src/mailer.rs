//! SMTP delivery of [`Email`]s (lettre over tokio with rustls).

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use wrenn_core::config::SmtpConfig;
use wrenn_extension::{Email, MailError, Mailer};

use crate::error::ServerError;

/// Sends email through an SMTP server: implicit TLS on port 465, plain SMTP to a
/// loopback relay (local development catchers), STARTTLS otherwise.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// A mailer for `config`.
    pub fn new(config: &SmtpConfig) -> Result<Self, ServerError> {
        let bad = |e: String| ServerError::Other(format!("SMTP configuration: {e}"));
        let loopback = matches!(config.host.as_str(), "localhost" | "127.0.0.1" | "::1");
        let mut builder = if loopback {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        } else if config.port == 465 {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .map_err(|e| bad(e.to_string()))?
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                .map_err(|e| bad(e.to_string()))?
        }
        .port(config.port);
        if let (Some(user), Some(pass)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                pass.expose_secret().to_owned(),
            ));
        }
        let from = config
            .from_email
            .parse::<Mailbox>()
            .map_err(|e| bad(format!("SMTP_FROM_EMAIL: {e}")))?;
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }
}

#[async_trait::async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, email: Email) -> Result<(), MailError> {
        let to = email
            .to
            .parse::<Mailbox>()
            .map_err(|e| MailError(format!("bad recipient: {e}")))?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject)
            .body(email.body)
            .map_err(|e| MailError(e.to_string()))?;
        self.transport
            .send(msg)
            .await
            .map_err(|e| MailError(e.to_string()))?;
        Ok(())
    }
}
