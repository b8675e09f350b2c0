-- Workspace scenario: an event store (the write side), read models kept by projectors (the read side),
-- the projectors' checkpoints and their applied log. Applied idempotently; the run's reset truncates
-- and re-seeds (toolclash.tools.workspace). One stream per workspace.

CREATE SCHEMA IF NOT EXISTS toolclash;

-- Stream heads: the expected-version compare-and-set is made on this row.
CREATE TABLE IF NOT EXISTS toolclash.ws_streams (
    stream_id integer PRIMARY KEY,
    version   integer NOT NULL DEFAULT 0          -- seq of the stream's last event (0: empty)
);

-- The event store, append-only. (stream_id, seq) is unique: two appends can never both be seq n.
CREATE TABLE IF NOT EXISTS toolclash.ws_events (
    position        bigserial PRIMARY KEY,        -- insertion order across streams (not commit order)
    stream_id       integer NOT NULL REFERENCES toolclash.ws_streams (stream_id),
    seq             integer NOT NULL,             -- 1, 2, 3 … per stream
    type            text    NOT NULL,             -- FileUploaded | ConfigSet | PermissionGranted | PermissionRevoked
    payload         jsonb   NOT NULL,
    agent           text    NOT NULL,             -- who
    op_id           text,                         -- which tool call (the history's op id)
    causation_id    text,                         -- what caused it: the op id of the command
    correlation_id  text,                         -- the agent's task (several calls share one)
    decided_version integer NOT NULL,             -- the stream version the command was decided on
    committed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),  -- when (last statement before COMMIT)
    UNIQUE (stream_id, seq)
);
CREATE INDEX IF NOT EXISTS ws_events_op ON toolclash.ws_events (op_id);
-- The write side decides a grant or revoke on the permission's latest event at or before the head.
CREATE INDEX IF NOT EXISTS ws_events_permission ON toolclash.ws_events
    (stream_id, (payload->>'principal'), (payload->>'perm'), seq)
    WHERE type IN ('PermissionGranted', 'PermissionRevoked');

-- Projector checkpoints: the seq of the last event applied to the read models, per stream.
-- A projector locks the row FOR UPDATE (SKIP LOCKED) and moves it in the transaction that
-- updates the read models, so an event is applied exactly once whatever instance runs or dies.
CREATE TABLE IF NOT EXISTS toolclash.ws_checkpoints (
    stream_id  integer PRIMARY KEY REFERENCES toolclash.ws_streams (stream_id),
    position   integer NOT NULL DEFAULT 0,
    projector  text,
    updated_at timestamptz
);

-- Read models. The counters (uploads, changes) are deliberately not idempotent:
-- an event applied twice shows up as a count that differs from a fold of the stream.
CREATE TABLE IF NOT EXISTS toolclash.ws_proj_files (
    stream_id   integer NOT NULL,
    path        text    NOT NULL,
    size        bigint  NOT NULL,
    sha256      text    NOT NULL,
    uploaded_by text    NOT NULL,
    seq         integer NOT NULL,
    uploads     integer NOT NULL,
    PRIMARY KEY (stream_id, path)
);

CREATE TABLE IF NOT EXISTS toolclash.ws_proj_config (
    stream_id integer NOT NULL,
    key       text    NOT NULL,
    value     jsonb   NOT NULL,
    seq       integer NOT NULL,
    changes   integer NOT NULL,
    PRIMARY KEY (stream_id, key)
);

CREATE TABLE IF NOT EXISTS toolclash.ws_proj_permissions (
    stream_id integer NOT NULL,
    principal text    NOT NULL,
    perm      text    NOT NULL,
    granted   boolean NOT NULL,
    seq       integer NOT NULL,
    changes   integer NOT NULL,
    PRIMARY KEY (stream_id, principal, perm)
);

-- One row per application of an event to the read models (no key on purpose: a second
-- application of the same event is a second row, which the exactly-once check counts).
CREATE TABLE IF NOT EXISTS toolclash.ws_applied (
    stream_id  integer     NOT NULL,
    seq        integer     NOT NULL,
    projector  text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
