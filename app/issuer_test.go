package app_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/oauthtest"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/internal/jwks"
)

const issuerAudience = "tether-api"

// fakeClock drives the key set's intervals (refresh, maximum age, refetch
// rate limit) only; tokens are checked against real time.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// issuerBundle is Tether configured for production login: TETHER_AUTH_ISSUER
// and TETHER_AUTH_AUDIENCE, keys from a real issuer over HTTP discovery.
type issuerBundle struct {
	tt     *testenv.Tether
	issuer *oauthtest.Issuer
	clock  *fakeClock
	auth   *app.Authenticator
	url    string
	rsa    string // kid of an RS256 key
	ec     string // kid of an ES256 key
}

func setupIssuer(t *testing.T, down bool) *issuerBundle {
	t.Helper()
	is := oauthtest.StartIssuer(t)
	b := &issuerBundle{issuer: is, clock: &fakeClock{now: time.Now()}}
	b.rsa, b.ec = is.AddKey(t, jwa.RS256()), is.AddKey(t, jwa.ES256())
	is.SetDown(down)
	b.tt = testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true})
	cfg := config.Defaults()
	cfg.AuthIssuer, cfg.AuthAudience = is.URL, issuerAudience
	auth, err := app.NewAuthenticator(context.Background(), &cfg, app.AuthOptions{JWKS: jwks.Options{Now: b.clock.Now}})
	require.NoError(t, err, "an unreachable issuer is no reason to refuse to start")
	t.Cleanup(auth.Close)
	b.auth = auth
	server := app.NewServer(app.ServerDeps{
		Service: b.tt.Service, Auth: auth, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		SpiceDB: b.tt.SpiceDB, Cookie: "tether_token", Registry: prometheus.NewRegistry(), API: true,
	})
	ts := httptest.NewServer(server.Echo)
	t.Cleanup(ts.Close)
	b.url = ts.URL
	return b
}

// claims are a valid access token's: iss, aud, sub, iat, exp.
func (b *issuerBundle) claims(sub string) *jwt.Builder {
	return jwt.NewBuilder().Issuer(b.issuer.URL).Audience([]string{issuerAudience}).Subject(sub).
		IssuedAt(time.Now()).Expiration(time.Now().Add(time.Hour))
}

func (b *issuerBundle) sign(t *testing.T, kid string, alg jwa.SignatureAlgorithm, claims *jwt.Builder, headers map[string]any) string {
	t.Helper()
	tok, err := claims.Build()
	require.NoError(t, err)
	return b.issuer.Sign(t, kid, alg, tok, headers)
}

func (b *issuerBundle) get(t *testing.T, path, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, b.url+path, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body
}

func (b *issuerBundle) jwksFetches() int {
	_, n := b.issuer.Requests()
	return n
}

const connectionsPath = "/api/data/oauth2/connections"

// RS256 and ES256 tokens of the issuer are accepted; every deviation the
// contract names is a 401.
func TestIssuerTokens(t *testing.T) {
	t.Parallel()
	b := setupIssuer(t, false)
	valid := func(alg jwa.SignatureAlgorithm, kid string) string {
		return b.sign(t, kid, alg, b.claims("alice"), nil)
	}

	for name, token := range map[string]string{
		"RS256":         valid(jwa.RS256(), b.rsa),
		"ES256":         valid(jwa.ES256(), b.ec),
		"TypAtJWT":      b.sign(t, b.rsa, jwa.RS256(), b.claims("alice"), map[string]any{"typ": "at+jwt"}),
		"TypJWT":        b.sign(t, b.ec, jwa.ES256(), b.claims("alice"), map[string]any{"typ": "JWT"}),
		"AudienceAmong": b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").Audience([]string{"other", issuerAudience}), nil),
		"ExpiredWithinLeeway": b.sign(t, b.rsa, jwa.RS256(),
			b.claims("alice").IssuedAt(time.Now().Add(-time.Hour)).Expiration(time.Now().Add(-30*time.Second)), nil),
		"NotBeforeWithinLeeway": b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").NotBefore(time.Now().Add(30*time.Second)), nil),
		"NoKidOneKeyOfItsType":  b.sign(t, b.rsa, jwa.RS256(), b.claims("alice"), map[string]any{"kid": ""}),
		"NonceButTypedAccessToken": b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").Claim("nonce", "n"),
			map[string]any{"typ": "at+jwt"}),
	} {
		t.Run("Accepted_"+name, func(t *testing.T) {
			status, body := b.get(t, connectionsPath, token)
			require.Equal(t, http.StatusOK, status, string(body))
		})
	}

	rsaPublicPEM := func() []byte { // the RSA key as published, for an HS256 forgery
		set := fetchJWKS(t, b.issuer.URL+"/keys")
		key, ok := set.LookupKeyID(b.rsa)
		require.True(t, ok)
		var raw any
		require.NoError(t, jwk.Export(key, &raw))
		der, err := x509.MarshalPKIXPublicKey(raw)
		require.NoError(t, err)
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}()
	es384 := b.issuer.AddKey(t, jwa.ES384())
	ps256 := b.issuer.AddKey(t, jwa.PS256())
	refused := map[string]string{
		"WrongIssuer":         b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").Issuer("https://evil.example"), nil),
		"IssuerTrailingSlash": b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").Issuer(b.issuer.URL+"/"), nil),
		"NoIssuer": b.sign(t, b.rsa, jwa.RS256(), jwt.NewBuilder().Audience([]string{issuerAudience}).Subject("alice").
			Expiration(time.Now().Add(time.Hour)), nil),
		"WrongAudience":     b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").Audience([]string{"another-api"}), nil),
		"NoAudience":        b.sign(t, b.rsa, jwa.RS256(), jwt.NewBuilder().Issuer(b.issuer.URL).Subject("alice").Expiration(time.Now().Add(time.Hour)), nil),
		"MissingExp":        b.sign(t, b.rsa, jwa.RS256(), jwt.NewBuilder().Issuer(b.issuer.URL).Audience([]string{issuerAudience}).Subject("alice"), nil),
		"Expired":           b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").IssuedAt(time.Now().Add(-2*time.Hour)).Expiration(time.Now().Add(-2*time.Minute)), nil),
		"NotBeforeFuture":   b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").NotBefore(time.Now().Add(2*time.Minute)), nil),
		"IssuedInTheFuture": b.sign(t, b.ec, jwa.ES256(), b.claims("alice").IssuedAt(time.Now().Add(5*time.Minute)), nil),
		"PS256":             b.sign(t, ps256, jwa.PS256(), b.claims("alice"), nil),
		"RS512":             b.sign(t, ps256, jwa.RS512(), b.claims("alice"), nil),
		"RS512OnRS256Key":   b.sign(t, b.rsa, jwa.RS512(), b.claims("alice"), nil),
		"ES384":             b.sign(t, es384, jwa.ES384(), b.claims("alice"), nil),
		"RS256OnECKeyID":    b.sign(t, b.rsa, jwa.RS256(), b.claims("alice"), map[string]any{"kid": b.ec}),
		"UnknownKid":        b.sign(t, b.rsa, jwa.RS256(), b.claims("alice"), map[string]any{"kid": "nobody"}),
		"HS256WithRSAPublicKey": signToken(t, jwa.HS256(), string(rsaPublicPEM), func(jb *jwt.Builder) *jwt.Builder {
			return jb.Issuer(b.issuer.URL).Audience([]string{issuerAudience}).Subject("alice").Expiration(time.Now().Add(time.Hour))
		}),
		"HS256": signToken(t, jwa.HS256(), testSecret, func(jb *jwt.Builder) *jwt.Builder {
			return jb.Issuer(b.issuer.URL).Audience([]string{issuerAudience}).Subject("root").Claim("roles", []string{"tether-admin"}).
				Expiration(time.Now().Add(time.Hour))
		}),
		"AlgNone":   "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + strings.Split(valid(jwa.RS256(), b.rsa), ".")[1] + ".",
		"IDToken":   b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").Claim("nonce", "n").Claim("at_hash", "x"), nil),
		"IDTokenKC": b.sign(t, b.rsa, jwa.RS256(), b.claims("alice").Claim("typ", "ID"), map[string]any{"typ": "JWT"}),
		"TypLogout": b.sign(t, b.rsa, jwa.RS256(), b.claims("alice"), map[string]any{"typ": "logout+jwt"}),
		"Crit":      b.sign(t, b.rsa, jwa.RS256(), b.claims("alice"), map[string]any{"crit": []string{"exp"}}),
		"BadSub":    b.sign(t, b.rsa, jwa.RS256(), b.claims("bob\u0000"), nil),
		"TamperedPayload": func() string {
			parts := strings.Split(valid(jwa.ES256(), b.ec), ".")
			other := strings.Split(b.sign(t, b.ec, jwa.ES256(), b.claims("root").Claim("roles", []string{"tether-admin"}), nil), ".")
			return parts[0] + "." + other[1] + "." + parts[2]
		}(),
	}
	for name, token := range refused {
		t.Run("Refused_"+name, func(t *testing.T) {
			status, body := b.get(t, connectionsPath, token)
			require.Equal(t, http.StatusUnauthorized, status, string(body))
			requireErrorBody(t, body, app.EUNAUTHORIZED)
		})
	}
	// JWS JSON serialization of a valid token: compact only.
	parts := strings.Split(valid(jwa.RS256(), b.rsa), ".")
	jsonForm := fmt.Sprintf(`{"payload":%q,"protected":%q,"signature":%q}`, parts[1], parts[0], parts[2])
	status, _ := b.get(t, connectionsPath, jsonForm)
	require.Equal(t, http.StatusUnauthorized, status)

	t.Run("AdminRole", func(t *testing.T) {
		admin := b.sign(t, b.ec, jwa.ES256(), b.claims("root").Claim("realm_access", map[string]any{"roles": []string{"tether-admin"}}), nil)
		req, err := http.NewRequest(http.MethodPost, b.url+"/api/data/resource_pools", strings.NewReader(`{"name": "p"}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+admin)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode)
	})
}

func fetchJWKS(t *testing.T, rawURL string) jwk.Set {
	t.Helper()
	resp, err := http.Get(rawURL)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	set, err := jwk.Parse(body)
	require.NoError(t, err)
	return set
}

// A rotation at the issuer needs no restart; a flood of unknown key ids
// costs one JWKS fetch per ten seconds; a withdrawn key stops working once
// the key set's maximum age has passed.
func TestIssuerKeyRotation(t *testing.T) {
	t.Parallel()
	b := setupIssuer(t, false)
	require.Equal(t, 1, b.jwksFetches(), "one fetch at start")
	status, _ := b.get(t, connectionsPath, b.sign(t, b.rsa, jwa.RS256(), b.claims("alice"), nil))
	require.Equal(t, http.StatusOK, status)

	// 100 tokens with invented kids, 10 s after start: one refetch.
	b.clock.Advance(jwks.DefaultMinRefetch)
	forged := make([]string, 100)
	for i := range forged {
		forged[i] = b.sign(t, b.rsa, jwa.RS256(), b.claims("alice"), map[string]any{"kid": fmt.Sprint("forged-", i)})
	}
	var wg sync.WaitGroup
	statuses := make([]int, len(forged))
	for i, token := range forged {
		wg.Go(func() { statuses[i], _ = b.get(t, connectionsPath, token) })
	}
	wg.Wait()
	for _, status := range statuses {
		require.Equal(t, http.StatusUnauthorized, status)
	}
	require.Equal(t, 2, b.jwksFetches(), "a flood of unknown kids is one fetch")

	// The issuer rotates to a new key.
	rotated := b.issuer.AddKey(t, jwa.ES256())
	b.clock.Advance(jwks.DefaultMinRefetch)
	status, body := b.get(t, connectionsPath, b.sign(t, rotated, jwa.ES256(), b.claims("alice"), nil))
	require.Equal(t, http.StatusOK, status, string(body))
	require.Equal(t, 3, b.jwksFetches())

	// It withdraws the old one: still trusted until the set's maximum age …
	b.issuer.RemoveKey(b.rsa)
	old := b.sign(t, b.rsa, jwa.RS256(), b.claims("alice"), nil)
	status, _ = b.get(t, connectionsPath, old)
	require.Equal(t, http.StatusOK, status, "the cached set is younger than the refresh interval")
	// … then refused.
	b.clock.Advance(jwks.DefaultMaxAge)
	status, body = b.get(t, connectionsPath, old)
	require.Equal(t, http.StatusUnauthorized, status, string(body))
	status, _ = b.get(t, connectionsPath, b.sign(t, rotated, jwa.ES256(), b.claims("alice"), nil))
	require.Equal(t, http.StatusOK, status, "the current key keeps working")
}

// The issuer unreachable at start: Tether serves, /readyz says it is not
// ready, issuer tokens get 503 (not 401: they may be fine), and it recovers
// by itself. Unreachable later: the cached keys serve until their maximum
// age, then the same 503.
func TestIssuerUnreachable(t *testing.T) {
	t.Parallel()
	b := setupIssuer(t, true)
	token := b.sign(t, b.ec, jwa.ES256(), b.claims("alice"), nil)
	readyAuth := func() (int, string) {
		status, body := b.get(t, "/readyz", "")
		var r struct {
			Auth string `json:"auth"`
		}
		require.NoError(t, json.Unmarshal(body, &r), string(body))
		return status, r.Auth
	}

	status, body := b.get(t, connectionsPath, token)
	require.Equal(t, http.StatusServiceUnavailable, status, string(body))
	requireErrorBody(t, body, app.EUNAVAILABLE)
	status, auth := readyAuth()
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.NotEqual(t, "ok", auth)
	status, _ = b.get(t, connectionsPath, "not.a.token")
	require.Equal(t, http.StatusUnauthorized, status, "a malformed token is still a 401")

	b.issuer.SetDown(false)
	b.clock.Advance(jwks.DefaultMinRefetch)
	_, auth = readyAuth()
	require.Equal(t, "ok", auth)
	status, body = b.get(t, connectionsPath, token)
	require.Equal(t, http.StatusOK, status, string(body))

	b.issuer.SetDown(true)
	b.clock.Advance(jwks.DefaultMaxAge - time.Second)
	status, _ = b.get(t, connectionsPath, token)
	require.Equal(t, http.StatusOK, status, "cached keys serve while the issuer is briefly away")
	b.clock.Advance(time.Second)
	status, body = b.get(t, connectionsPath, token)
	require.Equal(t, http.StatusServiceUnavailable, status, string(body))
	_, auth = readyAuth()
	require.NotEqual(t, "ok", auth)
}

// An HMAC secret next to an issuer would mint tokens past the issuer: both
// together are refused, by the configuration and by the authenticator.
func TestHMACSecretWithIssuerRefused(t *testing.T) {
	t.Parallel()
	is := oauthtest.StartIssuer(t)
	is.AddKey(t, jwa.RS256())
	env := map[string]string{
		"TETHER_DATABASE_URL": "postgres://x@127.0.0.1/x", "TETHER_SPICEDB_ENDPOINT": "127.0.0.1:50051",
		"TETHER_ENCRYPTION_KEYS": testenv.TestKeyRing, "TETHER_AUTH_ISSUER": is.URL, "TETHER_AUTH_AUDIENCE": issuerAudience,
		"TETHER_AUTH_HMAC_SECRET": testSecret,
	}
	_, err := config.Load(func(k string) string { return env[k] }, config.ScopeServe)
	require.ErrorContains(t, err, "TETHER_AUTH_HMAC_SECRET")
	cfg := config.Defaults()
	cfg.AuthIssuer, cfg.AuthAudience, cfg.AuthHMACSecret = is.URL, issuerAudience, []byte(testSecret)
	_, err = app.NewAuthenticator(context.Background(), &cfg)
	var cfgErr *config.Error
	require.ErrorAs(t, err, &cfgErr)
	require.Equal(t, "TETHER_AUTH_HMAC_SECRET", cfgErr.Variable)
}
