-- +goose Up
-- OAuth2 providers that users connect to. Client secrets are stored encrypted
-- (see app/secret.go), never in plain text.
CREATE TABLE oauth2_providers (
    id                text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    kind              text NOT NULL CHECK (kind IN ('gitlab', 'github', 'generic_oauth2', 'generic_oidc')),
    display_name      text NOT NULL,
    client_id         text NOT NULL,
    client_secret_enc bytea,
    scope             text NOT NULL DEFAULT '',
    url               text NOT NULL DEFAULT '',
    use_pkce          boolean NOT NULL DEFAULT true,
    authorization_url text NOT NULL DEFAULT '',
    token_url         text NOT NULL DEFAULT '',
    revocation_url    text NOT NULL DEFAULT '',
    issuer_url        text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE resource_pools (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL,
    public             boolean NOT NULL DEFAULT false,
    is_default         boolean NOT NULL DEFAULT false,
    -- RESTRICT: a provider that a pool links cannot be deleted (the API answers 409).
    remote_provider_id text REFERENCES oauth2_providers (id) ON DELETE RESTRICT,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX resource_pools_remote_provider_id_idx ON resource_pools (remote_provider_id);

-- Grants made by hand by an admin. Kept apart from provider-derived access so
-- that a disconnect can never remove them.
CREATE TABLE resource_pool_viewers (
    resource_pool_id bigint NOT NULL REFERENCES resource_pools (id) ON DELETE CASCADE,
    user_id          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (resource_pool_id, user_id)
);

CREATE TABLE oauth2_connections (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     text NOT NULL,
    provider_id text NOT NULL REFERENCES oauth2_providers (id) ON DELETE CASCADE,
    status      text NOT NULL CHECK (status IN ('pending', 'connected', 'error')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, provider_id)
);
CREATE INDEX oauth2_connections_provider_id_idx ON oauth2_connections (provider_id, user_id) WHERE status = 'connected';

-- Generations come from one sequence so that a key that is deleted and created
-- again can never reuse a generation an old job still holds.
CREATE SEQUENCE sync_generation_seq;

-- One row per sync key: a connection (provider_id, user_id) or a resource pool.
-- generation is bumped in every transaction that changes the key's desired
-- relationships; a worker records applied_generation only if generation did
-- not move while it wrote (the fence).
CREATE TABLE sync_state (
    kind                 text NOT NULL CHECK (kind IN ('connection', 'pool')),
    key_id               text NOT NULL,
    provider_id          text,
    user_id              text,
    resource_pool_id     bigint,
    generation           bigint NOT NULL,
    applied_generation   bigint NOT NULL DEFAULT 0,
    changed_at           timestamptz NOT NULL DEFAULT now(),
    -- When the oldest change not yet applied was made, and whether a revocation
    -- is among the unapplied changes (revocations are watched more closely).
    pending_since        timestamptz,
    revoke_pending_since timestamptz,
    applied_at           timestamptz,
    zedtoken             text,
    last_error           text,
    last_error_at        timestamptz,
    PRIMARY KEY (kind, key_id)
);
CREATE INDEX sync_state_pending_idx ON sync_state (pending_since) WHERE pending_since IS NOT NULL;
CREATE INDEX sync_state_revoke_pending_idx ON sync_state (revoke_pending_since) WHERE revoke_pending_since IS NOT NULL;

-- One row per reconciler run, for operators (tether status) and metrics.
CREATE TABLE reconcile_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    dry_run     boolean NOT NULL,
    checked     bigint NOT NULL,
    missing     bigint NOT NULL,
    extra       bigint NOT NULL,
    repaired    bigint NOT NULL,
    error       text
);

-- +goose Down
DROP TABLE reconcile_runs;
DROP TABLE sync_state;
DROP SEQUENCE sync_generation_seq;
DROP TABLE oauth2_connections;
DROP TABLE resource_pool_viewers;
DROP TABLE resource_pools;
DROP TABLE oauth2_providers;
