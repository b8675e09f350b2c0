-- Team budget scenario: teams with a spending limit shared by their members' wallets, and a ledger with one row
-- per applied spend (what the spender read of every wallet, and its own wallet before and after), written in the
-- same transaction as the wallet. Applied idempotently; the run's reset truncates and re-seeds
-- (toolclash.tools.budget). Deliberately no constraint on the team total: exceeding the limit must be caught by
-- the checks, not hidden by the schema.
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE TABLE IF NOT EXISTS toolclash.budget_teams (
    id          integer PRIMARY KEY,
    spend_limit bigint  NOT NULL,
    version     bigint  NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS toolclash.budget_wallets (
    team_id integer NOT NULL REFERENCES toolclash.budget_teams (id),
    member  integer NOT NULL,
    spent   bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, member)
);

CREATE TABLE IF NOT EXISTS toolclash.budget_spends (
    seq           bigserial PRIMARY KEY,
    op_id         text     NOT NULL UNIQUE,
    team_id       integer  NOT NULL,
    member        integer  NOT NULL,
    amount        bigint   NOT NULL,
    wallet_before bigint   NOT NULL,
    wallet_after  bigint   NOT NULL,
    seen          bigint[] NOT NULL,
    agent         text     NOT NULL
);
