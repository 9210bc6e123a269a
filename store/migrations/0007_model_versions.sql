-- Each registered model version: its artifact and where it came from (an upload by a key, or an import).
CREATE TABLE model_versions (
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
