-- Each team snapshot records the seconds of usage it stands for (the sampler's
-- interval), so daily usage does not depend on a fixed cadence; and one snapshot per
-- team and instant, so control-plane replicas sampling the same tick write it once.
ALTER TABLE sandbox_metrics_snapshots ADD COLUMN period_secs INTEGER NOT NULL DEFAULT 10;

DELETE FROM sandbox_metrics_snapshots a
    USING sandbox_metrics_snapshots b
    WHERE a.team_id = b.team_id AND a.sampled_at = b.sampled_at AND a.id > b.id;

DROP INDEX idx_metrics_snapshots_team_time;
CREATE UNIQUE INDEX idx_metrics_snapshots_team_time
    ON sandbox_metrics_snapshots (team_id, sampled_at DESC);

CREATE INDEX idx_metric_points_ts ON sandbox_metric_points (ts);
