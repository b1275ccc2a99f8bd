-- A capsule's opt-in access token for public capsule URLs: its SHA-256 (hex), empty
-- when the capsule has none. Whoever presents the token reaches the capsule's ports
-- through the proxy without a team credential.
ALTER TABLE sandboxes ADD COLUMN access_token_hash TEXT NOT NULL DEFAULT '';
