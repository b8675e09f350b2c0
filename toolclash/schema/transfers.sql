-- Transfers scenario: accounts that agents move credits between (the total never changes), with a version per
-- account bumped by every transfer, and a ledger with one row per applied transfer (the versions it installed),
-- written in the same transaction. Applied idempotently; the run's reset truncates and re-seeds
-- (toolclash.tools.transfers).
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE TABLE IF NOT EXISTS toolclash.transfer_accounts (
    id              integer PRIMARY KEY,
    balance         bigint  NOT NULL,
    initial_balance bigint  NOT NULL,
    version         bigint  NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS toolclash.transfer_ledger (
    seq          bigserial PRIMARY KEY,
    op_id        text    NOT NULL UNIQUE,
    from_id      integer NOT NULL,
    to_id        integer NOT NULL,
    amount       bigint  NOT NULL,
    from_version bigint  NOT NULL,
    to_version   bigint  NOT NULL,
    agent        text    NOT NULL
);
