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
	Sync       SyncStatus       `json:"sync"`
	CreatedAt  time.Time        `json:"created_at"`
	UpdatedAt  time.Time        `json:"updated_at"`
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
)

// SyncStatus says whether a key's newest change is applied in SpiceDB.
type SyncStatus struct {
	// State is synced, pending (on its way) or retrying (the last attempt
	// failed; LastError says why).
	State     SyncState  `json:"state"`
	AppliedAt *time.Time `json:"applied_at"`
	LastError *string    `json:"last_error"`
}

func syncStatus(generation, applied *int64, appliedAt *time.Time, lastError *string) SyncStatus {
	st := SyncStatus{State: SyncSynced, AppliedAt: appliedAt, LastError: lastError}
	switch {
	case generation == nil:
		st.State = SyncPending
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
