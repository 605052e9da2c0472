package app

import (
	"time"

	"github.com/google/uuid"
)

// Connection is a user's connection to a provider, with whether its access
// is applied in SpiceDB yet.
type Connection struct {
	ID         uuid.UUID        `json:"id"`
	ProviderID string           `json:"provider_id"`
	Status     ConnectionStatus `json:"status"`
	// Account is the provider account the newest authorization connected,
	// as the provider names it (from the ID token or userinfo); nil when the
	// provider did not say.
	Account     *string    `json:"account"`
	Scopes      []string   `json:"scopes"`
	ConnectedAt *time.Time `json:"connected_at"`
	// AuthorizingUntil is set while an authorization started for this
	// connection is in flight: when its state expires.
	AuthorizingUntil *time.Time `json:"authorizing_until"`
	Sync             SyncStatus `json:"sync"`
	CreatedAt        time.Time  `json:"created_at"`
	UpdatedAt        time.Time  `json:"updated_at"`
}

// ConnectionStatus is where a connection stands.
type ConnectionStatus string

const (
	// StatusPending: an authorization is under way (a connect, or a
	// re-authorization of a connection that keeps its access meanwhile).
	StatusPending ConnectionStatus = "pending"
	// StatusConnected: tokens are stored; the user has the provider's pools.
	StatusConnected ConnectionStatus = "connected"
	// StatusError: the provider refused the tokens; access is revoked.
	StatusError ConnectionStatus = "error"
)

func (s ConnectionStatus) valid() bool {
	return s == StatusPending || s == StatusConnected || s == StatusError
}

// SyncState says whether a key's newest change is applied in SpiceDB.
type SyncState string

const (
	SyncPending  SyncState = "pending"  // on its way
	SyncSynced   SyncState = "synced"   // applied
	SyncRetrying SyncState = "retrying" // the last attempt failed; LastError says why
	// SyncNone: the key never had anything to apply (a connection that
	// never connected): nothing is waiting.
	SyncNone SyncState = "none"
)

// SyncStatus says whether a key's newest change is applied in SpiceDB.
type SyncStatus struct {
	// State is synced, pending (on its way), retrying (the last attempt
	// failed; LastError says why) or none (nothing was ever to be applied).
	State     SyncState  `json:"state"`
	AppliedAt *time.Time `json:"applied_at"`
	LastError *string    `json:"last_error"`
}

func syncStatus(generation, applied *int64, appliedAt *time.Time, lastError *string) SyncStatus {
	st := SyncStatus{State: SyncSynced, AppliedAt: appliedAt, LastError: lastError}
	switch {
	case generation == nil:
		st.State = SyncNone
	case applied != nil && *applied >= *generation:
		st.State = SyncSynced
		st.LastError = nil
	case lastError != nil:
		st.State = SyncRetrying
	default:
		st.State = SyncPending
	}
	return st
}
