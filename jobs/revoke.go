package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// RevokeTokenArgs names a queued token revocation. The token itself stays
// encrypted in oauth2_token_revocations: job args are visible in River UI.
type RevokeTokenArgs struct {
	RevocationID uuid.UUID `json:"revocation_id"`
}

func (RevokeTokenArgs) Kind() string { return "tether.revoke_token" }

func (RevokeTokenArgs) InsertOpts() river.InsertOpts {
	// About a day of attempts with the backoff below.
	return river.InsertOpts{MaxAttempts: 300, Priority: PriorityGrant}
}

// Revocations inserts the jobs of queued token revocations.
func (e *Enqueuer) Revocations(ctx context.Context, tx pgx.Tx, ids []uuid.UUID) error {
	if len(ids) == 0 {
		return nil
	}
	params := make([]river.InsertManyParams, len(ids))
	for i, id := range ids {
		params[i] = river.InsertManyParams{Args: RevokeTokenArgs{RevocationID: id}}
	}
	if _, err := e.River.InsertManyFastTx(ctx, tx, params); err != nil {
		return fmt.Errorf("error inserting token revocation jobs: %w", err)
	}
	return nil
}

// RevokeWorker revokes a dropped token at the provider that issued it (RFC
// 7009), retrying while the provider is unavailable. The revocation row
// carries that provider's client and endpoints as they were when the token
// was dropped: the provider may have been deleted, or pointed elsewhere,
// since.
type RevokeWorker struct {
	river.WorkerDefaults[RevokeTokenArgs]
	*Syncer
}

func (w *RevokeWorker) NextRetry(job *river.Job[RevokeTokenArgs]) time.Time {
	return time.Now().Add(Backoff(job.Attempt, 5*time.Minute))
}

func (w *RevokeWorker) Work(ctx context.Context, job *river.Job[RevokeTokenArgs]) error {
	q := dbsqlc.New()
	row, err := q.RevocationGet(ctx, w.DB, job.Args.RevocationID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // done already
	}
	if err != nil {
		return fmt.Errorf("error reading revocation: %w", err)
	}
	done := func() error {
		if err := q.RevocationDelete(ctx, w.DB, row.ID); err != nil {
			return fmt.Errorf("error deleting revocation: %w", err)
		}
		return nil
	}
	token, _, err := w.Keys.Decrypt(row.TokenEnc, keyring.RevocationAAD(row.ID.String()))
	if err != nil {
		return river.JobCancel(fmt.Errorf("error decrypting token to revoke: %w", err))
	}
	provider := &oauthclient.Provider{ID: row.ProviderID, Kind: oauthclient.Kind(row.Kind), ClientID: row.ClientID, URL: row.Url,
		TokenURL: row.TokenUrl, RevocationURL: row.RevocationUrl, IssuerURL: row.IssuerUrl}
	if len(row.ClientSecretEnc) > 0 {
		secret, _, err := w.Keys.Decrypt(row.ClientSecretEnc, keyring.ClientSecretAAD(row.ProviderID))
		if err != nil {
			return river.JobCancel(fmt.Errorf("error decrypting client secret: %w", err))
		}
		provider.ClientSecret = string(secret)
	}
	endpoints, err := w.OAuth.Endpoints(ctx, provider)
	if err != nil {
		return fmt.Errorf("error resolving provider endpoints: %w", err)
	}
	if endpoints.RevocationURL == "" {
		return done()
	}
	err = w.OAuth.Revoke(ctx, provider, endpoints, string(token), row.TokenHint)
	if err != nil && errors.Is(err, oauthclient.ErrTemporary) {
		return err // retried with backoff; the error text holds no token
	}
	if err != nil {
		w.Logger.WarnContext(ctx, "provider refused token revocation; giving up", "provider_id", row.ProviderID, "error", err)
	}
	return done()
}
