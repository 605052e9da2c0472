-- name: StateInsert :exec
INSERT INTO oauth2_states (state_hash, user_id, provider_id, browser_hash, code_verifier_enc, next_url, expires_at)
VALUES (@state_hash, @user_id, @provider_id, @browser_hash, @code_verifier_enc, @next_url, @expires_at);

-- name: StateConsume :one
-- Single use: the state is gone once looked up, whatever the outcome.
DELETE FROM oauth2_states WHERE state_hash = @state_hash
RETURNING *;

-- name: StateDeleteExpired :execrows
-- An expired state is kept an hour longer (hashes only, unusable): a
-- callback that comes back late is told the authorization expired instead
-- of that it is unknown.
DELETE FROM oauth2_states WHERE expires_at < now() - interval '1 hour';

-- name: StateLockUser :exec
-- Serializes one user's authorizations, so the cap below holds under
-- concurrency.
SELECT pg_advisory_xact_lock(hashtextextended('tether.oauth2_states/' || @user_id::text, 0));

-- name: StateTrimForUser :execrows
-- Keeps a user's newest states only.
DELETE FROM oauth2_states WHERE state_hash IN (
    SELECT s.state_hash FROM oauth2_states s WHERE s.user_id = @user_id
    ORDER BY s.created_at DESC, s.expires_at DESC OFFSET @keep::int
);

-- name: StatePeek :one
-- A state, not consumed: the callback checks the response's issuer first.
SELECT * FROM oauth2_states WHERE state_hash = @state_hash;

-- name: StateDeleteByProvider :execrows
DELETE FROM oauth2_states WHERE provider_id = @provider_id;

-- name: ConnectionGetOwned :one
SELECT * FROM oauth2_connections WHERE id = @id AND user_id = @user_id;

-- name: ConnectionGetByUserProviderForUpdate :one
SELECT * FROM oauth2_connections WHERE user_id = @user_id AND provider_id = @provider_id FOR UPDATE;

-- name: ConnectionTakeRefreshLease :one
-- Takes the connection's refresh lease if nobody holds it (or the holder's
-- expired) and the token is still the one the caller read.
UPDATE oauth2_connections
SET refresh_lease_id = @lease_id, refresh_lease_until = now() + make_interval(secs => @lease_seconds::float8)
WHERE id = @id AND status = 'connected' AND token_enc = @token_enc
  AND (refresh_lease_until IS NULL OR refresh_lease_until < now())
RETURNING id;

-- name: ConnectionStoreRefreshed :execrows
-- Stores a refreshed token if the caller still holds the lease.
UPDATE oauth2_connections
SET token_enc = @token_enc, token_expires_at = sqlc.narg('token_expires_at'),
    refresh_lease_id = NULL, refresh_lease_until = NULL, updated_at = now()
WHERE id = @id AND refresh_lease_id = @lease_id;

-- name: ConnectionMarkBrokenIfLeased :one
-- The provider refused the refresh (invalid_grant): the connection is broken.
UPDATE oauth2_connections
SET status = 'error', refresh_lease_id = NULL, refresh_lease_until = NULL, updated_at = now()
WHERE id = @id AND refresh_lease_id = @lease_id
RETURNING *;

-- name: ConnectionReleaseRefreshLease :exec
UPDATE oauth2_connections SET refresh_lease_id = NULL, refresh_lease_until = NULL
WHERE id = @id AND refresh_lease_id = @lease_id;

-- name: ConnectionSetToken :exec
-- A new token from an authorization: any refresh in flight for the old one
-- loses its lease (and cannot store over the new token).
UPDATE oauth2_connections SET token_enc = @token_enc, token_expires_at = sqlc.narg('token_expires_at'),
    refresh_lease_id = NULL, refresh_lease_until = NULL, updated_at = now()
WHERE id = @id;

-- name: ConnectionReencryptToken :execrows
-- Re-encrypts a token under the current key unless it changed meanwhile.
UPDATE oauth2_connections SET token_enc = @token_enc WHERE id = @id AND token_enc = @old_enc;

-- name: RevocationInsertMany :copyfrom
INSERT INTO oauth2_token_revocations (id, provider_id, token_enc, token_hint, kind, client_id, client_secret_enc,
    url, token_url, revocation_url, issuer_url)
VALUES (@id, @provider_id, @token_enc, @token_hint, @kind, @client_id, @client_secret_enc,
    @url, @token_url, @revocation_url, @issuer_url);

-- name: RevocationGet :one
SELECT * FROM oauth2_token_revocations WHERE id = @id;

-- name: RevocationDelete :exec
DELETE FROM oauth2_token_revocations WHERE id = @id;
