-- name: ReconcileLock :one
SELECT pg_try_advisory_lock(@lock_id::bigint);

-- name: ReconcileUnlock :one
SELECT pg_advisory_unlock(@lock_id::bigint);

-- name: ReconcileClear :exec
TRUNCATE reconcile_actual, reconcile_diff RESTART IDENTITY;

-- name: ReconcileActualInsert :copyfrom
INSERT INTO reconcile_actual (resource_type, resource_id, relation, subject_type, subject_id)
VALUES (@resource_type, @resource_id, @relation, @subject_type, @subject_id);

-- name: ReconcileDiffBuild :execrows
-- Both directions in one statement (one snapshot). A relationship in SpiceDB
-- belongs to a key by its shape, so extra ones find their key too.
INSERT INTO reconcile_diff (operation, resource_type, resource_id, relation, subject_type, subject_id,
                            key_kind, key_id, generation, pending)
SELECT 'touch', d.resource_type, d.resource_id, d.relation, d.subject_type, d.subject_id,
       d.key_kind, d.key_id, COALESCE(s.generation, 0), COALESCE(s.pending_since IS NOT NULL, false)
FROM desired_relationships d
LEFT JOIN sync_state s ON s.kind = d.key_kind AND s.key_id = d.key_id
WHERE NOT EXISTS (SELECT 1 FROM reconcile_actual a
                  WHERE a.resource_type = d.resource_type AND a.resource_id = d.resource_id
                    AND a.relation = d.relation AND a.subject_type = d.subject_type AND a.subject_id = d.subject_id)
UNION ALL
SELECT 'delete', a.resource_type, a.resource_id, a.relation, a.subject_type, a.subject_id,
       k.key_kind, k.key_id, COALESCE(s.generation, 0), COALESCE(s.pending_since IS NOT NULL, false)
FROM reconcile_actual a
CROSS JOIN LATERAL (SELECT CASE WHEN a.resource_type = 'oauth2_client' THEN 'connection' ELSE 'pool' END AS key_kind,
                           CASE WHEN a.resource_type = 'oauth2_client' THEN a.resource_id || '/' || a.subject_id
                                ELSE a.resource_id END AS key_id) k
LEFT JOIN sync_state s ON s.kind = k.key_kind AND s.key_id = k.key_id
WHERE NOT EXISTS (SELECT 1 FROM desired_relationships d
                  WHERE a.resource_type = d.resource_type AND a.resource_id = d.resource_id
                    AND a.relation = d.relation AND a.subject_type = d.subject_type AND a.subject_id = d.subject_id);

-- name: ReconcileDesiredCount :one
SELECT count(*) FROM desired_relationships;

-- name: ReconcileDiffPage :many
SELECT * FROM reconcile_diff WHERE id > @after_id ORDER BY id LIMIT @max_rows;

-- name: ReconcileRunInsert :one
INSERT INTO reconcile_runs (started_at, finished_at, dry_run, checked, missing, extra, repaired, error)
VALUES (@started_at, @finished_at, @dry_run, @checked, @missing, @extra, @repaired, sqlc.narg('error'))
RETURNING *;

-- name: ReconcileRunLatest :one
SELECT * FROM reconcile_runs ORDER BY id DESC LIMIT 1;

-- name: ReconcileRunLatestRepair :one
-- The newest reconcile that repaired (not a dry run) and succeeded.
SELECT * FROM reconcile_runs WHERE NOT dry_run AND error IS NULL ORDER BY id DESC LIMIT 1;

-- The desired relationships, in SpiceDB's export order, a page at a time
-- after the last row seen (keyset), one query per branch of
-- desired_relationships: each reads its table through the index in
-- 00009_reconcile_order.sql. All run in one REPEATABLE READ transaction, so
-- the pages are of one snapshot.

-- name: ReconcileDesiredConnectionsPage :many
-- oauth2_client:provider#connected@user:subject of connected connections.
SELECT c.provider_id, tether_subject_id(c.user_id)::text AS subject_id
FROM oauth2_connections c
WHERE c.status = 'connected'
  AND (c.provider_id COLLATE "C", tether_subject_id(c.user_id) COLLATE "C") > (@after_provider::text, @after_subject::text)
ORDER BY c.provider_id COLLATE "C", tether_subject_id(c.user_id) COLLATE "C"
LIMIT @max_rows;

-- name: ReconcileDesiredPoolsPage :many
-- A pool's provider link and public viewer: resource_pool:id#provider@... and
-- resource_pool:id#viewer@user:*, in that order.
SELECT p.id::text AS resource_id, p.remote_provider_id, p.public
FROM resource_pools p
WHERE (p.remote_provider_id IS NOT NULL OR p.public)
  AND (p.id::text) COLLATE "C" > @after_id::text
ORDER BY (p.id::text) COLLATE "C"
LIMIT @max_rows;

-- name: ReconcileDesiredViewersPage :many
-- resource_pool:id#viewer@user:subject of manual viewers.
SELECT v.resource_pool_id::text AS resource_id, tether_subject_id(v.user_id)::text AS subject_id
FROM resource_pool_viewers v
WHERE ((v.resource_pool_id::text) COLLATE "C", tether_subject_id(v.user_id) COLLATE "C") > (@after_pool::text, @after_subject::text)
ORDER BY (v.resource_pool_id::text) COLLATE "C", tether_subject_id(v.user_id) COLLATE "C"
LIMIT @max_rows;

-- name: ReconcileKeyStates :many
-- The generation and pending flag of the given keys (a page of drift), read in
-- the snapshot of the desired relationships; a key without a row is
-- generation 0, not pending (as in ReconcileDiffBuild).
WITH k AS (
    SELECT unnest(@kinds::text[]) AS kind, unnest(@key_ids::text[]) AS key_id
)
SELECT s.kind, s.key_id, s.generation, (s.pending_since IS NOT NULL)::boolean AS pending
FROM k JOIN sync_state s ON s.kind = k.kind AND s.key_id = k.key_id;
