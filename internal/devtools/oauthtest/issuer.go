package oauthtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// Issuer is an OIDC token issuer as a resource server sees it: a discovery
// document and a JWKS over HTTP, with real RSA and EC signing keys that can
// be added (rotation) and withdrawn while it runs. It counts the requests it
// gets, so tests can bound how often a verifier fetches keys.
type Issuer struct {
	URL string // the issuer identifier, http://127.0.0.1:<port> (no trailing slash)

	srv *httptest.Server

	mu   sync.Mutex
	keys map[string]issuerKey // by kid
	next int

	down      atomic.Bool
	discovery atomic.Int64
	jwks      atomic.Int64
}

type issuerKey struct {
	alg     jwa.SignatureAlgorithm
	private crypto.Signer
	public  jwk.Key
}

// StartIssuer starts an issuer with no keys; it stops when tb's test ends.
func StartIssuer(tb testing.TB) *Issuer {
	tb.Helper()
	is := &Issuer{keys: map[string]issuerKey{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", is.serveDiscovery)
	mux.HandleFunc("GET /keys", is.serveJWKS)
	is.srv = httptest.NewServer(mux)
	is.URL = is.srv.URL
	tb.Cleanup(is.srv.Close)
	return is
}

// AddKey makes a new signing key for alg (RS256: RSA 2048; ES256: P-256),
// publishes it in the JWKS and returns its kid.
func (is *Issuer) AddKey(tb testing.TB, alg jwa.SignatureAlgorithm) string {
	tb.Helper()
	var priv crypto.Signer
	var err error
	switch alg.String() {
	case jwa.RS256().String(), jwa.PS256().String(), jwa.RS512().String():
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jwa.ES256().String():
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jwa.ES384().String():
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	default:
		tb.Fatalf("oauthtest: no key type for %s", alg)
	}
	if err != nil {
		tb.Fatalf("oauthtest: %v", err)
	}
	pub, err := jwk.Import(priv.Public())
	if err != nil {
		tb.Fatalf("oauthtest: %v", err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.next++
	kid := fmt.Sprintf("key-%d", is.next)
	if err := pub.Set(jwk.KeyIDKey, kid); err != nil {
		tb.Fatalf("oauthtest: %v", err)
	}
	is.keys[kid] = issuerKey{alg: alg, private: priv, public: pub}
	return kid
}

// RemoveKey withdraws a key from the JWKS; it can still sign (as a stolen or
// retired key would).
func (is *Issuer) RemoveKey(kid string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	k := is.keys[kid]
	k.public = nil
	is.keys[kid] = k
}

// Sign signs claims with key kid under alg (which may differ from the key's
// own, to forge), adding the headers given ("typ", "kid": "" drops the kid).
func (is *Issuer) Sign(tb testing.TB, kid string, alg jwa.SignatureAlgorithm, tok jwt.Token, headers map[string]any) string {
	tb.Helper()
	is.mu.Lock()
	k, ok := is.keys[kid]
	is.mu.Unlock()
	if !ok {
		tb.Fatalf("oauthtest: no key %q", kid)
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.KeyIDKey, kid); err != nil {
		tb.Fatalf("oauthtest: %v", err)
	}
	for name, v := range headers {
		if err := hdr.Set(name, v); err != nil {
			tb.Fatalf("oauthtest: %v", err)
		}
	}
	if v, ok := headers[jws.KeyIDKey]; ok && v == "" {
		if err := hdr.Remove(jws.KeyIDKey); err != nil {
			tb.Fatalf("oauthtest: %v", err)
		}
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(alg, k.private, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		tb.Fatalf("oauthtest: %v", err)
	}
	return string(signed)
}

// SetDown makes discovery and the JWKS answer 503 (down) or work again.
func (is *Issuer) SetDown(down bool) { is.down.Store(down) }

// Requests returns how many discovery and JWKS requests the issuer got.
func (is *Issuer) Requests() (discovery, jwks int) {
	return int(is.discovery.Load()), int(is.jwks.Load())
}

func (is *Issuer) serveDiscovery(w http.ResponseWriter, _ *http.Request) {
	is.discovery.Add(1)
	if is.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"issuer": is.URL, "jwks_uri": is.URL + "/keys",
		"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
	})
}

func (is *Issuer) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	is.jwks.Add(1)
	if is.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	set := jwk.NewSet()
	is.mu.Lock()
	for _, k := range is.keys {
		if k.public != nil {
			_ = set.AddKey(k.public)
		}
	}
	is.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(set)
}
