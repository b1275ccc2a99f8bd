//! [`ChannelRepo`] on both backends: notification channels. `event_types` is a JSON
//! array on both backends; the membership test is the one dialect-specific fragment.

use async_trait::async_trait;
use sqlx::types::Json;
use wrenn_core::id::{ChannelId, TeamId};
use wrenn_core::model::Channel;
use wrenn_core::repo::{ChannelRepo, RepoResult};

use crate::backend::{Dialect, for_each_backend};
use crate::error::db;
use crate::rows::ChannelRow;
use crate::timestamp::Ts;

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
        }
    };
}

for_each_backend!(impl_channel_repo);
