// Package oauthtest runs a real OAuth2/OIDC authorization server, the
// zitadel/oidc example OP, in-process, for tests and for the dev provider of
// `make run`.
//
// The OP is github.com/zitadel/oidc/v3/example/server/exampleop with its
// in-memory storage: a real login page, the authorization-code flow with
// PKCE (S256 only; a code_challenge sent at /auth makes the code_verifier
// mandatory at the token endpoint), rotating refresh tokens (issued only for
// the offline_access scope), RFC 7009 revocation and OIDC discovery.
//
// Each Provider has its own client table (storage.NewStorageWithClients), so
// providers started by parallel tests share no state; the example's
// package-global client map (storage.RegisterClients) is never used.
//
// Endpoints, relative to the issuer http://localhost:<port>/:
//
//	/.well-known/openid-configuration  discovery
//	/auth                              authorization
//	/login/username?authRequestID=…    login form (see Login)
//	/oauth/token                       token
//	/revoke                            RFC 7009 revocation
//	/oauth/introspect, /userinfo, /keys
//
// The example OP logs one slog line per request through slog.Default (its
// request-logging middleware cannot be removed); it is never given a logger,
// so it never replaces slog's default.
package oauthtest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/oauth2"
	"golang.org/x/text/language"
)

// Defaults of Options.
const (
	DefaultAddr         = "localhost:0"
	DefaultClientID     = "tether-test"
	DefaultClientSecret = "tether-test-secret"
)

// Paths of the OP's endpoints, relative to the issuer.
const (
	AuthPath      = "auth"
	TokenPath     = "oauth/token"
	RevokePath    = "revoke"
	DiscoveryPath = ".well-known/openid-configuration"
	LoginPath     = "login/username"
)

// Grant types, for TokenRequests.
const (
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
)

// User is an account that can log in at the provider's login page.
type User struct {
	Subject  string // the "sub" claim
	Username string
	Password string
	Email    string
}

// Options configure Start.
type Options struct {
	// Addr is the listen address; default "localhost:0". Whatever its
	// host, the issuer is http://localhost:<port>/ so that the provider's
	// cookies never collide with an app served on 127.0.0.1.
	Addr string
	// RedirectURIs are the client's registered redirect URIs, matched
	// exactly. They cannot be changed once started.
	RedirectURIs []string
	// ClientID and ClientSecret of the one confidential web client
	// (client_secret_basic or client_secret_post); defaults
	// DefaultClientID and DefaultClientSecret.
	ClientID, ClientSecret string
	// Users replaces the example's two users (test-user@localhost and
	// test-user2, both with password "verysecure").
	Users []User
	// IssParameter makes the OP identify itself in authorization
	// responses (RFC 9207; see rfc9207).
	IssParameter bool
}

// Provider is a running OP. Its exported fields must not be modified.
type Provider struct {
	Issuer        string // http://localhost:<port>/
	AuthURL       string // Issuer + "auth"
	TokenURL      string // Issuer + "oauth/token"
	RevocationURL string // Issuer + "revoke"
	DiscoveryURL  string // Issuer + ".well-known/openid-configuration"
	ClientID      string
	ClientSecret  string
	RedirectURIs  []string
	Users         []User

	srv       *http.Server
	served    chan struct{}
	closeOnce sync.Once

	// exclusive serializes /revoke against every other request: the
	// example storage's GetRefreshTokenInfo reads its refresh-token map
	// without its lock, a data race with any concurrent token request.
	exclusive sync.RWMutex

	down          atomic.Bool
	tokenDelay    atomic.Int64 // time.Duration
	hold          atomic.Pointer[chan struct{}]
	held          atomic.Int64
	secretsInBody atomic.Int64

	mu            sync.Mutex
	tokenRequests map[string]int // by grant_type
	revokes       int
}

// Start starts a provider. ctx bounds only the start; stop it with Close.
func Start(ctx context.Context, opts Options) (*Provider, error) {
	opts = opts.withDefaults()
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("oauthtest: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	issuer := "http://localhost:" + strconv.Itoa(port) + "/"
	store, listed, err := userStoreFor(issuer, opts.Users)
	if err != nil {
		ln.Close()
		return nil, err
	}
	// A copy: the caller may reuse its slice, and the registered URIs cannot change.
	redirectURIs := append([]string(nil), opts.RedirectURIs...)
	router, err := newOP(issuer, storage.NewStorageWithClients(store, clients(opts.ClientID, opts.ClientSecret, redirectURIs)))
	if err != nil {
		ln.Close()
		return nil, err
	}

	p := &Provider{
		Issuer:        issuer,
		AuthURL:       issuer + AuthPath,
		TokenURL:      issuer + TokenPath,
		RevocationURL: issuer + RevokePath,
		DiscoveryURL:  issuer + DiscoveryPath,
		ClientID:      opts.ClientID,
		ClientSecret:  opts.ClientSecret,
		RedirectURIs:  redirectURIs,
		Users:         listed,
		served:        make(chan struct{}),
		tokenRequests: map[string]int{},
	}
	var handler http.Handler = router
	if opts.IssParameter {
		handler = p.rfc9207(handler)
	}
	p.srv = &http.Server{Handler: p.middleware(handler), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.served)
		_ = p.srv.Serve(ln)
	}()
	return p, nil
}

// withDefaults fills in the documented defaults of the zero fields.
func (o Options) withDefaults() Options {
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.ClientID == "" {
		o.ClientID = DefaultClientID
	}
	if o.ClientSecret == "" {
		o.ClientSecret = DefaultClientSecret
	}
	return o
}

// clients is the provider's own client table, its one confidential web
// client: storage.RegisterClients would write the example's package-global
// map, shared by every provider in the process and read (under each
// storage's own lock only) at request time.
func clients(id, secret string, redirectURIs []string) map[string]*storage.Client {
	registered := redirectURIs
	if len(registered) == 0 {
		// WebClient substitutes an example URI for an empty list; "" is
		// never accepted (an empty redirect_uri is refused first).
		registered = []string{""}
	}
	return map[string]*storage.Client{id: storage.WebClient(id, secret, registered...)}
}

// newOP returns the example OP's router on st.
func newOP(issuer string, st *storage.Storage) (http.Handler, error) {
	// exampleop.SetupServer calls log.Fatal if the OP cannot be created;
	// build one the same way first to return that error instead.
	if _, err := op.NewProvider(&op.Config{CryptoKey: sha256.Sum256([]byte("test")), SupportedUILocales: []language.Tag{language.English}},
		st, op.StaticIssuer(issuer), op.WithAllowInsecure(), op.WithCustomAuthEndpoint(op.NewEndpoint(AuthPath))); err != nil {
		return nil, fmt.Errorf("oauthtest: %w", err)
	}
	// nil logger: SetupServer would otherwise slog.SetDefault it.
	return exampleop.SetupServer(issuer, st, nil, false), nil
}

// StartTB starts a provider on localhost:0 whose client accepts
// redirectURIs, and closes it when tb's test ends.
func StartTB(tb testing.TB, redirectURIs ...string) *Provider {
	tb.Helper()
	p, err := Start(tb.Context(), Options{RedirectURIs: redirectURIs})
	if err != nil {
		tb.Fatalf("oauthtest: %v", err)
	}
	tb.Cleanup(p.Close)
	return p
}

// Close stops the provider, waiting briefly for requests in flight. It is
// safe to call more than once.
func (p *Provider) Close() {
	p.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.srv.Shutdown(ctx); err != nil {
			_ = p.srv.Close()
		}
		<-p.served
	})
}

// Endpoint returns the provider's endpoints for x/oauth2, client
// credentials in HTTP Basic auth.
func (p *Provider) Endpoint() oauth2.Endpoint {
	return oauth2.Endpoint{AuthURL: p.AuthURL, TokenURL: p.TokenURL, AuthStyle: oauth2.AuthStyleInHeader}
}

// Config returns an x/oauth2 config for the provider's client, with the
// scopes openid and offline_access (without offline_access the OP issues no
// refresh token).
func (p *Provider) Config(redirectURI string) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		Endpoint:     p.Endpoint(),
		RedirectURL:  redirectURI,
		Scopes:       []string{"openid", "offline_access"},
	}
}
