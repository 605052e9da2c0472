package app

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs"
)

// RotationReport counts what key rotation re-encrypted.
type RotationReport struct {
	Checked       int `json:"checked"`
	ReEncrypted   int `json:"re_encrypted"`
	Undecryptable int `json:"undecryptable"`
}

// RotateKeys re-encrypts every secret at rest that is not under the key
// ring's primary key. Each value is updated only if it did not change
// meanwhile (compare-and-set), so it is safe while Tether serves. Values no
// key decrypts are counted and left alone.
func (s *Service) RotateKeys(ctx context.Context) (*RotationReport, error) {
	r := &RotationReport{}
	q := dbsqlc.New()
	// reencrypt returns the new ciphertext, or nil when nothing is to do.
	reencrypt := func(enc, aad []byte) []byte {
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
	const page = 500
	for after := ""; ; {
		rows, err := q.KeysProviderSecrets(ctx, s.DB, &dbsqlc.KeysProviderSecretsParams{AfterID: after, MaxRows: page})
		if err != nil {
			return nil, fmt.Errorf("error reading client secrets: %w", err)
		}
		for _, row := range rows {
			if enc := reencrypt(row.ClientSecretEnc, secretAAD(row.ID)); enc != nil {
				if err := q.KeysProviderSecretSet(ctx, s.DB, &dbsqlc.KeysProviderSecretSetParams{ClientSecretEnc: enc, ID: row.ID, OldEnc: row.ClientSecretEnc}); err != nil {
					return nil, fmt.Errorf("error re-encrypting a client secret: %w", err)
				}
			}
			after = row.ID
		}
		if len(rows) < page {
			break
		}
	}
	for after := uuid.Nil; ; {
		rows, err := q.KeysConnectionTokens(ctx, s.DB, &dbsqlc.KeysConnectionTokensParams{AfterID: after, MaxRows: page})
		if err != nil {
			return nil, fmt.Errorf("error reading tokens: %w", err)
		}
		for _, row := range rows {
			if enc := reencrypt(row.TokenEnc, tokenAAD(row.ID)); enc != nil {
				if err := q.KeysConnectionTokenSet(ctx, s.DB, &dbsqlc.KeysConnectionTokenSetParams{TokenEnc: enc, ID: row.ID, OldEnc: row.TokenEnc}); err != nil {
					return nil, fmt.Errorf("error re-encrypting a token: %w", err)
				}
			}
			after = row.ID
		}
		if len(rows) < page {
			break
		}
	}
	for after := []byte{}; ; {
		rows, err := q.KeysStateVerifiers(ctx, s.DB, &dbsqlc.KeysStateVerifiersParams{AfterHash: after, MaxRows: page})
		if err != nil {
			return nil, fmt.Errorf("error reading code verifiers: %w", err)
		}
		for _, row := range rows {
			if enc := reencrypt(row.CodeVerifierEnc, row.StateHash); enc != nil {
				if err := q.KeysStateVerifierSet(ctx, s.DB, &dbsqlc.KeysStateVerifierSetParams{CodeVerifierEnc: enc, StateHash: row.StateHash, OldEnc: row.CodeVerifierEnc}); err != nil {
					return nil, fmt.Errorf("error re-encrypting a code verifier: %w", err)
				}
			}
			after = row.StateHash
		}
		if len(rows) < page {
			break
		}
	}
	for after := uuid.Nil; ; {
		rows, err := q.KeysRevocationTokens(ctx, s.DB, &dbsqlc.KeysRevocationTokensParams{AfterID: after, MaxRows: page})
		if err != nil {
			return nil, fmt.Errorf("error reading tokens awaiting revocation: %w", err)
		}
		for _, row := range rows {
			if enc := reencrypt(row.TokenEnc, jobs.RevocationAAD(row.ID)); enc != nil {
				if err := q.KeysRevocationTokenSet(ctx, s.DB, &dbsqlc.KeysRevocationTokenSetParams{TokenEnc: enc, ID: row.ID, OldEnc: row.TokenEnc}); err != nil {
					return nil, fmt.Errorf("error re-encrypting a token awaiting revocation: %w", err)
				}
			}
			after = row.ID
		}
		if len(rows) < page {
			break
		}
	}
	return r, nil
}
