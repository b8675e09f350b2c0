-- Cross-service scenario, main database: credit accounts, the debit ledger, refunds (saga
-- compensations), saga state, the 2PC coordinator's decision log and the analytics outbox.
-- Applied idempotently; the run's reset resolves in-doubt transactions, then truncates and re-seeds.
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE TABLE IF NOT EXISTS toolclash.xs_accounts (
    agent           text   PRIMARY KEY,
    balance         bigint NOT NULL,
    initial_balance bigint NOT NULL
);

-- one row per applied debit, written in the same local transaction as the balance change
CREATE TABLE IF NOT EXISTS toolclash.xs_debits (
    op_id      text   PRIMARY KEY,
    agent      text   NOT NULL REFERENCES toolclash.xs_accounts (agent),
    tool       text   NOT NULL,
    cost       bigint NOT NULL,
    mode       text   NOT NULL,
    debited_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- saga compensation of a debit: at most one per op id (the primary key makes the refund idempotent)
CREATE TABLE IF NOT EXISTS toolclash.xs_refunds (
    op_id       text   PRIMARY KEY,
    agent       text   NOT NULL,
    cost        bigint NOT NULL,
    refunded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- persisted saga state: debited -> done, or debited -> compensating -> compensated
-- ('failed' is only written by the planted fault skip_compensation)
CREATE TABLE IF NOT EXISTS toolclash.xs_sagas (
    op_id      text   PRIMARY KEY,
    agent      text   NOT NULL,
    tool       text   NOT NULL,
    cost       bigint NOT NULL,
    state      text   NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_by text   NOT NULL DEFAULT 'agent'
);

-- the 2PC coordinator's decision log: the first decision written for an op id wins
-- (the coordinator writes commit, recovery writes abort; the primary key arbitrates)
CREATE TABLE IF NOT EXISTS toolclash.xs_decisions (
    op_id      text PRIMARY KEY,
    decision   text NOT NULL CHECK (decision IN ('commit', 'abort')),
    decided_by text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- analytics outbox: written with the credit change, moved to ClickHouse by the relay
CREATE TABLE IF NOT EXISTS toolclash.xs_outbox (
    seq        bigserial PRIMARY KEY,
    event_id   text   NOT NULL UNIQUE,
    op_id      text   NOT NULL,
    kind       text   NOT NULL CHECK (kind IN ('usage', 'refund')),
    agent      text   NOT NULL,
    tool       text   NOT NULL,
    cost       bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    relayed_at timestamptz,
    deliveries integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS xs_outbox_pending ON toolclash.xs_outbox (seq) WHERE relayed_at IS NULL;

-- the benchmark's single-database baseline writes the grant here, in the same local transaction
CREATE TABLE IF NOT EXISTS toolclash.xs_local_grants (
    op_id text PRIMARY KEY,
    agent text NOT NULL,
    tool  text NOT NULL
);
