-- A team's API keys are listed newest first with the id as tie-breaker: one index
-- that yields them in that order, so the list needs neither a bitmap scan nor a sort.
CREATE INDEX idx_team_api_keys_team_order ON team_api_keys (team_id, created_at DESC, id DESC);
DROP INDEX idx_team_api_keys_team;
