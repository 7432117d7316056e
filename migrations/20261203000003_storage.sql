-- Storage that never bloats (issue 11): indexes that keep the hot statements independent
-- of the number of finished jobs, indexes that make retention cheap, and counters that make
-- `GET /v1/stats`, `sluicectl status` and `/metrics` cheap.
--
-- Note for large existing tables: these are plain (transactional) CREATE INDEX statements,
-- so writes to `jobs` wait while they build. The queued ones are small; the three
-- finished-state ones read the whole table once.

-- ---------------------------------------------------------------------------------------
-- Claim and wake-up indexes, with `kind` leading.
--
-- The claim query takes, per kind the worker runs, the best runnable queued rows
-- (priority DESC, run_at, id). With `kind` leading, a worker restricted by
-- SLUICE_WORKER_KINDS reads only its own kinds' entries; the old index
-- (priority DESC, run_at, id) made it walk past every other kind's queued row, with a heap
-- visit each, on every lease.
DROP INDEX IF EXISTS jobs_queued_claim_idx;
CREATE INDEX jobs_queued_kind_claim_idx ON jobs (kind, priority DESC, run_at, id) WHERE state = 'queued';

-- The producer's next wake-up and the oldest queued job's age, per kind: the first entry
-- of each kind.
--
-- `run_at > '-infinity'` is always true, and is there on purpose: the claim query's
-- `run_at <= now()` does not imply it, so the planner can never use this index for a
-- lease. Otherwise a planner working from statistics taken while the queue was empty
-- (it then estimates ~1 queued row) may pick it, scan and sort a kind's whole backlog on
-- every lease, and fall further behind the more the backlog grows (seen in the storage
-- benchmark). Queries meant for it repeat the predicate.
CREATE INDEX jobs_queued_kind_run_at_idx ON jobs (kind, run_at)
    WHERE state = 'queued' AND run_at > '-infinity';

-- ---------------------------------------------------------------------------------------
-- Retention: finding expired finished rows is a range scan per (state, kind), oldest
-- first, that never touches rows still inside their window. `state` is a literal in each
-- predicate so `DELETE ... WHERE state = 'completed' AND kind = $1 AND finished_at < $2`
-- matches exactly one of them.
CREATE INDEX jobs_completed_finished_idx ON jobs (kind, finished_at) WHERE state = 'completed';
CREATE INDEX jobs_failed_finished_idx    ON jobs (kind, finished_at) WHERE state = 'failed';
CREATE INDEX jobs_cancelled_finished_idx ON jobs (kind, finished_at) WHERE state = 'cancelled';

-- ---------------------------------------------------------------------------------------
-- Counters of finished jobs by kind and state.
--
-- Live states (queued, processing, paused) are counted from their partial indexes: that
-- costs what the queue holds now. Finished states are what grows (up to the retention
-- window, millions of rows), so they are counted incrementally:
--
-- * every statement that changes the number of finished rows (a batch of completions, a
--   retention delete, a retry, an operator's UPDATE, a bulk INSERT) appends ONE row per
--   (kind, state) it changed to `job_count_deltas`, from a statement-level trigger reading
--   the statement's transition tables. Appending never conflicts, so completers on many
--   workers never wait on each other (a single counter row updated in place would
--   serialise every completion statement behind one row lock);
-- * one worker at a time folds the deltas into `job_counts` (`storage::fold_job_counts`);
-- * readers add `job_counts` and the not-yet-folded deltas, so they are exact at once.
--
-- The triggers are in the same transaction as the change, so an aborted statement leaves
-- no delta, and any SQL (the runbooks' included) is counted. TRUNCATE resets both tables.
CREATE TABLE job_counts (
    kind  text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL,
    PRIMARY KEY (kind, state)
) WITH (fillfactor = 50, autovacuum_vacuum_threshold = 100, autovacuum_vacuum_scale_factor = 0);

CREATE TABLE job_count_deltas (
    kind  text   NOT NULL,
    state text   NOT NULL,
    delta bigint NOT NULL
) WITH (autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0,
        autovacuum_vacuum_insert_threshold = 10000, autovacuum_vacuum_cost_delay = 0);

CREATE FUNCTION sluice_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (kind, state, delta)
    SELECT kind, state, count(*) FROM new_rows
     WHERE state IN ('completed', 'failed', 'cancelled')
     GROUP BY kind, state;
    RETURN NULL;
END
$$;

CREATE FUNCTION sluice_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (kind, state, delta)
    SELECT kind, state, sum(d) FROM (
        SELECT kind, state, 1 AS d FROM new_rows WHERE state IN ('completed', 'failed', 'cancelled')
        UNION ALL
        SELECT kind, state, -1 FROM old_rows WHERE state IN ('completed', 'failed', 'cancelled')
    ) c
     GROUP BY kind, state
    HAVING sum(d) <> 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION sluice_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (kind, state, delta)
    SELECT kind, state, -count(*) FROM old_rows
     WHERE state IN ('completed', 'failed', 'cancelled')
     GROUP BY kind, state;
    RETURN NULL;
END
$$;

CREATE FUNCTION sluice_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_count_deltas;
    DELETE FROM job_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_count_inserted();
CREATE TRIGGER jobs_count_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_count_updated();
CREATE TRIGGER jobs_count_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_count_deleted();
CREATE TRIGGER jobs_count_truncated AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_count_truncated();

-- The rows that exist already. The table is locked against writes by the index builds
-- above (same transaction), so nothing is counted twice or missed.
INSERT INTO job_counts (kind, state, n)
SELECT kind, state, count(*) FROM jobs
 WHERE state IN ('completed', 'failed', 'cancelled')
 GROUP BY kind, state;
