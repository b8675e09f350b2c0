-- Credits scenario: accounts that agents deduct from, and a ledger with one row per applied
-- deduction. Applied idempotently; the run's reset truncates and re-seeds (toolclash.tools.credits).
-- Deliberately no CHECK (balance >= 0): a negative balance must be caught by the checks,
-- not hidden by the schema.
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE TABLE IF NOT EXISTS toolclash.credit_accounts (
    id              integer PRIMARY KEY,
    balance         bigint  NOT NULL,
    initial_balance bigint  NOT NULL,
    version         bigint  NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS toolclash.credit_ledger (
    seq            bigserial PRIMARY KEY,
    op_id          text    NOT NULL UNIQUE,
    account_id     integer NOT NULL REFERENCES toolclash.credit_accounts (id),
    amount         bigint  NOT NULL,
    balance_before bigint  NOT NULL,
    balance_after  bigint  NOT NULL,
    agent          text    NOT NULL,
    committed_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
