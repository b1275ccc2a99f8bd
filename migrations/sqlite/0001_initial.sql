-- Wrenn: initial schema for SQLite.
--
-- One consolidated migration; `migrations/postgres/0001_initial.sql` is its twin and the
-- two must stay equivalent (same tables, columns, keys, deletion rules and seeds).
--
-- Type mapping (tables are STRICT, so SQLite enforces these storage classes):
-- - UUID         -> BLOB (16 bytes, exactly how sqlx encodes `uuid::Uuid`);
-- - TIMESTAMPTZ  -> TEXT in ONE format, `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, always six
--                   fractional digits), written only by the application, so string
--                   comparison is chronological. There are no CURRENT_TIMESTAMP defaults;
-- - DATE         -> TEXT `YYYY-MM-DD`;
-- - BOOLEAN      -> INTEGER 0/1;
-- - JSONB        -> TEXT holding JSON; list-valued columns (channels.event_types,
--                   template_builds.recipe/logs) are JSON arrays on both backends;
-- - DOUBLE       -> REAL; BIGSERIAL -> INTEGER PRIMARY KEY AUTOINCREMENT.
-- Foreign keys need `PRAGMA foreign_keys = ON`, which the store sets on every connection.
-- The all-zero UUID (X'000…') is the platform team and the built-in template.

-- ---------------------------------------------------------------------------
-- Teams and users
-- ---------------------------------------------------------------------------

CREATE TABLE teams (
    id          BLOB    PRIMARY KEY,
    name        TEXT    NOT NULL,
    -- Immutable (trigger below) and unique forever: a soft-deleted team keeps its row,
    -- so its slug stays reserved.
    slug        TEXT    NOT NULL CONSTRAINT uq_teams_slug UNIQUE,
    is_byoc     INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT    NOT NULL,
    deleted_at  TEXT
) STRICT;

CREATE TRIGGER trg_team_slug_immutable
BEFORE UPDATE OF slug ON teams
WHEN NEW.slug IS NOT OLD.slug
BEGIN
    SELECT RAISE(ABORT, 'team slug is immutable');
END;

CREATE TABLE users (
    id             BLOB    PRIMARY KEY,
    email          TEXT    NOT NULL,
    -- NULL for OAuth-only users.
    password_hash  TEXT,
    name           TEXT    NOT NULL DEFAULT '',
    is_admin       INTEGER NOT NULL DEFAULT 0,
    -- active | inactive | disabled | deleted
    status         TEXT    NOT NULL DEFAULT 'active',
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL,
    deleted_at     TEXT
) STRICT;

-- Emails are unique case-insensitively (lookups use LOWER(email) too).
CREATE UNIQUE INDEX uq_users_email ON users (LOWER(email));
CREATE INDEX idx_users_deleted_at ON users (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE users_teams (
    user_id     BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id     BLOB    NOT NULL REFERENCES teams (id),
    -- owner | admin | member
    role        TEXT    NOT NULL DEFAULT 'member',
    is_default  INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT    NOT NULL,
    PRIMARY KEY (team_id, user_id)
) STRICT;

CREATE INDEX idx_users_teams_user ON users_teams (user_id);
-- Exactly one owner per team, at most one default team per user.
CREATE UNIQUE INDEX uq_users_teams_owner ON users_teams (team_id) WHERE role = 'owner';
CREATE UNIQUE INDEX uq_users_teams_default ON users_teams (user_id) WHERE is_default;

CREATE TABLE team_api_keys (
    id          BLOB PRIMARY KEY,
    team_id     BLOB NOT NULL REFERENCES teams (id),
    name        TEXT NOT NULL,
    -- SHA-256 hex of the plaintext key (never stored).
    key_hash    TEXT NOT NULL CONSTRAINT uq_team_api_keys_hash UNIQUE,
    key_prefix  TEXT NOT NULL,
    created_by  BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    last_used   TEXT
) STRICT;

CREATE INDEX idx_team_api_keys_team ON team_api_keys (team_id, created_at DESC);
CREATE INDEX idx_team_api_keys_created_by ON team_api_keys (created_by);

CREATE TABLE oauth_providers (
    provider     TEXT NOT NULL,
    provider_id  TEXT NOT NULL,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email        TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL,
    PRIMARY KEY (provider, provider_id)
) STRICT;

CREATE INDEX idx_oauth_providers_user ON oauth_providers (user_id);

CREATE TABLE admin_permissions (
    id          BLOB PRIMARY KEY,
    user_id     BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    permission  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    CONSTRAINT uq_admin_permissions UNIQUE (user_id, permission)
) STRICT;

-- ---------------------------------------------------------------------------
-- Hosts
-- ---------------------------------------------------------------------------

CREATE TABLE hosts (
    id                 BLOB    PRIMARY KEY,
    -- regular | byoc
    type               TEXT    NOT NULL DEFAULT 'regular',
    team_id            BLOB    REFERENCES teams (id),
    provider           TEXT    NOT NULL DEFAULT '',
    availability_zone  TEXT    NOT NULL DEFAULT '',
    arch               TEXT    NOT NULL DEFAULT '',
    cpu_cores          INTEGER NOT NULL DEFAULT 0,
    memory_mb          INTEGER NOT NULL DEFAULT 0,
    disk_gb            INTEGER NOT NULL DEFAULT 0,
    address            TEXT    NOT NULL DEFAULT '',
    -- pending | online | unreachable | offline | draining
    status             TEXT    NOT NULL DEFAULT 'pending',
    last_heartbeat_at  TEXT,
    metadata           TEXT    NOT NULL DEFAULT '{}',
    created_by         BLOB    REFERENCES users (id) ON DELETE SET NULL,
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    cert_fingerprint   TEXT    NOT NULL DEFAULT '',
    cert_expires_at    TEXT
) STRICT;

CREATE INDEX idx_hosts_type ON hosts (type);
CREATE INDEX idx_hosts_team ON hosts (team_id);
CREATE INDEX idx_hosts_status ON hosts (status);
CREATE INDEX idx_hosts_created_by ON hosts (created_by);

CREATE TABLE host_tokens (
    id          BLOB PRIMARY KEY,
    host_id     BLOB NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    -- SHA-256 hex of the one-time registration token (the token itself is never stored).
    token_hash  TEXT NOT NULL CONSTRAINT uq_host_tokens_hash UNIQUE,
    created_by  BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT
) STRICT;

CREATE INDEX idx_host_tokens_host ON host_tokens (host_id);
CREATE INDEX idx_host_tokens_created_by ON host_tokens (created_by);

CREATE TABLE host_tags (
    host_id  BLOB NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    tag      TEXT NOT NULL,
    PRIMARY KEY (host_id, tag)
) STRICT;

CREATE INDEX idx_host_tags_tag ON host_tags (tag);

CREATE TABLE host_refresh_tokens (
    id          BLOB PRIMARY KEY,
    host_id     BLOB NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL CONSTRAINT uq_host_refresh_tokens_hash UNIQUE,
    expires_at  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
) STRICT;

CREATE INDEX idx_host_refresh_tokens_host ON host_refresh_tokens (host_id);

-- ---------------------------------------------------------------------------
-- Templates and sandboxes
-- ---------------------------------------------------------------------------

CREATE TABLE templates (
    id            BLOB    PRIMARY KEY,
    -- The platform team (all-zero UUID) owns platform templates, visible to every team.
    team_id       BLOB    NOT NULL REFERENCES teams (id),
    name          TEXT    NOT NULL,
    -- base | snapshot
    type          TEXT    NOT NULL DEFAULT 'base',
    vcpus         INTEGER NOT NULL DEFAULT 1,
    memory_mb     INTEGER NOT NULL DEFAULT 512,
    size_bytes    INTEGER NOT NULL DEFAULT 0,
    default_user  TEXT    NOT NULL DEFAULT 'root',
    default_env   TEXT    NOT NULL DEFAULT '{}',
    metadata      TEXT    NOT NULL DEFAULT '{}',
    -- Protected templates cannot be deleted or overwritten by teams.
    protected     INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT    NOT NULL,
    CONSTRAINT uq_templates_team_name UNIQUE (team_id, name)
) STRICT;

CREATE INDEX idx_templates_team ON templates (team_id);

-- A platform template's name is reserved for every team (the store maps the trigger's
-- constraint error to a conflict, like Postgres' unique_violation).
CREATE TRIGGER trg_check_platform_template_name_insert
BEFORE INSERT ON templates
WHEN NEW.team_id <> X'00000000000000000000000000000000' AND EXISTS (
    SELECT 1 FROM templates
    WHERE team_id = X'00000000000000000000000000000000' AND name = NEW.name
)
BEGIN
    SELECT RAISE(ABORT, 'template name is reserved by a platform template');
END;

CREATE TRIGGER trg_check_platform_template_name_update
BEFORE UPDATE OF name, team_id ON templates
WHEN NEW.team_id <> X'00000000000000000000000000000000' AND EXISTS (
    SELECT 1 FROM templates
    WHERE team_id = X'00000000000000000000000000000000' AND name = NEW.name
)
BEGIN
    SELECT RAISE(ABORT, 'template name is reserved by a platform template');
END;

CREATE TABLE sandboxes (
    id                BLOB    PRIMARY KEY,
    team_id           BLOB    NOT NULL REFERENCES teams (id),
    -- No foreign key: rows outlive their host (a deleted host leaves stopped rows).
    host_id           BLOB    NOT NULL,
    -- Template name at creation, for display.
    template          TEXT    NOT NULL DEFAULT 'minimal',
    template_id       BLOB    NOT NULL DEFAULT X'00000000000000000000000000000000',
    template_team_id  BLOB    NOT NULL DEFAULT X'00000000000000000000000000000000',
    -- pending starting running pausing paused snapshotting resuming stopping hibernated
    -- stopped missing error
    status            TEXT    NOT NULL DEFAULT 'pending',
    vcpus             INTEGER NOT NULL DEFAULT 1,
    memory_mb         INTEGER NOT NULL DEFAULT 512,
    timeout_sec       INTEGER NOT NULL DEFAULT 300,
    disk_size_mb      INTEGER NOT NULL DEFAULT 20480,
    guest_ip          TEXT    NOT NULL DEFAULT '',
    host_ip           TEXT    NOT NULL DEFAULT '',
    created_at        TEXT    NOT NULL,
    started_at        TEXT,
    last_active_at    TEXT,
    last_updated      TEXT    NOT NULL,
    metadata          TEXT    NOT NULL DEFAULT '{}'
) STRICT;

CREATE INDEX idx_sandboxes_status ON sandboxes (status, last_updated);
CREATE INDEX idx_sandboxes_host_status ON sandboxes (host_id, status);
CREATE INDEX idx_sandboxes_team ON sandboxes (team_id, created_at DESC);

-- ---------------------------------------------------------------------------
-- Audit, metrics, usage
-- ---------------------------------------------------------------------------

CREATE TABLE audit_logs (
    id             BLOB PRIMARY KEY,
    -- No foreign key: the trail outlives everything it mentions.
    team_id        BLOB NOT NULL,
    -- user | api_key | system
    actor_type     TEXT NOT NULL,
    -- Prefixed wire id (usr-…, key-…); NULL for the system or an anonymised user.
    actor_id       TEXT,
    actor_name     TEXT NOT NULL DEFAULT '',
    resource_type  TEXT NOT NULL,
    -- Prefixed wire id or name of the resource.
    resource_id    TEXT,
    action         TEXT NOT NULL,
    -- team | admin
    scope          TEXT NOT NULL DEFAULT 'team',
    -- success | info | warning | error
    status         TEXT NOT NULL DEFAULT 'success',
    metadata       TEXT NOT NULL DEFAULT '{}',
    created_at     TEXT NOT NULL
) STRICT;

CREATE INDEX idx_audit_logs_team_time ON audit_logs (team_id, created_at DESC, id DESC);
CREATE INDEX idx_audit_logs_team_resource ON audit_logs (team_id, resource_type, created_at DESC);
CREATE INDEX idx_audit_logs_actor ON audit_logs (actor_id) WHERE actor_id IS NOT NULL;
CREATE INDEX idx_audit_logs_resource ON audit_logs (resource_id) WHERE resource_type = 'member';

CREATE TABLE sandbox_metrics_snapshots (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id             BLOB    NOT NULL,
    sampled_at          TEXT    NOT NULL,
    running_count       INTEGER NOT NULL DEFAULT 0,
    vcpus_reserved      INTEGER NOT NULL DEFAULT 0,
    memory_mb_reserved  INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX idx_metrics_snapshots_team_time ON sandbox_metrics_snapshots (team_id, sampled_at DESC);
CREATE INDEX idx_metrics_snapshots_time ON sandbox_metrics_snapshots (sampled_at);

CREATE TABLE sandbox_metric_points (
    sandbox_id  BLOB    NOT NULL,
    tier        TEXT    NOT NULL CHECK (tier IN ('10m', '2h', '24h')),
    -- Unix seconds.
    ts          INTEGER NOT NULL,
    cpu_pct     REAL    NOT NULL DEFAULT 0,
    mem_bytes   INTEGER NOT NULL DEFAULT 0,
    disk_bytes  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sandbox_id, tier, ts)
) STRICT;

-- Usage in vCPU-minutes and MiB-minutes.
CREATE TABLE daily_usage (
    team_id         BLOB NOT NULL,
    day             TEXT NOT NULL,
    cpu_minutes     REAL NOT NULL DEFAULT 0,
    ram_mb_minutes  REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, day)
) STRICT;

-- ---------------------------------------------------------------------------
-- Channels and template builds
-- ---------------------------------------------------------------------------

CREATE TABLE channels (
    id           BLOB PRIMARY KEY,
    team_id      BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    provider     TEXT NOT NULL,
    -- Provider config; every value is encrypted by the application.
    config       TEXT NOT NULL DEFAULT '{}',
    -- JSON array of event type strings (portable across backends, unlike TEXT[]).
    event_types  TEXT NOT NULL DEFAULT '[]',
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    CONSTRAINT uq_channels_team_name UNIQUE (team_id, name)
) STRICT;

CREATE TABLE template_builds (
    id             BLOB    PRIMARY KEY,
    -- Team the resulting template belongs to (the platform team for admin builds).
    team_id        BLOB    NOT NULL REFERENCES teams (id),
    name           TEXT    NOT NULL,
    base_template  TEXT    NOT NULL,
    -- JSON array of build steps.
    recipe         TEXT    NOT NULL DEFAULT '[]',
    healthcheck    TEXT    NOT NULL DEFAULT '',
    vcpus          INTEGER NOT NULL DEFAULT 1,
    memory_mb      INTEGER NOT NULL DEFAULT 512,
    -- pending | running | success | failed | cancelled
    status         TEXT    NOT NULL DEFAULT 'pending',
    current_step   INTEGER NOT NULL DEFAULT 0,
    total_steps    INTEGER NOT NULL DEFAULT 0,
    -- JSON array of log lines.
    logs           TEXT    NOT NULL DEFAULT '[]',
    error          TEXT    NOT NULL DEFAULT '',
    sandbox_id     BLOB,
    host_id        BLOB,
    template_id    BLOB,
    skip_pre_post  INTEGER NOT NULL DEFAULT 0,
    default_user   TEXT    NOT NULL DEFAULT 'root',
    default_env    TEXT    NOT NULL DEFAULT '{}',
    metadata       TEXT    NOT NULL DEFAULT '{}',
    created_at     TEXT    NOT NULL,
    started_at     TEXT,
    completed_at   TEXT
) STRICT;

CREATE INDEX idx_template_builds_created ON template_builds (created_at DESC, id DESC);

-- ---------------------------------------------------------------------------
-- Seed rows
-- ---------------------------------------------------------------------------

INSERT INTO teams (id, name, slug, is_byoc, created_at)
VALUES (X'00000000000000000000000000000000', 'Platform', 'platform', 0,
        '2026-01-01T00:00:00.000000Z');

INSERT INTO templates (id, team_id, name, type, vcpus, memory_mb, size_bytes,
                       default_user, default_env, metadata, protected, created_at)
VALUES (X'00000000000000000000000000000000', X'00000000000000000000000000000000',
        'minimal', 'base', 1, 512, 0, 'root', '{}', '{}', 1,
        '2026-01-01T00:00:00.000000Z');
