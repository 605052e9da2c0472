-- name: WorkerLeaseRenew :one
-- Takes or renews a worker process's lease. A new row (the process starts, or
-- its row was cleaned up while it was stalled) counts every job attempted
-- before it as taken over: the process may write for none of them.
INSERT INTO worker_leases (client_id, host, pid, expires_at, reclaimed_through)
VALUES (@client_id, @host, @pid, now() + make_interval(secs => @ttl_seconds::float8), now())
ON CONFLICT (client_id) DO UPDATE SET
    renewed_at = now(),
    expires_at = now() + make_interval(secs => @ttl_seconds::float8)
RETURNING reclaimed_through;

-- name: WorkerLeaseHeldJobs :many
-- Running jobs of the given kinds whose worker's lease has expired (River
-- appends the client id of each attempt to attempted_by), locked together
-- with their lease rows. SKIP LOCKED: a lease being renewed this instant, or
-- a job being completed, is left for the next round.
SELECT j.id, j.kind, j.args, j.priority, j.queue, j.max_attempts, j.attempt, j.attempted_at, l.client_id
FROM river_job j
JOIN worker_leases l ON l.client_id = j.attempted_by[cardinality(j.attempted_by)]
WHERE j.state = 'running' AND j.kind = ANY(@kinds::text[]) AND l.expires_at < now()
ORDER BY j.id
LIMIT @max_jobs
FOR UPDATE OF j, l SKIP LOCKED;

-- name: WorkerLeaseCancelReclaimed :exec
-- Finalizes jobs taken over from a dead worker, each naming the job that
-- replaces it. Cancelled, not deleted: River UI keeps the story. Once a job is
-- no longer running, River on the old worker (if it was only stalled) can
-- neither complete nor retry it: River only updates running jobs.
WITH r AS (
    SELECT unnest(@ids::bigint[]) AS id, unnest(@replaced_by::bigint[]) AS replaced_by
)
UPDATE river_job j SET
    state = 'cancelled',
    finalized_at = now(),
    errors = array_append(j.errors, jsonb_build_object(
        'at', now(), 'attempt', j.attempt, 'trace', '',
        'error', 'worker ' || j.attempted_by[cardinality(j.attempted_by)] ||
                 ' stopped renewing its lease (presumed dead); job ' || r.replaced_by || ' took over')),
    metadata = j.metadata || jsonb_build_object('tether:replaced_by', r.replaced_by)
FROM r
WHERE j.id = r.id AND j.state = 'running';

-- name: WorkerLeaseMarkReclaimed :exec
-- Tells each worker, at its next renewal, the newest attempt taken over from
-- it.
WITH r AS (
    SELECT unnest(@client_ids::text[]) AS client_id, unnest(@through::timestamptz[]) AS through
)
UPDATE worker_leases l SET reclaimed_through = greatest(l.reclaimed_through, r.through)
FROM r
WHERE l.client_id = r.client_id;

-- name: WorkerLeaseDeleteStale :execrows
-- Forgets leases expired long ago that no running job names any more.
DELETE FROM worker_leases l
WHERE l.expires_at < now() - make_interval(secs => @older_than_seconds::float8)
  AND NOT EXISTS (SELECT 1 FROM river_job j
                  WHERE j.state = 'running' AND j.attempted_by[cardinality(j.attempted_by)] = l.client_id);
