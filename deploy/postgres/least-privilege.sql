-- Least-privilege roles for Glowline's services (docs/security.md).
--
-- Run once, after the migrations, as a role that may create roles and owns
-- the `glowline` schema (or as the database's administrator). Passwords are
-- not set here: set them from your secret store with
-- `ALTER ROLE glowline_scheduler PASSWORD '...'`, and give each process its
-- own through GLOWLINE_DATABASE_PASSWORD. Both services then run with
-- `[database] migrate = false`. worker/tests/least_privilege.rs runs the
-- scheduler and a worker under exactly these grants.

CREATE ROLE glowline_scheduler LOGIN;
CREATE ROLE glowline_worker LOGIN;
GRANT USAGE ON SCHEMA glowline TO glowline_scheduler, glowline_worker;

-- The scheduler records jobs and batches, appends events, relays the
-- outbox (which locks rows FOR UPDATE) and expires leases.
GRANT SELECT, INSERT, UPDATE ON glowline.jobs, glowline.batches, glowline.outbox
    TO glowline_scheduler;
GRANT SELECT, INSERT ON glowline.job_events TO glowline_scheduler;

-- A worker claims and updates jobs, appends their events and leaves their
-- terminal announcements in the outbox for the scheduler to publish.
GRANT SELECT, UPDATE ON glowline.jobs TO glowline_worker;
GRANT SELECT, INSERT ON glowline.job_events, glowline.outbox TO glowline_worker;

GRANT USAGE ON ALL SEQUENCES IN SCHEMA glowline
    TO glowline_scheduler, glowline_worker;
