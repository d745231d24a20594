-- When each job last entered its queue: at submission, and again whenever
-- it is queued for another attempt. The time from here to the claim is the
-- job's wait in the queue, which workers report as a metric.

ALTER TABLE jobs ADD COLUMN queued_at timestamptz;

-- A queued job's updated_at is when it was queued; for the rest only the
-- submission time is known.
UPDATE jobs SET queued_at = CASE WHEN status = 'queued' THEN updated_at ELSE created_at END;

ALTER TABLE jobs ALTER COLUMN queued_at SET NOT NULL;
ALTER TABLE jobs ALTER COLUMN queued_at SET DEFAULT now();
