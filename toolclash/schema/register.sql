-- Register scenario: a few keys that agents read and write in short transactions, and a write log with one
-- row per write, inserted by the same statement as the write (so it commits, or not, with it). Under the
-- key's row lock, log order is the key's version order. Applied idempotently; the run's reset truncates
-- and re-seeds (toolclash.tools.register).
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE TABLE IF NOT EXISTS toolclash.registers (
    k integer PRIMARY KEY,
    v text
);

CREATE TABLE IF NOT EXISTS toolclash.register_log (
    seq   bigserial PRIMARY KEY,
    k     integer NOT NULL,
    v     text    NOT NULL,
    op_id text    NOT NULL
);
