-- +goose Up
-- At most one default pool (the API answers 409 for a second one).
CREATE UNIQUE INDEX resource_pools_one_default_idx ON resource_pools ((true)) WHERE is_default;

-- +goose Down
DROP INDEX resource_pools_one_default_idx;
