-- A template may carry a start command: a capsule made from it runs the command in
-- the background (as the template's default user, with its environment, in
-- `start_cwd`) once it runs. Template builds set it with a `START` step.
ALTER TABLE templates ADD COLUMN start_command TEXT NOT NULL DEFAULT '';
ALTER TABLE templates ADD COLUMN start_cwd TEXT NOT NULL DEFAULT '';
