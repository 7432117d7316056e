-- Hot path (issue 14): a claim index the planner picks whatever the statistics say.
--
-- The lease finds, per kind, the best queued rows on a partial index in claim order.
-- Version 3's `jobs_queued_kind_claim_idx` has the predicate `state = 'queued'`, which the
-- lease repeats as `j.state = 'queued'`. That same clause is also an index condition on
-- the first column of `jobs_state_kind_id_idx (state, kind, id)`. Statistics taken while no
-- job was queued (a queue that was idle when autovacuum last analyzed it, or a table
-- seeded with finished rows and analyzed, as in the storage benchmark) estimate one
-- queued row, and the two paths then cost about the same: the planner may take
-- `jobs_state_kind_id_idx`, fetch every queued row of the kind and sort them, on every
-- lease. A drain of a 20k backlog then sorts 20k rows per lease, and a table holding
-- many finished rows (whose statistics say "no queued rows") drains several times
-- slower than an empty one (issue 11: 1.1k vs 5.2k jobs/s).
--
-- The new index's predicate is `(state = 'queued') IS TRUE` (the same rows: state is
-- never NULL), and the lease writes exactly that clause. Postgres proves a partial index
-- usable when the query contains its predicate verbatim, so the claim index stays usable;
-- but `... IS TRUE` is no index condition for any other index, so no other index can
-- serve the claim without reading every row of the kind, and the planner has one
-- sensible path. Other statements keep `state = 'queued'` and use the other indexes.
--
-- Same number of indexes as before: writes per job are unchanged.
CREATE INDEX jobs_claim_idx ON jobs (kind, priority DESC, run_at, id)
    WHERE (state = 'queued') IS TRUE;
DROP INDEX jobs_queued_kind_claim_idx;
