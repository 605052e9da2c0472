// Package jobs applies Postgres's truth to SpiceDB: the River job args and
// workers of the transactional outbox (sync*.go: enqueue, read, write,
// fence; batch.go: group commit), the token revocation worker, the
// reconciler (reconcile.go) and the metrics. The SpiceDB client itself is
// jobs/spicedb.
package jobs

import "github.com/tetherhq/tether/jobs/spicedb"

// Every relationship Tether owns belongs to exactly one sync key: a
// connection (provider, user) or a pool. Keys are what jobs name, what
// generations count and what the fence guards.

// Sync key kinds, as stored in sync_state.kind.
const (
	KeyKindConnection = "connection"
	KeyKindPool       = "pool"
)

// syncKey names one key.
type syncKey struct{ kind, keyID string }

// ConnectionKeyID is the sync key of a user's connection to a provider. Provider
// ids are slugs without '/', so the first '/' separates the two parts.
func ConnectionKeyID(providerID, userID string) string {
	return providerID + "/" + spicedb.SubjectID(userID)
}
