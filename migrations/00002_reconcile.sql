-- +goose Up
-- The SpiceDB object id of a user. Mirrors app.SubjectID (Go), which the tests
-- check against this function: ids made only of [A-Za-z0-9_|=+-] (at most 1024
-- bytes) are used as they are; anything else becomes '/' followed by the
-- unpadded base64url of its UTF-8 bytes. '/' never appears in a plain id, so
-- the mapping is reversible, and a sub of '*' can never become the wildcard.
-- +goose StatementBegin
CREATE FUNCTION tether_subject_id(user_id text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN user_id ~ '^[A-Za-z0-9_|=+-]+$' AND octet_length(user_id) <= 1024 THEN user_id
        ELSE '/' || translate(rtrim(replace(encode(convert_to(user_id, 'UTF8'), 'base64'), E'\n', ''), '='), '+/', '-_')
    END
$$;
-- +goose StatementEnd

-- Every relationship SpiceDB should hold, derived from the tables above, with
-- the sync key it belongs to. The workers compute the same per key in Go; a
-- test checks that both agree.
CREATE VIEW desired_relationships AS
SELECT 'oauth2_client'::text AS resource_type, c.provider_id AS resource_id, 'connected'::text AS relation,
       'user'::text AS subject_type, tether_subject_id(c.user_id) AS subject_id,
       'connection'::text AS key_kind, c.provider_id || '/' || tether_subject_id(c.user_id) AS key_id
FROM oauth2_connections c WHERE c.status = 'connected'
UNION ALL
SELECT 'resource_pool', p.id::text, 'provider', 'oauth2_client', p.remote_provider_id, 'pool', p.id::text
FROM resource_pools p WHERE p.remote_provider_id IS NOT NULL
UNION ALL
SELECT 'resource_pool', p.id::text, 'viewer', 'user', '*', 'pool', p.id::text
FROM resource_pools p WHERE p.public
UNION ALL
SELECT 'resource_pool', v.resource_pool_id::text, 'viewer', 'user', tether_subject_id(v.user_id), 'pool', v.resource_pool_id::text
FROM resource_pool_viewers v;

-- Scratch space of the reconciler: what SpiceDB holds, copied in, and the
-- difference. Unlogged (rebuilt on every run); one reconciler at a time holds
-- an advisory lock.
CREATE UNLOGGED TABLE reconcile_actual (
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    relation      text NOT NULL,
    subject_type  text NOT NULL,
    subject_id    text NOT NULL
);

CREATE UNLOGGED TABLE reconcile_diff (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation     text NOT NULL CHECK (operation IN ('touch', 'delete')),
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    relation      text NOT NULL,
    subject_type  text NOT NULL,
    subject_id    text NOT NULL,
    key_kind      text NOT NULL,
    key_id        text NOT NULL,
    generation    bigint NOT NULL,
    pending       boolean NOT NULL
);

ALTER TABLE sync_state ADD COLUMN stalled boolean NOT NULL DEFAULT false;

-- +goose Down
ALTER TABLE sync_state DROP COLUMN stalled;
DROP TABLE reconcile_diff;
DROP TABLE reconcile_actual;
DROP VIEW desired_relationships;
DROP FUNCTION tether_subject_id(text);
