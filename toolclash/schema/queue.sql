-- Queue scenario: the effect of each executed job, and what the run told Redis at reset.
-- Applied idempotently; the run's reset truncates (toolclash.tools.queue).
-- The effect table's UNIQUE effect_key is the exactly-once guard: a correct consumer keys the
-- effect by job id, so a redelivered job cannot apply twice. The planted non_idempotent_consumer
-- keys it by job id and delivery number, and duplicates must then be caught by the checks,
-- not hidden by the schema (hence no UNIQUE on job_id).
CREATE SCHEMA IF NOT EXISTS toolclash;

CREATE TABLE IF NOT EXISTS toolclash.queue_effects (
    seq         bigserial PRIMARY KEY,
    effect_key  text     NOT NULL UNIQUE,
    job_id      text     NOT NULL,
    delivery    integer  NOT NULL,
    priority    smallint NOT NULL,
    consumer    text     NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX IF NOT EXISTS queue_effects_job ON toolclash.queue_effects (job_id);

CREATE TABLE IF NOT EXISTS toolclash.queue_meta (
    id              integer PRIMARY KEY CHECK (id = 1),
    marker          text  NOT NULL,
    redis_run_id    text  NOT NULL,
    config          jsonb NOT NULL
);
