-- name: ProviderInsert :one
INSERT INTO oauth2_providers (
    id, kind, display_name, client_id, client_secret_enc, scope, url, use_pkce,
    authorization_url, token_url, revocation_url, issuer_url
) VALUES (
    @id, @kind, @display_name, @client_id, @client_secret_enc, @scope, @url, @use_pkce,
    @authorization_url, @token_url, @revocation_url, @issuer_url
)
RETURNING *;

-- name: ProviderGetByID :one
SELECT * FROM oauth2_providers WHERE id = @id;

-- name: ProviderGetByIDForUpdate :one
SELECT * FROM oauth2_providers WHERE id = @id FOR UPDATE;

-- name: ProviderList :many
SELECT * FROM oauth2_providers ORDER BY id;

-- name: ProviderUpdate :one
UPDATE oauth2_providers SET
    kind = @kind,
    display_name = @display_name,
    client_id = @client_id,
    client_secret_enc = @client_secret_enc,
    scope = @scope,
    url = @url,
    use_pkce = @use_pkce,
    authorization_url = @authorization_url,
    token_url = @token_url,
    revocation_url = @revocation_url,
    issuer_url = @issuer_url,
    updated_at = now()
WHERE id = @id
RETURNING *;

-- name: ProviderDelete :execrows
DELETE FROM oauth2_providers WHERE id = @id;

-- name: ProviderIsLinked :one
SELECT EXISTS (SELECT 1 FROM resource_pools WHERE remote_provider_id = @provider_id::text);
