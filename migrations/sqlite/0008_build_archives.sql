-- The archive uploaded with a template build (`COPY` steps take files from it). Kept
-- in the database so that whichever control plane runs the build can read it; removed
-- when the build finishes.
CREATE TABLE build_archives (
    build_id   BLOB    PRIMARY KEY REFERENCES template_builds (id) ON DELETE CASCADE,
    data       BLOB    NOT NULL,
    size_bytes INTEGER NOT NULL
);
