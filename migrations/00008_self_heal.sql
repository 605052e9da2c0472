-- +goose Up
-- The key that signs Tether's SpiceDB writes: every WriteRelationships call
-- carries transaction metadata with a MAC under this key, which SpiceDB's
-- Watch echoes, so the watcher tells Tether's own changes from anyone
-- else's. Random (gen_random_uuid draws from the server's strong random
-- source), generated here, read only by Tether's processes: someone who can
-- write to SpiceDB but not read this database cannot forge it.
CREATE TABLE spicedb_write_key (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret bytea NOT NULL CHECK (octet_length(secret) >= 16)
);
INSERT INTO spicedb_write_key (secret)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- The SpiceDB watcher's state (one row, written by whichever process holds
-- the watch lease): the revision it processed last (the resume point), how
-- foreign writes are repaired right now, and who watches.
CREATE TABLE spicedb_watch (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    cursor       text,
    cursor_at    timestamptz,
    mode         text NOT NULL DEFAULT 'starting'
                 CHECK (mode IN ('starting', 'watch', 'periodic', 'reconnecting')),
    mode_reason  text,
    mode_since   timestamptz NOT NULL DEFAULT now(),
    holder       text,
    heartbeat_at timestamptz
);
INSERT INTO spicedb_watch DEFAULT VALUES;

-- +goose Down
DROP TABLE spicedb_watch;
DROP TABLE spicedb_write_key;
