-- The example platform's own tables, in its own schema "platform" (toolclash never writes here: only the
-- platform does, and a target file's reset and read-only final-state queries). Applied at start, idempotently.
CREATE SCHEMA IF NOT EXISTS platform;

CREATE TABLE IF NOT EXISTS platform.accounts (
    id              integer PRIMARY KEY,
    balance         bigint  NOT NULL,
    initial_balance bigint  NOT NULL
);

-- One row per applied deduction. The correct variant looks a request's idempotency key up here before
-- applying it; the racy one does not (a retried request is applied twice). No UNIQUE on the key on purpose:
-- the racy variant must be able to apply a retry twice.
CREATE TABLE IF NOT EXISTS platform.ledger (
    id              bigserial PRIMARY KEY,
    idempotency_key text    NOT NULL,
    account_id      integer NOT NULL,
    amount          bigint  NOT NULL,
    balance_before  bigint  NOT NULL,
    balance_after   bigint  NOT NULL,
    agent           text    NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS ledger_key ON platform.ledger (idempotency_key);

-- Agent configurations: one JSON document per record and a version, and a log of every applied write.
CREATE TABLE IF NOT EXISTS platform.configs (
    id      integer PRIMARY KEY,
    doc     jsonb   NOT NULL,
    version bigint  NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS platform.config_log (
    id              bigserial PRIMARY KEY,
    idempotency_key text    NOT NULL,
    config_id       integer NOT NULL,
    field           text    NOT NULL,
    value           text    NOT NULL,
    version_read    bigint,
    version_after   bigint  NOT NULL,
    doc_after       jsonb   NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS config_log_key ON platform.config_log (idempotency_key);
