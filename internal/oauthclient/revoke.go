package oauthclient

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/oauth2"
)

// Revoke revokes a token at p's RFC 7009 endpoint (e.RevocationURL),
// authenticating the client as at its token endpoint. RFC 7009 answers 200
// for tokens that are already invalid.
func (c *Client) Revoke(ctx context.Context, p *Provider, e Endpoints, token, hint string) error {
	cfg, endpoint := buildConfig(p, e, ""), e.RevocationURL
	form := url.Values{"token": {token}, "token_type_hint": {hint}}
	if cfg.Endpoint.AuthStyle == oauth2.AuthStyleInParams {
		form.Set("client_id", cfg.ClientID)
		if cfg.ClientSecret != "" {
			form.Set("client_secret", cfg.ClientSecret)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("error building revocation request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if cfg.Endpoint.AuthStyle != oauth2.AuthStyleInParams {
		req.SetBasicAuth(url.QueryEscape(cfg.ClientID), url.QueryEscape(cfg.ClientSecret))
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		if !IsTemporary(err) {
			return fmt.Errorf("revocation request refused: %w", err)
		}
		return fmt.Errorf("%w: revocation request failed: %s", ErrTemporary, redactError(err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusOK:
		return nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return fmt.Errorf("%w: revocation endpoint answered %s", ErrTemporary, resp.Status)
	}
	return fmt.Errorf("revocation endpoint answered %s", resp.Status)
}
