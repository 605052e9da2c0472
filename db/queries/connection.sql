-- name: ConnectionListByUser :many
SELECT c.*, s.generation, s.applied_generation, s.applied_at, s.last_error
FROM oauth2_connections c
LEFT JOIN sync_state s ON s.kind = 'connection' AND s.key_id = c.provider_id || '/' || tether_subject_id(c.user_id)
WHERE c.user_id = @user_id
  -- A row that was never connected exists only while its authorization is
  -- in flight: an abandoned one is gone for the user at once (and from the
  -- table at the next sweep).
  AND (c.status <> 'pending' OR c.authorizing_until > now())
ORDER BY c.provider_id;

-- name: ConnectionGetForUser :one
SELECT c.*, s.generation, s.applied_generation, s.applied_at, s.last_error
FROM oauth2_connections c
LEFT JOIN sync_state s ON s.kind = 'connection' AND s.key_id = c.provider_id || '/' || tether_subject_id(c.user_id)
WHERE c.id = @id AND c.user_id = @user_id
  AND (c.status <> 'pending' OR c.authorizing_until > now());

-- name: ConnectionDeleteForUser :one
DELETE FROM oauth2_connections WHERE id = @id AND user_id = @user_id
RETURNING *;

-- name: ConnectionUpsertStatus :one
-- connected: an authorization completed (it is no longer in flight).
INSERT INTO oauth2_connections (user_id, provider_id, status, connected_at)
VALUES (@user_id, @provider_id, @status, CASE WHEN @status = 'connected' THEN now() END)
ON CONFLICT (user_id, provider_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now(),
    connected_at = CASE WHEN EXCLUDED.status = 'connected' THEN now() ELSE oauth2_connections.connected_at END,
    authorizing_until = CASE WHEN EXCLUDED.status = 'connected' THEN NULL ELSE oauth2_connections.authorizing_until END
RETURNING *;

-- name: ConnectionInsertPending :one
-- Starts a connection for a new authorization, in flight until
-- authorizing_until (its state's expiry); an existing connection keeps its
-- status (and its access) until the new authorization completes.
INSERT INTO oauth2_connections (user_id, provider_id, status, authorizing_until)
VALUES (@user_id, @provider_id, 'pending', @authorizing_until)
ON CONFLICT (user_id, provider_id) DO UPDATE SET updated_at = now(),
    authorizing_until = GREATEST(oauth2_connections.authorizing_until, EXCLUDED.authorizing_until)
RETURNING *;

-- name: ConnectionSetIdentity :exec
-- The account an authorization connected and the scopes it granted: shown on
-- the page, never a token.
UPDATE oauth2_connections SET account = sqlc.narg('account'), granted_scopes = @granted_scopes
WHERE id = @id;

-- name: ConnectionDeletePending :execrows
-- An authorization that ended without connecting (denied, expired, failed):
-- a row that was never connected goes.
DELETE FROM oauth2_connections WHERE user_id = @user_id AND provider_id = @provider_id AND status = 'pending';

-- name: ConnectionEndAuthorizing :exec
-- The same for a row that was connected (or broken) before: it is no longer
-- waiting and keeps its status.
UPDATE oauth2_connections SET authorizing_until = NULL
WHERE user_id = @user_id AND provider_id = @provider_id AND status <> 'pending';

-- name: ConnectionDeleteAbandoned :execrows
-- The sweep: rows whose authorization expired without ever connecting. They
-- never had access (only connected rows do), so no sync job is needed.
DELETE FROM oauth2_connections WHERE status = 'pending' AND authorizing_until < now();

-- name: ConnectionEndLapsedAuthorizing :execrows
UPDATE oauth2_connections SET authorizing_until = NULL
WHERE status <> 'pending' AND authorizing_until < now();

-- name: ConnectionSyncKeysByUser :many
-- The sync state of every connection key the user can have (one per
-- provider, by primary key): what the page shows of revocations still being
-- applied after a disconnect.
SELECT p.id AS provider_id, s.generation, s.applied_generation, s.applied_at, s.last_error, s.revoke_pending_since
FROM oauth2_providers p
JOIN sync_state s ON s.kind = 'connection' AND s.key_id = p.id || '/' || tether_subject_id(@user_id::text)
ORDER BY p.id;

-- name: ConnectionDeleteByProvider :many
DELETE FROM oauth2_connections WHERE provider_id = @provider_id
RETURNING *;

-- name: ConnectionDropTokensByProvider :many
-- A provider's endpoints or client changed: its tokens are never sent to the
-- new ones. Every connection that was ever connected breaks (users connect
-- again; its authorization in flight, if any, is over); the old rows are
-- returned first, for their tokens' revocation at the old endpoints.
WITH old AS (
    SELECT o.* FROM oauth2_connections o WHERE o.provider_id = @provider_id AND o.status <> 'pending' FOR UPDATE
), dropped AS (
    UPDATE oauth2_connections c
    SET status = 'error', token_enc = NULL, token_expires_at = NULL, authorizing_until = NULL,
        refresh_lease_id = NULL, refresh_lease_until = NULL, updated_at = now()
    FROM old WHERE c.id = old.id
)
SELECT * FROM old;

-- name: ConnectionDeletePendingByProvider :execrows
-- Connections that were never connected end with their authorizations.
DELETE FROM oauth2_connections WHERE provider_id = @provider_id AND status = 'pending';
