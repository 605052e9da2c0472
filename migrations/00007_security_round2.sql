-- +goose Up
-- At most 20 unexpired states per user (the oldest go): found by user.
CREATE INDEX oauth2_states_user_id_idx ON oauth2_states (user_id, created_at);

-- A queued revocation outlives its provider's row (deleted, or its endpoints
-- changed by a PATCH): it carries what revoking needs, copied from the
-- provider when the token was dropped, so the token goes back to the
-- endpoint it was issued by and nowhere else. client_secret_enc is the
-- provider's ciphertext (bound to the provider id).
ALTER TABLE oauth2_token_revocations
    DROP CONSTRAINT oauth2_token_revocations_provider_id_fkey,
    ADD COLUMN kind              text NOT NULL DEFAULT '',
    ADD COLUMN client_id         text NOT NULL DEFAULT '',
    ADD COLUMN client_secret_enc bytea,
    ADD COLUMN url               text NOT NULL DEFAULT '',
    ADD COLUMN token_url         text NOT NULL DEFAULT '',
    ADD COLUMN revocation_url    text NOT NULL DEFAULT '',
    ADD COLUMN issuer_url        text NOT NULL DEFAULT '';
UPDATE oauth2_token_revocations r
SET kind = p.kind, client_id = p.client_id, client_secret_enc = p.client_secret_enc, url = p.url,
    token_url = p.token_url, revocation_url = p.revocation_url, issuer_url = p.issuer_url
FROM oauth2_providers p WHERE p.id = r.provider_id;
ALTER TABLE oauth2_token_revocations ADD CONSTRAINT oauth2_token_revocations_kind_check
    CHECK (kind IN ('gitlab', 'github', 'generic_oauth2', 'generic_oidc'));

-- A token refresh holds a lease on its connection instead of a row lock, so
-- no database connection waits on the provider's answer: one refresh per
-- connection at a time, across processes; an expired lease (its holder died)
-- is taken over.
ALTER TABLE oauth2_connections
    ADD COLUMN refresh_lease_id    uuid,
    ADD COLUMN refresh_lease_until timestamptz;

-- +goose Down
ALTER TABLE oauth2_connections DROP COLUMN refresh_lease_until, DROP COLUMN refresh_lease_id;
DELETE FROM oauth2_token_revocations r WHERE NOT EXISTS (SELECT 1 FROM oauth2_providers p WHERE p.id = r.provider_id);
ALTER TABLE oauth2_token_revocations
    DROP CONSTRAINT oauth2_token_revocations_kind_check,
    DROP COLUMN kind, DROP COLUMN client_id, DROP COLUMN client_secret_enc, DROP COLUMN url,
    DROP COLUMN token_url, DROP COLUMN revocation_url, DROP COLUMN issuer_url,
    ADD CONSTRAINT oauth2_token_revocations_provider_id_fkey
        FOREIGN KEY (provider_id) REFERENCES oauth2_providers (id) ON DELETE CASCADE;
DROP INDEX oauth2_states_user_id_idx;
