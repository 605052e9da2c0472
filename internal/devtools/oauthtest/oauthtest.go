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
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/net/html"
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

	down       atomic.Bool
	tokenDelay atomic.Int64 // time.Duration

	mu            sync.Mutex
	tokenRequests map[string]int // by grant_type
	revokes       int
}

// Start starts a provider. ctx bounds only the start; stop it with Close.
func Start(ctx context.Context, opts Options) (*Provider, error) {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = DefaultClientSecret
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("oauthtest: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	issuer := "http://localhost:" + strconv.Itoa(port) + "/"

	var users storage.UserStore
	if len(opts.Users) == 0 {
		users = storage.NewUserStore(issuer)
		opts.Users = []User{
			{Subject: "id1", Username: "test-user@localhost", Password: "verysecure", Email: "test-user@zitadel.ch"},
			{Subject: "id2", Username: "test-user2", Password: "verysecure", Email: "test-user2@zitadel.ch"},
		}
	} else {
		users, err = newUserStore(opts.Users)
		if err != nil {
			ln.Close()
			return nil, err
		}
	}

	// A client table of our own: storage.RegisterClients would write the
	// example's package-global map, shared by every provider in the process
	// and read (under each storage's own lock only) at request time.
	redirectURIs := append([]string(nil), opts.RedirectURIs...)
	registered := redirectURIs
	if len(registered) == 0 {
		// WebClient substitutes an example URI for an empty list; "" is
		// never accepted (an empty redirect_uri is refused first).
		registered = []string{""}
	}
	clients := map[string]*storage.Client{
		opts.ClientID: storage.WebClient(opts.ClientID, opts.ClientSecret, registered...),
	}
	st := storage.NewStorageWithClients(users, clients)

	// exampleop.SetupServer calls log.Fatal if the OP cannot be created;
	// build one the same way first to return that error instead.
	if _, err := op.NewProvider(&op.Config{CryptoKey: sha256.Sum256([]byte("test")), SupportedUILocales: []language.Tag{language.English}},
		st, op.StaticIssuer(issuer), op.WithAllowInsecure(), op.WithCustomAuthEndpoint(op.NewEndpoint(AuthPath))); err != nil {
		ln.Close()
		return nil, fmt.Errorf("oauthtest: %w", err)
	}
	// nil logger: SetupServer would otherwise slog.SetDefault it.
	router := exampleop.SetupServer(issuer, st, nil, false)

	p := &Provider{
		Issuer:        issuer,
		AuthURL:       issuer + AuthPath,
		TokenURL:      issuer + TokenPath,
		RevocationURL: issuer + RevokePath,
		DiscoveryURL:  issuer + DiscoveryPath,
		ClientID:      opts.ClientID,
		ClientSecret:  opts.ClientSecret,
		RedirectURIs:  redirectURIs,
		Users:         opts.Users,
		served:        make(chan struct{}),
		tokenRequests: map[string]int{},
	}
	p.srv = &http.Server{Handler: p.middleware(router), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.served)
		_ = p.srv.Serve(ln)
	}()
	return p, nil
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

// TokenRequests returns how many POSTs the token endpoint received with
// that grant_type ("authorization_code", "refresh_token", …), or in all
// if grantType is "". Requests refused while down count too.
func (p *Provider) TokenRequests(grantType string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if grantType != "" {
		return p.tokenRequests[grantType]
	}
	n := 0
	for _, c := range p.tokenRequests {
		n += c
	}
	return n
}

// RevokeRequests returns how many POSTs the revocation endpoint received,
// including those refused while down.
func (p *Provider) RevokeRequests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.revokes
}

// SetDown makes the token and revocation endpoints answer 503
// {"error":"temporarily_unavailable"} (down) or work again (!down). The
// login pages and discovery keep working; tokens are not consumed.
func (p *Provider) SetDown(down bool) { p.down.Store(down) }

// SetTokenDelay delays every token-endpoint request by d before it is
// handled (0: none), to make concurrent requests overlap.
func (p *Provider) SetTokenDelay(d time.Duration) { p.tokenDelay.Store(int64(d)) }

func (p *Provider) middleware(next http.Handler) http.Handler {
	tokenPath, revokePath := "/"+TokenPath, "/"+RevokePath
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == tokenPath:
			// ParseForm is idempotent: the OP reads the parsed form.
			_ = r.ParseForm()
			p.mu.Lock()
			p.tokenRequests[r.PostForm.Get("grant_type")]++
			p.mu.Unlock()
			if d := time.Duration(p.tokenDelay.Load()); d > 0 {
				select {
				case <-time.After(d):
				case <-r.Context().Done():
					return
				}
			}
			if p.down.Load() {
				unavailable(w)
				return
			}
		case r.Method == http.MethodPost && r.URL.Path == revokePath:
			p.mu.Lock()
			p.revokes++
			p.mu.Unlock()
			if p.down.Load() {
				unavailable(w)
				return
			}
			p.exclusive.Lock()
			defer p.exclusive.Unlock()
			next.ServeHTTP(w, r)
			return
		}
		p.exclusive.RLock()
		defer p.exclusive.RUnlock()
		next.ServeHTTP(w, r)
	})
}

func unavailable(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, `{"error":"temporarily_unavailable","error_description":"oauthtest: provider is down"}`)
}

// Login drives the provider's side of an authorization-code flow without a
// browser: it GETs authURL (made by oauth2.Config.AuthCodeURL for this
// provider), follows the redirects to the login page, submits user's
// username and password, and follows the provider's redirects until one
// leaves the provider. It returns that redirect's URL — the redirect URI
// with code and state, or with error and state — without requesting it.
//
// client supplies the transport and cookie jar (nil: http.DefaultClient);
// it is not modified, and its redirect policy is not used. A wrong password
// or a request the OP refuses without redirecting (an unregistered
// redirect_uri) is an error.
func (p *Provider) Login(ctx context.Context, client *http.Client, authURL string, user User) (callbackURL *url.URL, err error) {
	if client == nil {
		client = http.DefaultClient
	}
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	issuer, err := url.Parse(p.Issuer)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(authURL)
	if err != nil {
		return nil, fmt.Errorf("oauthtest: login: %w", err)
	}
	if u.Scheme != issuer.Scheme || u.Host != issuer.Host {
		return nil, fmt.Errorf("oauthtest: login: %s is not at this provider (%s)", authURL, p.Issuer)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	submitted := false
	for hop := 0; hop < 20; hop++ {
		resp, err := c.Do(req)
		if err != nil {
			return nil, fmt.Errorf("oauthtest: login: %w", err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("oauthtest: login: %s: %w", req.URL, err)
		}
		switch {
		case resp.StatusCode >= 300 && resp.StatusCode < 400:
			loc, err := resp.Location()
			if err != nil {
				return nil, fmt.Errorf("oauthtest: login: %s: %d without Location", req.URL, resp.StatusCode)
			}
			if loc.Scheme != issuer.Scheme || loc.Host != issuer.Host {
				return loc, nil
			}
			if req, err = http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil); err != nil {
				return nil, err
			}
		case resp.StatusCode == http.StatusOK && req.URL.Path == "/"+LoginPath:
			f, err := parseLoginForm(body)
			if err != nil {
				return nil, fmt.Errorf("oauthtest: login: %s: %w", req.URL, err)
			}
			if submitted {
				// The OP renders the form again, with a message, when
				// the credentials are wrong.
				return nil, fmt.Errorf("oauthtest: login as %q refused: %s", user.Username, f.message)
			}
			action, err := req.URL.Parse(f.action)
			if err != nil {
				return nil, fmt.Errorf("oauthtest: login: form action %q: %w", f.action, err)
			}
			form := url.Values{}
			for k, v := range f.hidden {
				form.Set(k, v)
			}
			form.Set(f.usernameField, user.Username)
			form.Set(f.passwordField, user.Password)
			req, err = http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(form.Encode()))
			if err != nil {
				return nil, err
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			submitted = true
		default:
			return nil, fmt.Errorf("oauthtest: login: %s %s: %s: %s", req.Method, req.URL, resp.Status, strings.TrimSpace(string(body)))
		}
	}
	return nil, errors.New("oauthtest: login: too many redirects")
}

type loginForm struct {
	action                       string
	hidden                       map[string]string
	usernameField, passwordField string
	message                      string // the error paragraph, if any
}

// parseLoginForm reads the example OP's login page: a POST form with a
// hidden "id" (the auth request ID), a text input "username", a password
// input "password", and a red <p> holding the last error.
func parseLoginForm(page []byte) (loginForm, error) {
	doc, err := html.Parse(strings.NewReader(string(page)))
	if err != nil {
		return loginForm{}, err
	}
	f := loginForm{hidden: map[string]string{}}
	var inForm, found bool
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "form":
				if !found && strings.EqualFold(attr(n, "method"), http.MethodPost) {
					found, inForm = true, true
					f.action = attr(n, "action")
					for c := n.FirstChild; c != nil; c = c.NextSibling {
						walk(c)
					}
					inForm = false
					return
				}
			case "input":
				if inForm {
					name := attr(n, "name")
					switch strings.ToLower(attr(n, "type")) {
					case "hidden":
						f.hidden[name] = attr(n, "value")
					case "password":
						f.passwordField = name
					case "", "text", "email":
						f.usernameField = name
					}
				}
			case "p":
				if inForm {
					f.message = strings.TrimSpace(text(n))
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	switch {
	case !found:
		return f, errors.New("no login form")
	case f.usernameField == "" || f.passwordField == "":
		return f, errors.New("login form without username or password input")
	}
	return f, nil
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}

// userStore is a storage.UserStore of Options.Users.
type userStore struct {
	byID       map[string]*storage.User
	byUsername map[string]*storage.User
}

func newUserStore(users []User) (userStore, error) {
	s := userStore{byID: map[string]*storage.User{}, byUsername: map[string]*storage.User{}}
	for i, u := range users {
		if u.Subject == "" || u.Username == "" {
			return s, fmt.Errorf("oauthtest: user %d needs a Subject and a Username", i)
		}
		if s.byID[u.Subject] != nil || s.byUsername[u.Username] != nil {
			return s, fmt.Errorf("oauthtest: duplicate user %q/%q", u.Subject, u.Username)
		}
		su := &storage.User{
			ID:                u.Subject,
			Username:          u.Username,
			Password:          u.Password,
			Email:             u.Email,
			EmailVerified:     u.Email != "",
			PreferredLanguage: language.English,
		}
		s.byID[u.Subject], s.byUsername[u.Username] = su, su
	}
	return s, nil
}

func (s userStore) GetUserByID(id string) *storage.User { return s.byID[id] }

func (s userStore) GetUserByUsername(username string) *storage.User { return s.byUsername[username] }

// ExampleClientID names the example's JWT-profile service user.
func (s userStore) ExampleClientID() string { return storage.ServiceUserID }
