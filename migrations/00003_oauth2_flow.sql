-- +goose Up
-- Tokens are one AES-256-GCM blob (see internal/keyring) bound to the row's
-- id; only the expiry is kept in clear, to know when to refresh.
ALTER TABLE oauth2_connections
    ADD COLUMN token_enc        bytea,
    ADD COLUMN token_expires_at timestamptz;

-- One row per authorization in flight: single use (deleted when the callback
-- arrives, whatever happens next), short-lived, bound to the user who started
-- it and to their browser (the hash of an HttpOnly cookie). Only hashes of
-- the state and of the cookie are stored.
CREATE TABLE oauth2_states (
    state_hash        bytea PRIMARY KEY,
    user_id           text NOT NULL,
    provider_id       text NOT NULL REFERENCES oauth2_providers (id) ON DELETE CASCADE,
    browser_hash      bytea NOT NULL,
    code_verifier_enc bytea,
    next_url          text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL
);
CREATE INDEX oauth2_states_expires_at_idx ON oauth2_states (expires_at);

-- Tokens of deleted connections waiting to be revoked at the provider
-- (RFC 7009) by a River job; the job's args carry only the row id.
CREATE TABLE oauth2_token_revocations (
    id          uuid PRIMARY KEY,
    provider_id text NOT NULL REFERENCES oauth2_providers (id) ON DELETE CASCADE,
    token_enc   bytea NOT NULL,
    token_hint  text NOT NULL CHECK (token_hint IN ('refresh_token', 'access_token')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE oauth2_token_revocations;
DROP TABLE oauth2_states;
ALTER TABLE oauth2_connections DROP COLUMN token_expires_at, DROP COLUMN token_enc;
