-- +goose Up
-- What the connected-accounts page shows of a connection: the account it was
-- made with (a display name from the ID token or userinfo: never a token),
-- the scopes the provider granted, and when the newest authorization
-- completed (updated_at also moves on every token refresh).
ALTER TABLE oauth2_connections
    ADD COLUMN account           text,
    ADD COLUMN granted_scopes    text[] NOT NULL DEFAULT '{}',
    ADD COLUMN connected_at      timestamptz,
    -- Set while an authorization started for this row is in flight: the
    -- expiry of its newest state. A row that was never connected (pending)
    -- ends when this passes; a connected one simply stays connected.
    ADD COLUMN authorizing_until timestamptz;

UPDATE oauth2_connections SET connected_at = updated_at WHERE status = 'connected';
-- Pending rows left by authorizations abandoned before this migration end
-- like any other (see ConnectionDeleteAbandoned).
UPDATE oauth2_connections SET authorizing_until = updated_at + interval '10 minutes' WHERE status = 'pending';

-- Pending rows of abandoned authorizations, found by the sweep.
CREATE INDEX oauth2_connections_authorizing_idx ON oauth2_connections (authorizing_until)
    WHERE authorizing_until IS NOT NULL;

-- +goose Down
DROP INDEX oauth2_connections_authorizing_idx;
ALTER TABLE oauth2_connections
    DROP COLUMN authorizing_until,
    DROP COLUMN connected_at,
    DROP COLUMN granted_scopes,
    DROP COLUMN account;
