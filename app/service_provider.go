package app

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/internal/oauthclient"
)

func (s *Service) providerParams(in *ProviderInput, cur *dbsqlc.Oauth2Provider) (*dbsqlc.ProviderInsertParams, error) {
	p := mergeProvider(in, cur)
	if err := s.validateProvider(p); err != nil {
		return nil, err
	}
	if in.ClientSecret != nil {
		if err := checkText("client_secret", *in.ClientSecret, 0, 2000); err != nil {
			return nil, err
		}
		p.ClientSecretEnc = nil
		if *in.ClientSecret != "" {
			enc, err := s.Keys.Encrypt([]byte(*in.ClientSecret), keyring.ClientSecretAAD(p.ID))
			if err != nil {
				return nil, err
			}
			p.ClientSecretEnc = enc
		}
	}
	return p, nil
}

// mergeProvider lays the fields given over the current row (PATCH) or the
// defaults (POST).
func mergeProvider(in *ProviderInput, cur *dbsqlc.Oauth2Provider) *dbsqlc.ProviderInsertParams {
	p := &dbsqlc.ProviderInsertParams{UsePkce: true}
	if cur != nil {
		p = &dbsqlc.ProviderInsertParams{
			ID: cur.ID, Kind: cur.Kind, DisplayName: cur.DisplayName, ClientID: cur.ClientID,
			ClientSecretEnc: cur.ClientSecretEnc, Scope: cur.Scope, Url: cur.Url, UsePkce: cur.UsePkce,
			AuthorizationUrl: cur.AuthorizationUrl, TokenUrl: cur.TokenUrl, RevocationUrl: cur.RevocationUrl,
			IssuerUrl: cur.IssuerUrl,
		}
	} else if in.ID != nil {
		p.ID = *in.ID
	}
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	set(&p.Kind, in.Kind)
	set(&p.DisplayName, in.DisplayName)
	set(&p.ClientID, in.ClientID)
	set(&p.Scope, in.Scope)
	set(&p.Url, in.URL)
	set(&p.AuthorizationUrl, in.AuthorizationURL)
	set(&p.TokenUrl, in.TokenURL)
	set(&p.RevocationUrl, in.RevocationURL)
	set(&p.IssuerUrl, in.IssuerURL)
	if in.UsePKCE != nil {
		p.UsePkce = *in.UsePKCE
	}
	return p
}

// validateProvider checks a provider as it would be stored.
func (s *Service) validateProvider(p *dbsqlc.ProviderInsertParams) error {
	if !slugPattern.MatchString(p.ID) {
		return Errorf(EINVALID, "id must be a slug: lower-case letters, digits, - and _, at most 63 characters, starting with a letter or digit")
	}
	if !slices.Contains(oauthclient.Kinds, oauthclient.Kind(p.Kind)) {
		return Errorf(EINVALID, "kind must be one of gitlab, github, generic_oauth2, generic_oidc")
	}
	for _, f := range []struct {
		name, value    string
		minLen, maxLen int
	}{{"display_name", p.DisplayName, 1, 200}, {"client_id", p.ClientID, 1, 500}, {"scope", p.Scope, 0, 1000}} {
		if err := checkText(f.name, f.value, f.minLen, f.maxLen); err != nil {
			return err
		}
	}
	for _, f := range []struct{ name, value string }{
		{"url", p.Url}, {"authorization_url", p.AuthorizationUrl}, {"token_url", p.TokenUrl},
		{"revocation_url", p.RevocationUrl}, {"issuer_url", p.IssuerUrl},
	} {
		if err := checkURL(f.name, f.value); err != nil {
			return err
		}
		if err := s.checkURLSecure(f.name, f.value); err != nil {
			return err
		}
	}
	switch oauthclient.Kind(p.Kind) {
	case oauthclient.KindGitLab:
		if p.Url == "" {
			return Errorf(EINVALID, "url is required for kind gitlab (the GitLab instance, e.g. https://gitlab.com)")
		}
	case oauthclient.KindGenericOAuth2:
		if p.AuthorizationUrl == "" || p.TokenUrl == "" {
			return Errorf(EINVALID, "authorization_url and token_url are required for kind generic_oauth2")
		}
	case oauthclient.KindGenericOIDC:
		if p.IssuerUrl == "" {
			return Errorf(EINVALID, "issuer_url is required for kind generic_oidc")
		}
	}
	return nil
}

// ProviderCreate creates a provider.
func (s *Service) ProviderCreate(ctx context.Context, in *ProviderInput) (*Provider, error) {
	params, err := s.providerParams(in, nil)
	if err != nil {
		return nil, err
	}
	var out *Provider
	err = s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		row, err := queries.ProviderInsert(ctx, tx, params)
		if err != nil {
			if isUniqueViolation(err) {
				return Errorf(ECONFLICT, "A provider with id %q exists already.", params.ID)
			}
			return fmt.Errorf("error inserting provider: %w", err)
		}
		out = providerFromRow(row)
		return nil
	})
	return out, err
}

// ProviderList lists every provider.
func (s *Service) ProviderList(ctx context.Context) ([]*Provider, error) {
	rows, err := queries.ProviderList(ctx, s.DB)
	if err != nil {
		return nil, unavailable(fmt.Errorf("error listing providers: %w", err))
	}
	out := make([]*Provider, len(rows))
	for i, r := range rows {
		out[i] = providerFromRow(r)
	}
	return out, nil
}

// ProviderGet returns one provider.
func (s *Service) ProviderGet(ctx context.Context, id string) (*Provider, error) {
	row, err := queries.ProviderGetByID(ctx, s.DB, id)
	if err != nil {
		return nil, notFound(err, "provider")
	}
	return providerFromRow(row), nil
}

// ProviderUpdate changes the fields given. The id cannot change.
func (s *Service) ProviderUpdate(ctx context.Context, id string, in *ProviderInput) (*Provider, error) {
	if in.ID != nil && *in.ID != id {
		return nil, Errorf(EINVALID, "id cannot be changed")
	}
	var out *Provider
	err := s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		cur, err := queries.ProviderGetByIDForUpdate(ctx, tx, id)
		if err != nil {
			return notFound(err, "provider")
		}
		p, err := s.providerParams(in, cur)
		if err != nil {
			return err
		}
		if err := s.checkSecretFollowsEndpoints(in, cur, p); err != nil {
			return err
		}
		if clientChanged(cur, p) {
			if err := s.breakConnections(ctx, tx, cur); err != nil {
				return err
			}
		}
		row, err := queries.ProviderUpdate(ctx, tx, &dbsqlc.ProviderUpdateParams{
			ID: p.ID, Kind: p.Kind, DisplayName: p.DisplayName, ClientID: p.ClientID, ClientSecretEnc: p.ClientSecretEnc,
			Scope: p.Scope, Url: p.Url, UsePkce: p.UsePkce, AuthorizationUrl: p.AuthorizationUrl, TokenUrl: p.TokenUrl,
			RevocationUrl: p.RevocationUrl, IssuerUrl: p.IssuerUrl,
		})
		if err != nil {
			return fmt.Errorf("error updating provider: %w", err)
		}
		out = providerFromRow(row)
		return nil
	})
	return out, err
}

// ProviderDelete deletes a provider that no pool links, with its connections;
// their access and their tokens at the provider are revoked through the
// outbox (the revocations outlive the provider's row).
func (s *Service) ProviderDelete(ctx context.Context, id string) error {
	return s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		provider, err := queries.ProviderGetByIDForUpdate(ctx, tx, id)
		if err != nil {
			return notFound(err, "provider")
		}
		linked, err := queries.ProviderIsLinked(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("error checking pool links: %w", err)
		}
		if linked {
			return Errorf(ECONFLICT, "Resource pools link provider %q; unlink them first.", id)
		}
		conns, err := queries.ConnectionDeleteByProvider(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("error deleting connections: %w", err)
		}
		if err := s.queueRevocationsOf(ctx, tx, provider, conns); err != nil {
			return err
		}
		userIDs := make([]string, len(conns))
		for i, c := range conns {
			userIDs[i] = c.UserID
		}
		if _, err := queries.ProviderDelete(ctx, tx, id); err != nil {
			if isForeignKeyViolation(err) {
				return Errorf(ECONFLICT, "Resource pools link provider %q; unlink them first.", id)
			}
			return fmt.Errorf("error deleting provider: %w", err)
		}
		return s.Enqueuer.Connections(ctx, tx, id, userIDs, true)
	})
}
