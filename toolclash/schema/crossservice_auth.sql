-- Cross-service scenario, auth database (a second PostgreSQL cluster): tool permissions.
-- One row per operation. A grant inserts (granted = true); a saga's compensation upserts a
-- tombstone (revoked_at set), so a grant arriving after its revocation changes nothing.
-- A permission is in force when granted AND revoked_at IS NULL.
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE TABLE IF NOT EXISTS toolclash.xs_grants (
    op_id      text    PRIMARY KEY,
    agent      text    NOT NULL,
    tool       text    NOT NULL,
    granted    boolean NOT NULL,
    granted_at timestamptz,
    revoked_at timestamptz
);
