-- name: SyncBump :one
-- Marks a key as changed: a new generation from the global sequence, and the
-- time of the oldest change not yet applied. Call it in the transaction that
-- makes the change, next to the InsertTx of the key's job.
INSERT INTO sync_state (kind, key_id, provider_id, user_id, resource_pool_id, generation,
                        changed_at, pending_since, revoke_pending_since)
VALUES (@kind, @key_id, sqlc.narg('provider_id'), sqlc.narg('user_id'), sqlc.narg('resource_pool_id'),
        nextval('sync_generation_seq'), clock_timestamp(), now(), CASE WHEN @revoke::boolean THEN now() END)
ON CONFLICT (kind, key_id) DO UPDATE SET
    generation = EXCLUDED.generation,
    -- The statement's time, not the transaction's: close to the commit, so
    -- that the sync lag measured from it is not inflated by long requests.
    changed_at = clock_timestamp(),
    pending_since = COALESCE(sync_state.pending_since, now()),
    revoke_pending_since = CASE WHEN @revoke::boolean THEN COALESCE(sync_state.revoke_pending_since, now())
                                ELSE sync_state.revoke_pending_since END
RETURNING generation;

-- name: SyncConnectionDesired :one
-- One statement, so the generation and the state it describes come from one
-- snapshot.
SELECT
    COALESCE((SELECT s.generation FROM sync_state s WHERE s.kind = 'connection' AND s.key_id = @key_id), 0)::bigint AS generation,
    COALESCE((SELECT s.changed_at FROM sync_state s WHERE s.kind = 'connection' AND s.key_id = @key_id), 'epoch')::timestamptz AS changed_at,
    COALESCE((SELECT s.applied_generation = s.generation FROM sync_state s WHERE s.kind = 'connection' AND s.key_id = @key_id), false)::boolean AS settled,
    EXISTS (SELECT 1 FROM oauth2_connections c
            WHERE c.provider_id = @provider_id AND c.user_id = @user_id AND c.status = 'connected') AS connected;

-- name: SyncPoolDesired :one
SELECT
    COALESCE((SELECT s.generation FROM sync_state s WHERE s.kind = 'pool' AND s.key_id = @key_id), 0)::bigint AS generation,
    COALESCE((SELECT s.changed_at FROM sync_state s WHERE s.kind = 'pool' AND s.key_id = @key_id), 'epoch')::timestamptz AS changed_at,
    COALESCE((SELECT s.applied_generation = s.generation FROM sync_state s WHERE s.kind = 'pool' AND s.key_id = @key_id), false)::boolean AS settled,
    (p.id IS NOT NULL)::boolean AS pool_exists,
    COALESCE(p.public, false)::boolean AS public,
    p.remote_provider_id,
    COALESCE((SELECT array_agg(tether_subject_id(v.user_id) ORDER BY 1) FROM resource_pool_viewers v
              WHERE v.resource_pool_id = @resource_pool_id), '{}')::text[] AS viewer_subject_ids
FROM (SELECT 1) AS one
LEFT JOIN resource_pools p ON p.id = @resource_pool_id;

-- name: SyncRecordError :exec
UPDATE sync_state SET last_error = @last_error, last_error_at = now(), stalled = @stalled
WHERE kind = @kind AND key_id = @key_id;

-- name: SyncGet :one
SELECT * FROM sync_state WHERE kind = @kind AND key_id = @key_id;

-- name: SyncOldestPending :one
SELECT COALESCE(extract(epoch FROM now() - min(pending_since)), 0)::float8 AS oldest_pending_age_seconds,
       COALESCE(extract(epoch FROM now() - min(revoke_pending_since)), 0)::float8 AS oldest_revoke_pending_age_seconds,
       count(*) FILTER (WHERE pending_since IS NOT NULL) AS pending_keys,
       count(*) FILTER (WHERE stalled) AS stalled_keys
FROM sync_state;

-- name: SyncStalledList :many
SELECT kind, key_id, provider_id, user_id, resource_pool_id FROM sync_state
WHERE stalled OR pending_since < now() - @older_than::interval
ORDER BY kind, key_id
LIMIT @max_rows;

-- name: SyncGenerationsChanged :many
-- The keys among the given ones whose generation is no longer what the
-- reconciler saw in its snapshot.
WITH k AS (
    SELECT unnest(@kinds::text[]) AS kind, unnest(@key_ids::text[]) AS key_id, unnest(@generations::bigint[]) AS generation
)
SELECT k.kind::text AS kind, k.key_id::text AS key_id
FROM k
LEFT JOIN sync_state s ON s.kind = k.kind AND s.key_id = k.key_id
WHERE COALESCE(s.generation, 0) <> k.generation;

-- name: SyncPoolStates :many
SELECT resource_pool_id::bigint AS resource_pool_id, generation, applied_generation, applied_at, last_error
FROM sync_state WHERE kind = 'pool' AND resource_pool_id = ANY(@ids::bigint[]);

-- name: SyncFenceMany :many
-- Records that each key's generation is applied, but only if no change to the
-- key committed since its worker read it (zero rows for a key: read again and
-- rewrite). The keys of one group-committed write go in one statement and one
-- commit. SKIP LOCKED: a row locked by a transaction that is changing the key
-- (or by another fence) is reported not fenced instead of waited for, so
-- fences never deadlock with each other or with the API; its job reads and
-- writes again, which is always safe.
-- A key handed off after its commit comes with its job (outbox_jobs; 0 for
-- the others): fenced here, its change is applied, so that job (the outbox,
-- scheduled a grace ahead and not yet started) has nothing left to do and is
-- deleted in the same statement and commit: one row write instead of River's
-- schedule, fetch, completion and cleanup. A job that has started already is
-- left to run; it writes the key's newest state.
WITH k AS (
    SELECT unnest(@kinds::text[]) AS kind, unnest(@key_ids::text[]) AS key_id, unnest(@generations::bigint[]) AS generation,
           unnest(@outbox_jobs::bigint[]) AS outbox_job
), locked AS (
    SELECT s.kind, s.key_id FROM sync_state s
    JOIN k ON k.kind = s.kind AND k.key_id = s.key_id AND k.generation = s.generation
    FOR UPDATE OF s SKIP LOCKED
), fenced AS (
    UPDATE sync_state s SET
        applied_generation = generation,
        applied_at = now(),
        zedtoken = @zedtoken,
        pending_since = NULL,
        revoke_pending_since = NULL,
        last_error = NULL,
        last_error_at = NULL,
        stalled = false
    FROM locked l
    WHERE s.kind = l.kind AND s.key_id = l.key_id
    RETURNING s.kind, s.key_id
), outbox_done AS (
    DELETE FROM river_job j USING k, fenced f
    WHERE f.kind = k.kind AND f.key_id = k.key_id AND j.id = k.outbox_job AND k.outbox_job <> 0
      -- Not started: still scheduled, or made available ahead of its time by
      -- River's scheduler (it looks one interval, 5 s, ahead) but not yet
      -- fetchable (River fetches only once scheduled_at has passed). A fetch
      -- that locked the row first has made it running: not deleted.
      AND (j.state = 'scheduled' OR (j.state = 'available' AND j.scheduled_at > now()))
)
SELECT fenced.kind, fenced.key_id FROM fenced;
