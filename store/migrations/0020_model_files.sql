-- An uploaded version's files (the ONNX model, its manifest, its feature spec), kept so that every replica
-- of a fleet can serve a version uploaded to one of them. Versions imported from --models-dir are not
-- kept here: every replica imports them from its own.
CREATE TABLE model_files (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    path TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (name, version, path)
);
