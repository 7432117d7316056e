-- Flow control and schedules (issue 13, SPEC.md §5): global concurrency and rate limits
-- per kind, enforced in the claim statement by slot rows; periodic jobs' definitions as
-- the workers last saw them, for `GET /v1/periodic` and `sluicectl periodic`.

-- ---------------------------------------------------------------------------------------
-- The limit in force for a kind, written by the worker that started last (its handlers
-- file). Stored beside `paused` because the plain lease statement already reads this row
-- for every kind it leases: a kind with a limit is refused there at no extra cost, so a
-- worker whose file does not know the limit never breaks it (it leaves the kind to the
-- workers that do). NULL = no limit.
ALTER TABLE job_kinds
    ADD COLUMN global_concurrency integer
        CONSTRAINT job_kinds_global_concurrency_check CHECK (global_concurrency BETWEEN 1 AND 10000),
    ADD COLUMN rate_limit integer
        CONSTRAINT job_kinds_rate_limit_check CHECK (rate_limit BETWEEN 1 AND 10000),
    -- The window `rate_limit` starts are counted in: 1000 (/s), 60000 (/m), 3600000 (/h).
    ADD COLUMN rate_window_ms bigint
        CONSTRAINT job_kinds_rate_window_check CHECK (rate_window_ms > 0),
    ADD CONSTRAINT job_kinds_rate_pair_check CHECK ((rate_limit IS NULL) = (rate_window_ms IS NULL));

-- Global concurrency: N rows per limited kind (slots 0..N-1). A lease takes a free slot
-- `FOR UPDATE SKIP LOCKED` and writes the job's id and new lease token into it. A slot is
-- free when the job it names is no longer `processing` under that token: completed,
-- failed, retried, rescued after its lease expired, released, cancelled, or moved by an
-- operator's UPDATE. Nothing has to give a slot back, so no crash can leak one.
CREATE TABLE kind_concurrency_slots (
    kind        text    NOT NULL,
    slot        integer NOT NULL,
    job_id      bigint,
    lease_token bigint,
    PRIMARY KEY (kind, slot)
) WITH (fillfactor = 50);

-- Rate limits: N rows per limited kind, each stamped with the start (`leased_at`) it last
-- admitted. A slot may admit a start only once its stamp is more than one window old, so
-- successive stamps on one slot are more than a window apart and no window of that length
-- (closed at both ends) holds more than N starts: an exact sliding window that allows
-- bursts up to N and never 2N, which a token bucket would.
CREATE TABLE kind_rate_slots (
    kind    text        NOT NULL,
    slot    integer     NOT NULL,
    used_at timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (kind, slot)
) WITH (fillfactor = 50);
CREATE INDEX kind_rate_slots_used_at_idx ON kind_rate_slots (kind, used_at);

-- ---------------------------------------------------------------------------------------
-- Periodic jobs (`[periodic.NAME]` in the handlers file). The definitions live in the
-- workers' files; this table is what they last recorded, so the API and the CLI can list
-- them with their next run. It is not what makes a tick run exactly once: that is the
-- job's idempotency key `periodic:<name>@<tick>` under `jobs_kind_idempotency_key_key`.
CREATE TABLE periodic_jobs (
    name             text        PRIMARY KEY
        CONSTRAINT periodic_jobs_name_check CHECK (length(name) BETWEEN 1 AND 200),
    -- `cron 0 3 * * *` or `every 10s`, as written in the file.
    schedule         text        NOT NULL,
    timezone         text        NOT NULL DEFAULT 'UTC',
    kind             text        NOT NULL,
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    priority         smallint,
    max_attempts     integer,
    -- The next tick after the last one a worker looked at.
    next_run_at      timestamptz,
    -- The newest tick a job was enqueued for (by any worker), and when.
    last_tick_at     timestamptz,
    last_enqueued_at timestamptz,
    -- Which worker wrote the definition last, and when: a definition no running worker
    -- has any more stops being refreshed (its next_run_at falls behind).
    updated_by       text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now()
);
