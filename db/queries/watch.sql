-- name: WatchWriteKey :one
SELECT secret FROM spicedb_write_key;

-- name: WatchLeaseTry :one
-- Session-level: held as long as the connection lives, released when it
-- closes (a crashed or partitioned holder loses it with its connection).
SELECT pg_try_advisory_lock(@lock_id::bigint);

-- name: WatchLeaseRelease :one
SELECT pg_advisory_unlock(@lock_id::bigint);

-- name: WatchStateGet :one
SELECT * FROM spicedb_watch;

-- name: WatchHeartbeat :exec
UPDATE spicedb_watch SET holder = @holder, heartbeat_at = now();

-- name: WatchCursorSave :exec
UPDATE spicedb_watch SET cursor = sqlc.narg('cursor'), cursor_at = now(), holder = @holder, heartbeat_at = now();

-- name: WatchModeSet :exec
UPDATE spicedb_watch SET
    mode_since = CASE WHEN mode = @mode THEN mode_since ELSE now() END,
    mode = @mode, mode_reason = sqlc.narg('mode_reason'), holder = @holder, heartbeat_at = now();

-- name: WatchDesired :many
-- Whether Postgres implies each given relationship (by position), by the
-- rule of the desired_relationships view, evaluated per relationship through
-- primary keys (the view itself would be scanned whole). pool_ids and
-- user_ids are the decoded resource and subject ids, 0 and NULL where the id
-- is not one Tether makes (such a relationship is never desired). ords
-- number the relationships (multi-argument unnest keeps them aligned).
WITH r AS (
    SELECT unnest(@resource_types::text[]) AS resource_type, unnest(@resource_ids::text[]) AS resource_id,
           unnest(@relations::text[]) AS relation, unnest(@subject_types::text[]) AS subject_type,
           unnest(@subject_ids::text[]) AS subject_id, unnest(@pool_ids::bigint[]) AS pool_id,
           unnest(@user_ids::text[]) AS user_id, unnest(@ords::bigint[]) AS ord
)
SELECT r.ord::bigint AS ord, (CASE
    WHEN r.resource_type = 'oauth2_client' AND r.relation = 'connected' AND r.subject_type = 'user' THEN
        EXISTS (SELECT 1 FROM oauth2_connections c
                WHERE c.provider_id = r.resource_id AND c.user_id = r.user_id AND c.status = 'connected')
    WHEN r.resource_type = 'resource_pool' AND r.relation = 'provider' AND r.subject_type = 'oauth2_client' THEN
        EXISTS (SELECT 1 FROM resource_pools p WHERE p.id = r.pool_id AND p.remote_provider_id = r.subject_id)
    WHEN r.resource_type = 'resource_pool' AND r.relation = 'viewer' AND r.subject_type = 'user' AND r.subject_id = '*' THEN
        EXISTS (SELECT 1 FROM resource_pools p WHERE p.id = r.pool_id AND p.public)
    WHEN r.resource_type = 'resource_pool' AND r.relation = 'viewer' AND r.subject_type = 'user' THEN
        EXISTS (SELECT 1 FROM resource_pool_viewers v WHERE v.resource_pool_id = r.pool_id AND v.user_id = r.user_id)
    ELSE false
END)::boolean AS desired
FROM r;

-- name: WatchDesiredApplied :one
-- Whether some key whose newest state is applied implies a relationship:
-- then SpiceDB cannot be empty unless it lost it. (A key still pending may
-- just not be written yet.) Read before SpiceDB.
SELECT EXISTS (SELECT 1 FROM desired_relationships d
               JOIN sync_state s ON s.kind = d.key_kind AND s.key_id = d.key_id
               WHERE s.applied_generation = s.generation);

-- name: SyncJobsReschedule :execrows
-- Makes sync jobs that wait out a retry backoff available now (SpiceDB
-- answers again after an outage, or was just restored). River offers no
-- bulk retry. A job River fetched meanwhile is running and no longer
-- matches; River's producers pick the rest up at their next fetch.
UPDATE river_job SET state = 'available', scheduled_at = now()
WHERE kind = ANY(@kinds::text[])
  AND (state = 'retryable' OR (state = 'available' AND scheduled_at > now()));
