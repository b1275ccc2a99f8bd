//! [`ChannelRepo`] on both backends: notification channels and their dead letters.
//! `event_types` is a JSON array on both backends; the membership test is the one
//! dialect-specific fragment.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use wrenn_core::id::{ChannelId, TeamId};
use wrenn_core::model::{Channel, ChannelDeadLetter};
use wrenn_core::repo::{ChannelRepo, RepoResult};

use crate::backend::{Dialect, for_each_backend};
use crate::error::db;
use crate::rows::{ChannelDeadLetterRow, ChannelRow};
use crate::timestamp::Ts;

/// Most dead letters one listing returns.
pub(crate) const MAX_DEAD_LETTERS: u32 = 500;

macro_rules! impl_channel_repo {
    ($store:ty) => {
        #[async_trait]
        impl ChannelRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %channel.team_id, channel_id = %channel.id))]
            async fn create_channel(&self, channel: Channel) -> RepoResult<Channel> {
                let row: ChannelRow = sqlx::query_as(
                    "INSERT INTO channels (id, team_id, name, provider, config, event_types, \
                                           created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
                )
                .bind(channel.id.uuid())
                .bind(channel.team_id.uuid())
                .bind(&channel.name)
                .bind(&channel.provider)
                .bind(Json(&channel.config))
                .bind(Json(&channel.event_types))
                .bind(Ts::from(channel.created_at))
                .bind(Ts::from(channel.updated_at))
                .fetch_one(&self.pool)
                .await
                .map_err(db("channel"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, channel_id = %id))]
            async fn get_channel(&self, team: TeamId, id: ChannelId) -> RepoResult<Channel> {
                let row: ChannelRow =
                    sqlx::query_as("SELECT * FROM channels WHERE id = $1 AND team_id = $2")
                        .bind(id.uuid())
                        .bind(team.uuid())
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db("channel"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn list_channels(&self, team: TeamId) -> RepoResult<Vec<Channel>> {
                let rows: Vec<ChannelRow> =
                    sqlx::query_as("SELECT * FROM channels WHERE team_id = $1 ORDER BY name")
                        .bind(team.uuid())
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db("channel"))?;
                Ok(rows.into_iter().map(Channel::from).collect())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, event_type))]
            async fn list_channels_for_event(
                &self,
                team: TeamId,
                event_type: &str,
            ) -> RepoResult<Vec<Channel>> {
                let sql = format!(
                    "SELECT * FROM channels WHERE team_id = $1 AND {} ORDER BY name",
                    <$store as Dialect>::json_array_contains("event_types", "$2")
                );
                let rows: Vec<ChannelRow> = sqlx::query_as(&sql)
                    .bind(team.uuid())
                    .bind(event_type)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("channel"))?;
                Ok(rows.into_iter().map(Channel::from).collect())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, channel_id = %id))]
            async fn delete_channel(&self, team: TeamId, id: ChannelId) -> RepoResult<bool> {
                let done = sqlx::query("DELETE FROM channels WHERE id = $1 AND team_id = $2")
                    .bind(id.uuid())
                    .bind(team.uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(db("channel"))?;
                Ok(done.rows_affected() > 0)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, channel_id = %id))]
            async fn update_channel(
                &self,
                team: TeamId,
                id: ChannelId,
                name: &str,
                event_types: &[String],
                updated_at: DateTime<Utc>,
            ) -> RepoResult<Channel> {
                let row: ChannelRow = sqlx::query_as(
                    "UPDATE channels SET name = $3, event_types = $4, updated_at = $5 \
                     WHERE id = $1 AND team_id = $2 RETURNING *",
                )
                .bind(id.uuid())
                .bind(team.uuid())
                .bind(name)
                .bind(Json(event_types))
                .bind(Ts::from(updated_at))
                .fetch_one(&self.pool)
                .await
                .map_err(db("channel"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, channel_id = %id))]
            async fn update_channel_config(
                &self,
                team: TeamId,
                id: ChannelId,
                config: &BTreeMap<String, String>,
                updated_at: DateTime<Utc>,
            ) -> RepoResult<Channel> {
                let row: ChannelRow = sqlx::query_as(
                    "UPDATE channels SET config = $3, updated_at = $4 \
                     WHERE id = $1 AND team_id = $2 RETURNING *",
                )
                .bind(id.uuid())
                .bind(team.uuid())
                .bind(Json(config))
                .bind(Ts::from(updated_at))
                .fetch_one(&self.pool)
                .await
                .map_err(db("channel"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %dead.team_id, channel_id = %dead.channel_id, delivery_id = %dead.delivery_id))]
            async fn record_channel_dead_letter(&self, dead: ChannelDeadLetter) -> RepoResult<()> {
                let attempts = i32::try_from(dead.attempts).unwrap_or(i32::MAX);
                sqlx::query(
                    "INSERT INTO channel_dead_letters (id, channel_id, team_id, delivery_id, \
                         event_type, payload, attempts, last_status, error, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (channel_id, delivery_id) DO NOTHING",
                )
                .bind(dead.id)
                .bind(dead.channel_id.uuid())
                .bind(dead.team_id.uuid())
                .bind(dead.delivery_id)
                .bind(&dead.event_type)
                .bind(Json(&dead.payload))
                .bind(attempts)
                .bind(dead.last_status.map(i32::from))
                .bind(&dead.error)
                .bind(Ts::from(dead.created_at))
                .execute(&self.pool)
                .await
                .map_err(db("channel dead letter"))?;
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, channel_id = %channel))]
            async fn list_channel_dead_letters(
                &self,
                team: TeamId,
                channel: ChannelId,
                limit: u32,
            ) -> RepoResult<Vec<ChannelDeadLetter>> {
                let rows: Vec<ChannelDeadLetterRow> = sqlx::query_as(
                    "SELECT * FROM channel_dead_letters WHERE channel_id = $1 AND team_id = $2 \
                     ORDER BY created_at DESC, id DESC LIMIT $3",
                )
                .bind(channel.uuid())
                .bind(team.uuid())
                .bind(i64::from(limit.min(MAX_DEAD_LETTERS)))
                .fetch_all(&self.pool)
                .await
                .map_err(db("channel dead letter"))?;
                rows.into_iter().map(ChannelDeadLetter::try_from).collect()
            }
        }
    };
}

for_each_backend!(impl_channel_repo);
