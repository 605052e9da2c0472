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

-- name: ConnectionGetForUpdate :one
SELECT * FROM oauth2_connections WHERE id = @id AND user_id = @user_id FOR UPDATE;

-- name: ConnectionSetToken :exec
UPDATE oauth2_connections SET token_enc = @token_enc, token_expires_at = sqlc.narg('token_expires_at'), updated_at = now()
WHERE id = @id;

-- name: RevocationInsert :exec
INSERT INTO oauth2_token_revocations (id, provider_id, token_enc, token_hint)
VALUES (@id, @provider_id, @token_enc, @token_hint);

-- name: RevocationGet :one
SELECT r.*, p.kind, p.client_id, p.client_secret_enc, p.url, p.revocation_url, p.issuer_url, p.token_url, p.authorization_url
FROM oauth2_token_revocations r JOIN oauth2_providers p ON p.id = r.provider_id
WHERE r.id = @id;

-- name: RevocationDelete :exec
DELETE FROM oauth2_token_revocations WHERE id = @id;
