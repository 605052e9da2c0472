-- +goose Up
-- One row per worker process (per River client, by River's client id): the
-- process renews expires_at every TETHER_WORKER_LEASE_TTL / 5 while it runs.
-- The running jobs of a process whose lease has expired are presumed dead and
-- taken over by the other workers at once (jobs/reclaim.go) instead of waiting
-- for River's rescuer. reclaimed_through is the newest attempted_at among the
-- jobs taken over from the process: when it renews again (it was only
-- stalled), it learns which of its jobs are no longer its own and writes
-- nothing more for them.
CREATE TABLE worker_leases (
    client_id         text PRIMARY KEY,
    host              text NOT NULL,
    pid               integer NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    renewed_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    reclaimed_through timestamptz NOT NULL
);
CREATE INDEX worker_leases_expires_at_idx ON worker_leases (expires_at);

-- +goose Down
DROP TABLE worker_leases;
