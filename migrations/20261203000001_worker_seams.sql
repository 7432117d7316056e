-- Sluice schema, version 2: the worker's seams (issue 9).
--
-- 1. Lease tokens that cannot repeat across a crash or a failover.
-- 2. Inserts wake workers for due AND scheduled rows of the same statement.
-- 3. Cancelling a processing job tells its worker at once.

-- 1. Fencing tokens.
--
-- Version 1 drew tokens from `jobs_lease_token_seq` (CACHE 64) while leases commit with
-- `synchronous_commit = off`. A crash loses the sequence's recent advances, and a standby
-- promoted after a failover may be behind the old primary: either way values already
-- handed out can be handed out again, so a stale worker's late answer could match a new
-- lease of the same row.
--
-- A token is now 64 bits from `gen_random_uuid()` (built in since Postgres 13, drawn from
-- the server's strong random source): bytes 1-6 and 11-12 of a version-4 UUID, which are
-- all random (the version and variant bits live in bytes 7 and 9). No state that a crash
-- or failover can roll back takes part, so nothing repeats "in order". Fencing compares
-- a row's current token with the one the answering worker holds, for that row only, so a
-- stale answer can apply only if one re-lease of that very row drew the same 64 bits:
-- probability 2^-64 per re-lease. Tokens are only compared for equality, never ordered.
--
-- The sequence stays: a worker of version 1 still running during a rolling deployment
-- keeps leasing with it (its small values and random ones collide with the same 2^-64).
CREATE FUNCTION sluice_new_lease_token() RETURNS bigint LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT ('x' || encode(substring(u FROM 1 FOR 6) || substring(u FROM 11 FOR 2), 'hex'))::bit(64)::bigint
      FROM (SELECT uuid_send(gen_random_uuid()) AS u) s
$$;

-- 2. Insert wakeups.
--
-- Version 1 sent one notification per kind per statement: the plain kind if any row was
-- due, else `kind@<ms>` of the first row. A batch holding a due job and a job for two
-- seconds later woke workers for the first only; the second waited for the fallback poll.
-- Now a kind with due rows gets its plain notification AND, if the statement also holds
-- future rows, `kind@<epoch ms>` of the earliest of them. Workers treat `@` as "something
-- is scheduled" and ask the database how long to wait (its clock, not theirs).
CREATE OR REPLACE FUNCTION sluice_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sluice_jobs', n.payload)
       FROM (SELECT kind,
                    bool_or(run_at <= now()) AS due,
                    min(run_at) FILTER (WHERE run_at > now()) AS next_at
               FROM new_jobs WHERE state = 'queued' GROUP BY kind) w,
            LATERAL (VALUES (CASE WHEN w.due THEN w.kind END),
                            (w.kind || '@' || floor(extract(epoch FROM w.next_at) * 1000)::bigint)) n(payload)
      WHERE n.payload IS NOT NULL;
    RETURN NULL;
END
$$;

-- 3. Cancellation signal.
--
-- A processing job that becomes `cancelled` (the API, the UI, the CLI, a bulk action or
-- an operator's UPDATE) sends `<id>:<lease token it had>` on `sluice_cancel`. The worker
-- holding that lease stops the handler (an HTTP delivery is aborted) and frees its slot;
-- the token in the payload keeps a late notification from stopping a newer lease of the
-- same job. Row-level with a WHEN clause: the hot path (lease, complete) never calls it.
CREATE FUNCTION sluice_notify_cancelled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sluice_cancel', NEW.id || ':' || coalesce(OLD.lease_token::text, ''));
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_cancelled AFTER UPDATE ON jobs
    FOR EACH ROW WHEN (OLD.state = 'processing' AND NEW.state = 'cancelled')
    EXECUTE FUNCTION sluice_notify_cancelled();
