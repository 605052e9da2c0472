package app

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// checkURLSecure refuses a provider URL Tether would call over plain http:
// tokens and the client secret travel to these endpoints. Loopback hosts
// (a provider on the same machine) and dev mode are the exceptions.
func (s *Service) checkURLSecure(field, v string) error {
	allowHTTP := s.OAuth != nil && s.OAuth.AllowHTTP
	if v != "" && !oauthclient.AllowsURL(v, allowHTTP) {
		return Errorf(EUNPROCESSABLE, "%s must be an https URL (plain http only for localhost, 127.0.0.0/8 and [::1], or in dev mode)", field)
	}
	return nil
}

// clientChanged reports whether an update changes where Tether sends the
// client secret and tokens, or which client they belong to.
func clientChanged(cur *dbsqlc.Oauth2Provider, p *dbsqlc.ProviderInsertParams) bool {
	return cur.Kind != p.Kind || cur.ClientID != p.ClientID || cur.Url != p.Url ||
		cur.AuthorizationUrl != p.AuthorizationUrl || cur.TokenUrl != p.TokenUrl ||
		cur.RevocationUrl != p.RevocationUrl || cur.IssuerUrl != p.IssuerUrl
}

// checkSecretFollowsEndpoints refuses an update that points the provider
// elsewhere but keeps its secret: the secret was entered for the old
// endpoints, and whoever may PATCH (an admin, or a stolen admin token) must
// not be able to send it anywhere else.
func (s *Service) checkSecretFollowsEndpoints(in *ProviderInput, cur *dbsqlc.Oauth2Provider, p *dbsqlc.ProviderInsertParams) error {
	if in.ClientSecret == nil && clientChanged(cur, p) {
		return Errorf(EUNPROCESSABLE, "A change of kind, client_id, url, authorization_url, token_url, revocation_url or issuer_url "+
			"must carry client_secret too: a secret is never sent to an endpoint it was not entered for.")
	}
	return nil
}

// breakConnections drops every token of provider cur before its client or
// endpoints change: none may reach the new ones. Each connection moves to
// error (its access goes, through the outbox; users connect again), each
// dropped token is revoked where it was issued (cur's endpoints, with cur's
// secret), and authorizations in flight are cancelled (their code would be
// exchanged at the new token endpoint).
func (s *Service) breakConnections(ctx context.Context, tx pgx.Tx, cur *dbsqlc.Oauth2Provider) error {
	conns, err := queries.ConnectionDropTokensByProvider(ctx, tx, cur.ID)
	if err != nil {
		return fmt.Errorf("error dropping the provider's tokens: %w", err)
	}
	if _, err := queries.StateDeleteByProvider(ctx, tx, cur.ID); err != nil {
		return fmt.Errorf("error cancelling authorizations in flight: %w", err)
	}
	if _, err := queries.ConnectionDeletePendingByProvider(ctx, tx, cur.ID); err != nil {
		return fmt.Errorf("error ending pending connections: %w", err)
	}
	var revs []revocation
	userIDs := make([]string, 0, len(conns))
	for _, c := range conns {
		userIDs = append(userIDs, c.UserID)
		if s.OAuth == nil {
			continue
		}
		r, ok, err := s.tokenToRevoke(c.ID, c.TokenEnc)
		if err != nil {
			return err
		}
		if ok {
			revs = append(revs, r)
		}
	}
	if err := s.queueRevocations(ctx, tx, cur, revs); err != nil {
		return err
	}
	return s.Enqueuer.Connections(ctx, tx, cur.ID, userIDs, true)
}
