package app

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// revocation is a token Tether drops and asks its provider to revoke (RFC
// 7009): on disconnect, on provider deletion, when a re-authorization
// replaces it, and when the provider's endpoints change.
type revocation struct {
	token string
	hint  string // refresh_token or access_token
}

// tokenToRevoke picks what to revoke of a stored token: the refresh token
// (revoking it ends the grant at most providers), else the access token.
func (s *Service) tokenToRevoke(connectionID uuid.UUID, tokenEnc []byte) (revocation, bool, error) {
	if len(tokenEnc) == 0 {
		return revocation{}, false, nil
	}
	tok, _, err := s.loadToken(connectionID, tokenEnc)
	if err != nil {
		return revocation{}, false, err
	}
	if tok.RefreshToken != "" {
		return revocation{token: tok.RefreshToken, hint: "refresh_token"}, true, nil
	}
	if tok.AccessToken != "" {
		return revocation{token: tok.AccessToken, hint: "access_token"}, true, nil
	}
	return revocation{}, false, nil
}

// canRevoke says whether provider p may have an RFC 7009 endpoint. OIDC
// providers' endpoints are discovered by the job.
func canRevoke(p *dbsqlc.Oauth2Provider) bool {
	kind := oauthclient.Kind(p.Kind)
	return kind != oauthclient.KindGitHub && !(kind == oauthclient.KindGenericOAuth2 && p.RevocationUrl == "")
}

// queueRevocations stores the tokens (encrypted, each bound to its own row)
// with provider p's client and endpoints as they are now, and inserts their
// River jobs, in tx: the revocations outlive p's row and any change to it.
func (s *Service) queueRevocations(ctx context.Context, tx pgx.Tx, p *dbsqlc.Oauth2Provider, revs []revocation) error {
	if len(revs) == 0 || !canRevoke(p) {
		return nil
	}
	rows := make([]*dbsqlc.RevocationInsertManyParams, len(revs))
	ids := make([]uuid.UUID, len(revs))
	for i, r := range revs {
		ids[i] = uuid.New()
		enc, err := s.Keys.Encrypt([]byte(r.token), keyring.RevocationAAD(ids[i].String()))
		if err != nil {
			return err
		}
		rows[i] = &dbsqlc.RevocationInsertManyParams{
			ID: ids[i], ProviderID: p.ID, TokenEnc: enc, TokenHint: r.hint,
			Kind: p.Kind, ClientID: p.ClientID, ClientSecretEnc: p.ClientSecretEnc, Url: p.Url,
			TokenUrl: p.TokenUrl, RevocationUrl: p.RevocationUrl, IssuerUrl: p.IssuerUrl,
		}
	}
	if _, err := queries.RevocationInsertMany(ctx, tx, rows); err != nil {
		return fmt.Errorf("error queueing token revocations: %w", err)
	}
	return s.Enqueuer.Revocations(ctx, tx, ids)
}

// queueRevocationsOf queues the revocation of each connection's stored token.
func (s *Service) queueRevocationsOf(ctx context.Context, tx pgx.Tx, p *dbsqlc.Oauth2Provider, conns []*dbsqlc.Oauth2Connection) error {
	if s.OAuth == nil || !canRevoke(p) {
		return nil
	}
	var revs []revocation
	for _, c := range conns {
		r, ok, err := s.tokenToRevoke(c.ID, c.TokenEnc)
		if err != nil {
			return err
		}
		if ok {
			revs = append(revs, r)
		}
	}
	return s.queueRevocations(ctx, tx, p, revs)
}
