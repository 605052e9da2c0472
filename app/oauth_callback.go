package app

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/oauth2"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// CallbackInput is what the provider's redirect to the callback carries.
type CallbackInput struct {
	State, Code, Error string
	// Issuer is the iss parameter (RFC 9207); nil when absent.
	Issuer *string
}

var errIssuerMismatch = Errorf(EINVALID, "The authorization response does not come from the provider this authorization was started with. Start again.")

// Callback completes a flow. A response whose iss is not the issuer of the
// state's provider is refused before anything else (RFC 9207: a mix-up of
// providers sharing the one redirect URI) and changes nothing: the state
// stays for the real response. Otherwise the state is consumed first, so it
// can never be used twice, even when the rest fails. An authorization that
// ends without connecting ends its pending connection too.
func (s *Service) Callback(ctx context.Context, user *User, browserBinding string, in CallbackInput) (*CallbackResult, error) {
	provider, endpoints, err := s.checkIssuer(ctx, in)
	if err != nil {
		return nil, err
	}
	st, err := s.consumeState(ctx, user, browserBinding, in.State)
	if err != nil {
		return nil, err
	}
	fail := func(errCode string, appErr *Error) (*CallbackResult, error) {
		if err := s.endAuthorization(ctx, user.ID, st.ProviderID); err != nil {
			return nil, err
		}
		if st.NextUrl != "" {
			return &CallbackResult{NextURL: WithError(st.NextUrl, errCode)}, nil
		}
		return nil, appErr
	}
	switch {
	case time.Now().After(st.ExpiresAt):
		return fail("authorization_expired", errStateExpired)
	case in.Error != "":
		// error_description is the provider's free text: dropped, not echoed.
		errCode := in.Error
		if !providerErrorPattern.MatchString(errCode) {
			errCode = "provider_error"
		}
		return fail(errCode, Errorf(EINVALID, "The provider refused the authorization (%s).", errCode))
	case in.Code == "" || len(in.Code) > 4096:
		return fail("invalid_request", Errorf(EINVALID, "The callback carries no authorization code."))
	}
	tok, err := s.exchange(ctx, st, provider, endpoints, in.Code)
	if appErr := (*Error)(nil); errors.As(err, &appErr) {
		return fail("exchange_failed", appErr)
	} else if err != nil {
		return nil, err
	}
	identity := s.OAuth.Client.IdentityOf(ctx, provider, endpoints, tok)
	if err := s.storeAuthorization(ctx, user, st.ProviderID, tok, identity); err != nil {
		return nil, err
	}
	return &CallbackResult{NextURL: st.NextUrl}, nil
}

// checkIssuer finds the provider the callback's state was made for, without
// consuming the state, and applies RFC 9207 to the response.
func (s *Service) checkIssuer(ctx context.Context, in CallbackInput) (*oauthclient.Provider, oauthclient.Endpoints, error) {
	stateHash, err := ParseState(in.State)
	if err != nil {
		return nil, oauthclient.Endpoints{}, err
	}
	peeked, err := queries.StatePeek(ctx, s.DB, stateHash)
	if err != nil {
		return nil, oauthclient.Endpoints{}, notFoundAs(err, errInvalidState)
	}
	provider, endpoints, err := s.oauthProvider(ctx, s.DB, peeked.ProviderID)
	if err != nil {
		return nil, oauthclient.Endpoints{}, err
	}
	if !issuerMatches(endpoints, in.Issuer) {
		return nil, oauthclient.Endpoints{}, errIssuerMismatch
	}
	return provider, endpoints, nil
}

// issuerMatches applies RFC 9207: when the provider's issuer is known, a
// response's iss must equal it; when its metadata promises iss, it must be
// there.
func issuerMatches(e oauthclient.Endpoints, iss *string) bool {
	switch {
	case iss == nil:
		return !e.IssRequired
	case e.Issuer == "":
		return true
	}
	return subtle.ConstantTimeCompare([]byte(*iss), []byte(e.Issuer)) == 1
}

// consumeState takes the callback's state out of the database (single use)
// and checks that it belongs to this user and browser.
func (s *Service) consumeState(ctx context.Context, user *User, browserBinding, state string) (*dbsqlc.Oauth2State, error) {
	stateHash, err := ParseState(state)
	if err != nil {
		return nil, err
	}
	var st *dbsqlc.Oauth2State
	err = s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		st, err = queries.StateConsume(ctx, tx, stateHash)
		if errors.Is(err, pgx.ErrNoRows) {
			return errInvalidState
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(st.UserID), []byte(user.ID)) != 1 ||
		subtle.ConstantTimeCompare(st.BrowserHash, hashToken(browserBinding)) != 1 {
		return nil, errInvalidState
	}
	return st, nil
}

// errExchangeFailed is the provider refusing the code (or unreachable).
var errExchangeFailed = Errorf(EINVALID, "The provider did not accept the authorization code.")

// exchange trades the authorization code for tokens, with the state's PKCE
// verifier. A refusal is errExchangeFailed (with its cause, without the
// provider's text); anything else is Tether's own failure.
func (s *Service) exchange(ctx context.Context, st *dbsqlc.Oauth2State, provider *oauthclient.Provider, endpoints oauthclient.Endpoints, code string) (*oauth2.Token, error) {
	cfg := s.OAuth.Client.Config(provider, endpoints, s.redirectURL())
	var opts []oauth2.AuthCodeOption
	if len(st.CodeVerifierEnc) > 0 {
		verifier, _, err := s.Keys.Decrypt(st.CodeVerifierEnc, keyring.StateAAD(st.StateHash))
		if err != nil {
			return nil, fmt.Errorf("error decrypting code verifier: %w", err)
		}
		opts = append(opts, oauth2.VerifierOption(string(verifier)))
	}
	tok, err := cfg.Exchange(s.OAuth.Client.Context(ctx), code, opts...)
	if err != nil {
		return nil, &wrappedError{app: errExchangeFailed, cause: oauthclient.Describe(err)}
	}
	return tok, nil
}

// storeAuthorization records a completed authorization: the connection is
// connected with the new tokens and identity, and the refresh token they
// replace (a re-authorization) is revoked at the provider through the
// outbox.
func (s *Service) storeAuthorization(ctx context.Context, user *User, providerID string, tok *oauth2.Token, identity oauthclient.Identity) error {
	return s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		replaced, err := s.replacedToken(ctx, tx, user.ID, providerID, tok)
		if err != nil {
			return err
		}
		row, err := queries.ConnectionUpsertStatus(ctx, tx, &dbsqlc.ConnectionUpsertStatusParams{UserID: user.ID, ProviderID: providerID, Status: string(StatusConnected)})
		if err != nil {
			if isForeignKeyViolation(err) {
				return Errorf(ENOTFOUND, "The provider was deleted meanwhile.")
			}
			return fmt.Errorf("error writing connection: %w", err)
		}
		if err := s.storeToken(ctx, tx, row.ID, tok); err != nil {
			return err
		}
		if err := storeIdentity(ctx, tx, row, identity); err != nil {
			return err
		}
		if len(replaced) > 0 {
			provider, err := queries.ProviderGetByID(ctx, tx, providerID)
			if err != nil {
				return notFound(err, "provider")
			}
			if err := s.queueRevocations(ctx, tx, provider, replaced); err != nil {
				return err
			}
		}
		return s.Enqueuer.Connection(ctx, tx, providerID, user.ID, false)
	})
}

// replacedToken locks the user's connection to the provider, if any, and
// returns what of its stored token the new one replaces.
func (s *Service) replacedToken(ctx context.Context, tx pgx.Tx, userID, providerID string, tok *oauth2.Token) ([]revocation, error) {
	old, err := queries.ConnectionGetByUserProviderForUpdate(ctx, tx, &dbsqlc.ConnectionGetByUserProviderForUpdateParams{UserID: userID, ProviderID: providerID})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("error reading connection: %w", err)
	}
	r, ok, err := s.tokenToRevoke(old.ID, old.TokenEnc)
	if err != nil || !ok || r.token == tok.RefreshToken || r.token == tok.AccessToken {
		return nil, err
	}
	return []revocation{r}, nil
}

// notFoundAs maps "no rows" to appErr.
func notFoundAs(err error, appErr *Error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return appErr
	}
	return unavailable(fmt.Errorf("error reading: %w", err))
}
