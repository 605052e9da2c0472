-- name: ConnectionListByUser :many
SELECT c.*, s.generation, s.applied_generation, s.applied_at, s.last_error
FROM oauth2_connections c
LEFT JOIN sync_state s ON s.kind = 'connection' AND s.key_id = c.provider_id || '/' || tether_subject_id(c.user_id)
WHERE c.user_id = @user_id
ORDER BY c.provider_id;

-- name: ConnectionGetForUser :one
SELECT c.*, s.generation, s.applied_generation, s.applied_at, s.last_error
FROM oauth2_connections c
LEFT JOIN sync_state s ON s.kind = 'connection' AND s.key_id = c.provider_id || '/' || tether_subject_id(c.user_id)
WHERE c.id = @id AND c.user_id = @user_id;

-- name: ConnectionDeleteForUser :one
DELETE FROM oauth2_connections WHERE id = @id AND user_id = @user_id
RETURNING *;

-- name: ConnectionUpsertStatus :one
INSERT INTO oauth2_connections (user_id, provider_id, status)
VALUES (@user_id, @provider_id, @status)
ON CONFLICT (user_id, provider_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()
RETURNING *;

-- name: ConnectionInsertPending :one
-- Starts a connection for a new authorization; an existing connection keeps
-- its status (and its access) until the new authorization completes.
INSERT INTO oauth2_connections (user_id, provider_id, status)
VALUES (@user_id, @provider_id, 'pending')
ON CONFLICT (user_id, provider_id) DO UPDATE SET updated_at = now()
RETURNING *;

-- name: ConnectionDeleteByProvider :many
DELETE FROM oauth2_connections WHERE provider_id = @provider_id
RETURNING user_id;
