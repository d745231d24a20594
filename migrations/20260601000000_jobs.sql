-- Glowline's job store: jobs, the batches that group them, an append-only
-- event log per job, and the outbox that the scheduler's relay publishes from.
-- Statuses and lanes match contract::queue; CHECKs keep anything else out.

CREATE TABLE batches (
    id          uuid PRIMARY KEY,
    label       text,
    job_count   integer NOT NULL CHECK (job_count >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    spec             jsonb NOT NULL,
    lane             text NOT NULL CHECK (lane IN ('interactive', 'long')),
    status           text NOT NULL DEFAULT 'queued' CHECK (status IN
                       ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    priority         smallint NOT NULL DEFAULT 0,
    -- attempt counts claims; a worker's writes are fenced on the attempt it claimed.
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    lease_owner      text,
    lease_expires_at timestamptz,
    deadline_secs    integer NOT NULL CHECK (deadline_secs > 0),
    cancel_requested boolean NOT NULL DEFAULT false,
    progress         real NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    error            text,
    output_keys      text[] NOT NULL DEFAULT '{}',
    model_hash       text,
    batch_id         uuid REFERENCES batches (id),
    idempotency_key  text UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
);

CREATE INDEX jobs_created_at ON jobs (created_at DESC);
CREATE INDEX jobs_status ON jobs (status, created_at DESC);
CREATE INDEX jobs_batch ON jobs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE status = 'running';

-- What happened to each job, in order; rows are never changed or removed.
CREATE TABLE job_events (
    id       bigserial PRIMARY KEY,
    job_id   uuid NOT NULL REFERENCES jobs (id),
    at       timestamptz NOT NULL DEFAULT now(),
    event    text NOT NULL,
    attempt  integer NOT NULL,
    detail   jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX job_events_job ON job_events (job_id, id);

CREATE FUNCTION job_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'job_events is append-only';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER job_events_no_change BEFORE UPDATE OR DELETE ON job_events
    FOR EACH ROW EXECUTE FUNCTION job_events_append_only();

-- Messages written in the same transaction as the state they announce; the
-- relay publishes them and sets sent_at once the broker confirmed.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    exchange     text NOT NULL,
    routing_key  text NOT NULL,
    payload      jsonb NOT NULL,
    priority     smallint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    -- after a failed publish, the row waits until then (exponential backoff).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text
);

CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
