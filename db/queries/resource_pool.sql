-- name: PoolInsert :one
INSERT INTO resource_pools (name, public, is_default, remote_provider_id)
VALUES (@name, @public, @is_default, sqlc.narg('remote_provider_id'))
RETURNING *;

-- name: PoolGetByID :one
SELECT * FROM resource_pools WHERE id = @id;

-- name: PoolGetByIDForUpdate :one
SELECT * FROM resource_pools WHERE id = @id FOR UPDATE;

-- name: PoolList :many
SELECT * FROM resource_pools ORDER BY id;

-- The caller's view of the pools, computed from the database: public pools,
-- pools the user was granted by hand, and pools linked to a provider the user
-- is connected to. It is the SpiceDB permission
-- view = viewer + provider->connected, evaluated on the source of truth, so it
-- reflects a change the moment it commits (read-your-writes).
-- With @only_id set, just that pool (if visible).
-- name: PoolListVisible :many
SELECT p.* FROM resource_pools p
WHERE (sqlc.narg('only_id')::bigint IS NULL OR p.id = sqlc.narg('only_id')::bigint)
  AND (p.public
   OR EXISTS (SELECT 1 FROM resource_pool_viewers v WHERE v.resource_pool_id = p.id AND v.user_id = @user_id)
   OR EXISTS (SELECT 1 FROM oauth2_connections c
              WHERE c.provider_id = p.remote_provider_id AND c.user_id = @user_id AND c.status = 'connected'))
ORDER BY p.id;

-- name: PoolUpdate :one
UPDATE resource_pools SET
    name = @name,
    public = @public,
    is_default = @is_default,
    remote_provider_id = sqlc.narg('remote_provider_id'),
    updated_at = now()
WHERE id = @id
RETURNING *;

-- name: PoolDelete :execrows
DELETE FROM resource_pools WHERE id = @id;

-- name: PoolViewerList :many
SELECT user_id FROM resource_pool_viewers WHERE resource_pool_id = @resource_pool_id ORDER BY user_id;

-- name: PoolViewerInsert :execrows
INSERT INTO resource_pool_viewers (resource_pool_id, user_id) VALUES (@resource_pool_id, @user_id)
ON CONFLICT DO NOTHING;

-- name: PoolViewerDelete :execrows
DELETE FROM resource_pool_viewers WHERE resource_pool_id = @resource_pool_id AND user_id = @user_id;
