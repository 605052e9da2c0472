-- Pages of encrypted values for key rotation (tether keys rotate).

-- name: KeysProviderSecrets :many
SELECT id, client_secret_enc FROM oauth2_providers
WHERE client_secret_enc IS NOT NULL AND id > @after_id ORDER BY id LIMIT @max_rows;

-- name: KeysProviderSecretSet :exec
UPDATE oauth2_providers SET client_secret_enc = @client_secret_enc WHERE id = @id AND client_secret_enc = @old_enc;

-- name: KeysConnectionTokens :many
SELECT id, token_enc FROM oauth2_connections
WHERE token_enc IS NOT NULL AND id > @after_id ORDER BY id LIMIT @max_rows;

-- name: KeysConnectionTokenSet :exec
UPDATE oauth2_connections SET token_enc = @token_enc WHERE id = @id AND token_enc = @old_enc;

-- name: KeysStateVerifiers :many
SELECT state_hash, code_verifier_enc FROM oauth2_states
WHERE code_verifier_enc IS NOT NULL AND state_hash > @after_hash ORDER BY state_hash LIMIT @max_rows;

-- name: KeysStateVerifierSet :exec
UPDATE oauth2_states SET code_verifier_enc = @code_verifier_enc WHERE state_hash = @state_hash AND code_verifier_enc = @old_enc;

-- name: KeysRevocationTokens :many
SELECT id, token_enc FROM oauth2_token_revocations
WHERE id > @after_id ORDER BY id LIMIT @max_rows;

-- name: KeysRevocationTokenSet :exec
UPDATE oauth2_token_revocations SET token_enc = @token_enc WHERE id = @id AND token_enc = @old_enc;

-- name: KeysRevocationSecrets :many
SELECT id, provider_id, client_secret_enc FROM oauth2_token_revocations
WHERE client_secret_enc IS NOT NULL AND id > @after_id ORDER BY id LIMIT @max_rows;

-- name: KeysRevocationSecretSet :exec
UPDATE oauth2_token_revocations SET client_secret_enc = @client_secret_enc WHERE id = @id AND client_secret_enc = @old_enc;
