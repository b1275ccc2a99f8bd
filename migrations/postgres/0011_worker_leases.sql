-- Leases of singleton workers (host monitor, metrics sampler, usage roll-up, account
-- clean-up, template builds): the replica named by `holder` runs the worker `name`
-- until `expires_at`, renewing it as it goes. Both times come from the database's
-- clock, so the replicas' clocks do not matter.
CREATE TABLE worker_leases (
    name         TEXT        PRIMARY KEY,
    holder       TEXT        NOT NULL,
    -- When the current holder took the lease (kept when it renews).
    acquired_at  TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
