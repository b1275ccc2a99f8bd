-- Channel deliveries that failed every attempt: the dispatcher's dead letters, shown by
-- `GET /v1/channels/{id}/dead-letters`. One row per (channel, delivery): a dispatcher
-- that redelivers an event after a crash does not record the same failure twice.
CREATE TABLE channel_dead_letters (
    id           UUID        PRIMARY KEY,
    channel_id   UUID        NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    team_id      UUID        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    -- The `X-Wrenn-Delivery` id every attempt carried.
    delivery_id  UUID        NOT NULL,
    event_type   TEXT        NOT NULL,
    -- The event as delivered (no channel config, so nothing secret).
    payload      JSONB       NOT NULL,
    attempts     INTEGER     NOT NULL,
    -- HTTP status of the last attempt, when it got an answer.
    last_status  INTEGER,
    error        TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    CONSTRAINT uq_channel_dead_letters_delivery UNIQUE (channel_id, delivery_id)
);

CREATE INDEX idx_channel_dead_letters_channel
    ON channel_dead_letters (channel_id, created_at DESC, id DESC);
