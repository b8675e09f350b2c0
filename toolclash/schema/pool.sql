-- Pool scenario: a fact table that agents' analytical queries aggregate over. UNLOGGED: it is
-- scratch data re-seeded by every run's reset (toolclash.tools.pool), so WAL would only slow the seed.
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE UNLOGGED TABLE IF NOT EXISTS toolclash.pool_facts (
    id     bigint           NOT NULL,
    tenant integer          NOT NULL,
    amount double precision NOT NULL
);

-- one row: how the facts were seeded (the checks compare every aggregate's count against it)
CREATE TABLE IF NOT EXISTS toolclash.pool_seed (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    rows      bigint  NOT NULL,
    seeded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- windows are ranges of ids: an index keeps a small window small (sequential ids append cheaply)
CREATE INDEX IF NOT EXISTS pool_facts_id ON toolclash.pool_facts (id);
