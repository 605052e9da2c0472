package app

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
)

// RotationReport counts what key rotation re-encrypted.
type RotationReport struct {
	Checked       int `json:"checked"`
	ReEncrypted   int `json:"re_encrypted"`
	Undecryptable int `json:"undecryptable"`
}

// rotationPage is how many secrets one read of a table returns.
const rotationPage = 500

// RotateKeys re-encrypts every secret at rest that is not under the key
// ring's primary key. Each value is updated only if it did not change
// meanwhile (compare-and-set), so it is safe while Tether serves. Values no
// key decrypts are counted and left alone.
func (s *Service) RotateKeys(ctx context.Context) (*RotationReport, error) {
	r := &RotationReport{}
	for _, table := range []func(context.Context, *RotationReport) error{
		s.rotateClientSecrets,
		s.rotateTokens,
		s.rotateCodeVerifiers,
		s.rotateTokensAwaitingRevocation,
		s.rotateClientSecretsAwaitingRevocation,
	} {
		if err := table(ctx, r); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// rotateClientSecrets re-encrypts the client secrets.
func (s *Service) rotateClientSecrets(ctx context.Context, r *RotationReport) error {
	return rotate(ctx, s, r, "client secrets", "",
		func(after string) ([]*dbsqlc.KeysProviderSecretsRow, error) {
			return queries.KeysProviderSecrets(ctx, s.DB, &dbsqlc.KeysProviderSecretsParams{AfterID: after, MaxRows: rotationPage})
		},
		func(row *dbsqlc.KeysProviderSecretsRow) (string, []byte, []byte) {
			return row.ID, row.ClientSecretEnc, keyring.ClientSecretAAD(row.ID)
		},
		func(row *dbsqlc.KeysProviderSecretsRow, enc []byte) error {
			return queries.KeysProviderSecretSet(ctx, s.DB, &dbsqlc.KeysProviderSecretSetParams{ClientSecretEnc: enc, ID: row.ID, OldEnc: row.ClientSecretEnc})
		})
}

// rotateTokens re-encrypts the tokens.
func (s *Service) rotateTokens(ctx context.Context, r *RotationReport) error {
	return rotate(ctx, s, r, "tokens", uuid.Nil,
		func(after uuid.UUID) ([]*dbsqlc.KeysConnectionTokensRow, error) {
			return queries.KeysConnectionTokens(ctx, s.DB, &dbsqlc.KeysConnectionTokensParams{AfterID: after, MaxRows: rotationPage})
		},
		func(row *dbsqlc.KeysConnectionTokensRow) (uuid.UUID, []byte, []byte) {
			return row.ID, row.TokenEnc, keyring.TokenAAD(row.ID.String())
		},
		func(row *dbsqlc.KeysConnectionTokensRow, enc []byte) error {
			return queries.KeysConnectionTokenSet(ctx, s.DB, &dbsqlc.KeysConnectionTokenSetParams{TokenEnc: enc, ID: row.ID, OldEnc: row.TokenEnc})
		})
}

// rotateCodeVerifiers re-encrypts the code verifiers.
func (s *Service) rotateCodeVerifiers(ctx context.Context, r *RotationReport) error {
	return rotate(ctx, s, r, "code verifiers", []byte{},
		func(after []byte) ([]*dbsqlc.KeysStateVerifiersRow, error) {
			return queries.KeysStateVerifiers(ctx, s.DB, &dbsqlc.KeysStateVerifiersParams{AfterHash: after, MaxRows: rotationPage})
		},
		func(row *dbsqlc.KeysStateVerifiersRow) ([]byte, []byte, []byte) {
			return row.StateHash, row.CodeVerifierEnc, keyring.StateAAD(row.StateHash)
		},
		func(row *dbsqlc.KeysStateVerifiersRow, enc []byte) error {
			return queries.KeysStateVerifierSet(ctx, s.DB, &dbsqlc.KeysStateVerifierSetParams{CodeVerifierEnc: enc, StateHash: row.StateHash, OldEnc: row.CodeVerifierEnc})
		})
}

// rotateTokensAwaitingRevocation re-encrypts the tokens awaiting revocation.
func (s *Service) rotateTokensAwaitingRevocation(ctx context.Context, r *RotationReport) error {
	return rotate(ctx, s, r, "tokens awaiting revocation", uuid.Nil,
		func(after uuid.UUID) ([]*dbsqlc.KeysRevocationTokensRow, error) {
			return queries.KeysRevocationTokens(ctx, s.DB, &dbsqlc.KeysRevocationTokensParams{AfterID: after, MaxRows: rotationPage})
		},
		func(row *dbsqlc.KeysRevocationTokensRow) (uuid.UUID, []byte, []byte) {
			return row.ID, row.TokenEnc, keyring.RevocationAAD(row.ID.String())
		},
		func(row *dbsqlc.KeysRevocationTokensRow, enc []byte) error {
			return queries.KeysRevocationTokenSet(ctx, s.DB, &dbsqlc.KeysRevocationTokenSetParams{TokenEnc: enc, ID: row.ID, OldEnc: row.TokenEnc})
		})
}

// rotateClientSecretsAwaitingRevocation re-encrypts the client secrets awaiting revocation.
func (s *Service) rotateClientSecretsAwaitingRevocation(ctx context.Context, r *RotationReport) error {
	return rotate(ctx, s, r, "client secrets awaiting revocation", uuid.Nil,
		func(after uuid.UUID) ([]*dbsqlc.KeysRevocationSecretsRow, error) {
			return queries.KeysRevocationSecrets(ctx, s.DB, &dbsqlc.KeysRevocationSecretsParams{AfterID: after, MaxRows: rotationPage})
		},
		func(row *dbsqlc.KeysRevocationSecretsRow) (uuid.UUID, []byte, []byte) {
			return row.ID, row.ClientSecretEnc, keyring.ClientSecretAAD(row.ProviderID)
		},
		func(row *dbsqlc.KeysRevocationSecretsRow, enc []byte) error {
			return queries.KeysRevocationSecretSet(ctx, s.DB, &dbsqlc.KeysRevocationSecretSetParams{ClientSecretEnc: enc, ID: row.ID, OldEnc: row.ClientSecretEnc})
		})
}

// rotate is the one rotation loop: it pages through a table by its key
// (cursor), re-encrypts each value not under the primary key and writes it
// back compare-and-set.
func rotate[Row any, Cursor any](ctx context.Context, s *Service, r *RotationReport, what string, after Cursor,
	page func(after Cursor) ([]Row, error), secret func(Row) (cursor Cursor, enc, aad []byte), set func(Row, []byte) error,
) error {
	for {
		rows, err := page(after)
		if err != nil {
			return fmt.Errorf("error reading %s: %w", what, err)
		}
		for _, row := range rows {
			cursor, enc, aad := secret(row)
			if fresh := s.reencrypt(r, enc, aad); fresh != nil {
				if err := set(row, fresh); err != nil {
					return fmt.Errorf("error re-encrypting %s: %w", what, err)
				}
			}
			after = cursor
		}
		if len(rows) < rotationPage {
			return ctx.Err()
		}
	}
}

// reencrypt returns enc under the primary key, or nil when nothing is to do.
func (s *Service) reencrypt(r *RotationReport, enc, aad []byte) []byte {
	r.Checked++
	plain, stale, err := s.Keys.Decrypt(enc, aad)
	if err != nil {
		r.Undecryptable++
		return nil
	}
	if !stale {
		return nil
	}
	out, err := s.Keys.Encrypt(plain, aad)
	if err != nil {
		return nil
	}
	r.ReEncrypted++
	return out
}
