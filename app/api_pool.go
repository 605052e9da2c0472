package app

import (
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// Pool is a resource pool as the API shows it.
type Pool struct {
	ID      int64   `json:"id"`
	Name    string  `json:"name"`
	Public  bool    `json:"public"`
	Default bool    `json:"default"`
	Remote  *Remote `json:"remote"`
	// Sync says whether the pool's own relationships (link, public, manual
	// viewers) are applied in SpiceDB yet.
	Sync      SyncStatus `json:"sync"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
}

// Remote links a pool to the provider whose connected users may view it.
type Remote struct {
	ProviderID string `json:"provider_id"`
}

func poolFromRow(p *dbsqlc.ResourcePool) *Pool {
	out := &Pool{ID: p.ID, Name: p.Name, Public: p.Public, Default: p.IsDefault, CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt}
	if p.RemoteProviderID != nil {
		out.Remote = &Remote{ProviderID: *p.RemoteProviderID}
	}
	return out
}

// PoolInput creates a pool (POST) or updates the fields given (PATCH).
// Remote distinguishes absent (keep) from null (unlink).
type PoolInput struct {
	Name    *string          `json:"name"`
	Public  *bool            `json:"public"`
	Default *bool            `json:"default"`
	Remote  Optional[Remote] `json:"remote"`
}

// PoolViewer is a user granted a pool by hand.
type PoolViewer struct {
	ID string `json:"id"`
}

// ValidUserID checks a user id given in a request (a manual viewer).
func ValidUserID(id string) error {
	if id == "" || len(id) > spicedb.MaxUserIDLen || !utf8.ValidString(id) {
		return Errorf(EINVALID, "user id must be 1 to %d bytes of UTF-8", spicedb.MaxUserIDLen)
	}
	for _, r := range id {
		if unicode.IsControl(r) {
			return Errorf(EINVALID, "user id must not contain control characters")
		}
	}
	return nil
}
