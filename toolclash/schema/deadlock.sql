-- Deadlock scenario: resources that agents lock in a cycle, one write row per resource update and
-- one round row per committed round (both keyed by the op id), and the run's baseline of the
-- server's deadlock counter. Applied idempotently; the run's reset truncates (toolclash.tools.deadlock).
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE TABLE IF NOT EXISTS toolclash.deadlock_resources (
    id      text   PRIMARY KEY,
    counter bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS toolclash.deadlock_writes (
    op_id    text NOT NULL,
    resource text NOT NULL,
    PRIMARY KEY (op_id, resource)
);

CREATE TABLE IF NOT EXISTS toolclash.deadlock_rounds (
    op_id        text PRIMARY KEY,
    agent        text NOT NULL,
    cycle        text NOT NULL,
    first_res    text NOT NULL,
    second_res   text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE IF NOT EXISTS toolclash.deadlock_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
