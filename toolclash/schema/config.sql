-- Config scenario: agent-configuration records (one JSONB document + a version column each) that
-- many agents update field by field, and a write log with one row per applied write (keyed by the
-- op id, inserted in the same transaction as the update). Applied idempotently; the run's reset
-- truncates and re-seeds (toolclash.tools.config).
--
-- Why one JSONB document and not one column per field: the scenario is about agents that read the
-- whole configuration, change their part and write it back, which is exactly what a document store
-- (or an ORM saving a whole object) does; a column per field would make the field-level update the
-- only natural way to write and hide the lost update the scenario exists to show. The field count
-- is an option, so the document's shape is data, not DDL.
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE TABLE IF NOT EXISTS toolclash.config_records (
    id       integer PRIMARY KEY,
    doc      jsonb   NOT NULL,             -- {"f01": "<value>", ...}: every field, seeded "init"
    version  bigint  NOT NULL DEFAULT 0,   -- + 1 per applied write, under the row lock
    field_ts jsonb   NOT NULL DEFAULT '{}'::jsonb,  -- timestamp_ordered: logical timestamp per field
    clock    bigint  NOT NULL DEFAULT 0    -- timestamp_ordered: the largest timestamp applied
);

-- Every strategy updates the record (taking its row lock, held to COMMIT) before inserting its log
-- row, and sets version = version + 1, so per record version_after is the commit order.
CREATE TABLE IF NOT EXISTS toolclash.config_writes (
    seq           bigserial PRIMARY KEY,
    op_id         text    NOT NULL UNIQUE,
    record_id     integer NOT NULL REFERENCES toolclash.config_records (id),
    agent         text    NOT NULL,
    field         text    NOT NULL,
    value         text    NOT NULL,
    version_read  bigint,                  -- the version the write was based on (NULL: no read)
    version_after bigint  NOT NULL,
    ts            bigint,                  -- timestamp_ordered: the write's logical timestamp
    doc_after     jsonb   NOT NULL,        -- the whole document as this write left it
    committed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (record_id, version_after)
);
