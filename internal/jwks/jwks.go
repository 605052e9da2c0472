// Package jwks keeps an OIDC issuer's signing keys: found through its
// discovery document, refreshed on a schedule, fetched again when a token
// names a key id the cached set does not hold (an issuer's key rotation),
// and never fetched more than once per MinRefetch whatever asks for it, so a
// flood of tokens with invented key ids cannot become a flood of fetches.
//
// Only keys Tether accepts are kept: RSA (2048 bits or more) for RS256 and
// EC P-256 for ES256, with no other "use" than "sig".
//
// Availability. A key set is trusted for MaxAge after the fetch that
// returned it. A refresh is attempted, in the background, from
// RefreshInterval on; while the issuer cannot be reached the last set stays
// in use until MaxAge has passed, then Key answers ErrUnavailable (the
// caller's 503) until a fetch succeeds again. Before the first successful
// fetch (the issuer unreachable at start) it answers ErrUnavailable too.
package jwks

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/tetherhq/tether/internal/loopback"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// Defaults of Options.
const (
	DefaultRefreshInterval = 5 * time.Minute
	DefaultMaxAge          = 10 * time.Minute
	DefaultMinRefetch      = 10 * time.Second
	DefaultFetchTimeout    = 5 * time.Second
)

// maxDocumentBytes bounds a discovery document or key set.
const maxDocumentBytes = 1 << 20

var (
	// ErrUnavailable: no trusted key set (the issuer has been unreachable
	// since start, or for longer than MaxAge).
	ErrUnavailable = errors.New("the issuer's signing keys are unavailable")
	// ErrUnknownKey: no key of the trusted set fits the token, even after
	// a refetch (or a refetch was not allowed yet).
	ErrUnknownKey = errors.New("no signing key of the issuer fits the token")
)

// ConfigError is an answer from the issuer that no retry will change: its
// discovery document names another issuer or no key set.
type ConfigError struct{ Problem string }

func (e *ConfigError) Error() string { return e.Problem }

// Options tune a Keys. Zero values take the defaults.
type Options struct {
	// HTTP makes the requests; it must not follow redirects. Default: a
	// client with FetchTimeout that never follows them.
	HTTP            *http.Client
	RefreshInterval time.Duration
	MaxAge          time.Duration
	MinRefetch      time.Duration
	FetchTimeout    time.Duration
	// Now is the clock of the intervals above (not of token validity).
	Now    func() time.Time
	Logger *slog.Logger
}

// Keys is an issuer's key set. Safe for concurrent use.
type Keys struct {
	issuer string
	opts   Options
	base   context.Context // cancelled by Close: ends background fetches
	stop   context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	jwksURL     string // from discovery; "" until discovered
	docIssuer   string // the issuer as its discovery document spells it
	set         *keySet
	fetchedAt   time.Time // of set
	lastAttempt time.Time
	inflight    chan struct{} // closed when the running fetch ends
	lastErr     error
}

// New returns the key set of issuer; nothing is fetched until Init or Key.
func New(issuer string, opts Options) *Keys {
	if opts.RefreshInterval <= 0 {
		opts.RefreshInterval = DefaultRefreshInterval
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.MinRefetch <= 0 {
		opts.MinRefetch = DefaultMinRefetch
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = DefaultFetchTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.HTTP == nil {
		opts.HTTP = &http.Client{Timeout: opts.FetchTimeout, CheckRedirect: noRedirects}
	}
	base, stop := context.WithCancel(context.Background())
	return &Keys{issuer: issuer, opts: opts, base: base, stop: stop}
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// Close ends background fetches and waits for them.
func (k *Keys) Close() {
	k.stop()
	k.wg.Wait()
}

// Init makes the first fetch. A *ConfigError means the issuer answered
// something no retry will fix; any other error means it could not be
// reached, and later calls will try again.
func (k *Keys) Init(ctx context.Context) error {
	k.refresh(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.set == nil {
		return k.lastErr
	}
	return nil
}

// Issuer returns the issuer identifier as the discovery document spells it
// (tokens' iss must equal it), or "" before discovery succeeded.
func (k *Keys) Issuer() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.docIssuer
}

// Ready returns nil when a trusted key set is at hand, trying a fetch (within
// the rate limit) when none is.
func (k *Keys) Ready(ctx context.Context) error {
	if _, err := k.trusted(ctx); err != nil {
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.lastErr != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, k.lastErr)
		}
		return err
	}
	return nil
}

// Key returns the key that verifies a token signed with alg (RS256 or
// ES256) under key id kid ("" when the token names none: then the set's only
// key of the right type, if it has exactly one).
func (k *Keys) Key(ctx context.Context, kid string, alg jwa.SignatureAlgorithm) (jwk.Key, error) {
	set, err := k.trusted(ctx)
	if err != nil {
		return nil, err
	}
	if key := set.find(kid, alg); key != nil {
		return key, nil
	}
	// Unknown: the issuer may have rotated. Fetch again, unless a fetch
	// happened within MinRefetch.
	k.refresh(ctx)
	if set, err = k.trusted(ctx); err != nil {
		return nil, err
	}
	if key := set.find(kid, alg); key != nil {
		return key, nil
	}
	return nil, ErrUnknownKey
}

// trusted returns the current key set if it is younger than MaxAge, fetching
// one first when it is not (within the rate limit), and starting a
// background refresh when it is older than RefreshInterval.
func (k *Keys) trusted(ctx context.Context) (*keySet, error) {
	k.mu.Lock()
	now := k.opts.Now()
	set, age := k.set, now.Sub(k.fetchedAt)
	k.mu.Unlock()
	switch {
	case set == nil || age >= k.opts.MaxAge:
		k.refresh(ctx)
		k.mu.Lock()
		set, age = k.set, k.opts.Now().Sub(k.fetchedAt)
		k.mu.Unlock()
		if set == nil || age >= k.opts.MaxAge {
			return nil, ErrUnavailable
		}
	case age >= k.opts.RefreshInterval:
		// Still trusted: refresh in the background, one fetch at most.
		if ch, jwksURL, ok := k.begin(); ok {
			k.wg.Add(1)
			go func() {
				defer k.wg.Done()
				k.run(ch, jwksURL)
			}()
		}
	}
	return set, nil
}

// refresh fetches the key set unless one was fetched (or tried) within
// MinRefetch. If a fetch is running it waits for that one instead, or for
// ctx. The fetch itself runs on Keys' own context with FetchTimeout: a
// caller that gives up does not waste it for the others.
func (k *Keys) refresh(ctx context.Context) {
	k.mu.Lock()
	running := k.inflight
	k.mu.Unlock()
	if running == nil {
		ch, jwksURL, ok := k.begin()
		if !ok {
			return
		}
		k.run(ch, jwksURL)
		return
	}
	select {
	case <-running:
	case <-ctx.Done():
	}
}

// begin claims the next fetch, unless one is running or the last one began
// within MinRefetch.
func (k *Keys) begin() (chan struct{}, string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.opts.Now()
	if k.inflight != nil || (!k.lastAttempt.IsZero() && now.Sub(k.lastAttempt) < k.opts.MinRefetch) {
		return nil, "", false
	}
	k.lastAttempt = now
	k.inflight = make(chan struct{})
	return k.inflight, k.jwksURL, true
}

// run makes the fetch begin claimed and records its outcome.
func (k *Keys) run(ch chan struct{}, jwksURL string) {
	fetchCtx, cancel := context.WithTimeout(k.base, k.opts.FetchTimeout)
	defer cancel()
	set, discovered, docIssuer, err := k.fetch(fetchCtx, jwksURL)

	k.mu.Lock()
	defer k.mu.Unlock()
	k.inflight = nil
	close(ch)
	if err != nil {
		if k.lastErr == nil || k.lastErr.Error() != err.Error() {
			k.opts.Logger.Warn("cannot fetch the issuer's signing keys; retrying", "issuer", k.issuer, "error", err,
				"keys_held", k.set != nil)
		}
		k.lastErr = err
		if discovered == "" {
			k.jwksURL = "" // discover again next time: the key set may have moved
		}
		return
	}
	if k.lastErr != nil || k.set == nil {
		k.opts.Logger.Info("fetched the issuer's signing keys", "issuer", k.issuer, "keys", set.size())
	}
	k.set, k.fetchedAt, k.lastErr = set, k.opts.Now(), nil
	k.jwksURL, k.docIssuer = discovered, docIssuer
}

// fetch discovers the key set's URL (unless known) and fetches the set.
func (k *Keys) fetch(ctx context.Context, jwksURL string) (*keySet, string, string, error) {
	docIssuer := k.Issuer()
	if jwksURL == "" {
		var err error
		if jwksURL, docIssuer, err = k.discover(ctx); err != nil {
			return nil, "", "", err
		}
	}
	body, err := k.get(ctx, jwksURL)
	if err != nil {
		return nil, "", "", fmt.Errorf("error fetching JWKS: %w", err)
	}
	raw, err := jwk.Parse(body)
	if err != nil {
		return nil, jwksURL, docIssuer, fmt.Errorf("error parsing JWKS: %w", err)
	}
	set := usableKeys(raw)
	if set.size() == 0 {
		return nil, jwksURL, docIssuer, errors.New("the JWKS holds no RS256 or ES256 signing key")
	}
	return set, jwksURL, docIssuer, nil
}

func (k *Keys) discover(ctx context.Context) (jwksURL, docIssuer string, err error) {
	doc, err := oauthclient.Discover(ctx, k.opts.HTTP, k.issuer)
	if errors.Is(err, oauthclient.ErrIssuerMismatch) {
		return "", "", &ConfigError{Problem: err.Error()}
	}
	if err != nil {
		return "", "", err
	}
	u, err := url.Parse(doc.JWKSURI)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && loopback.Host(u.Hostname()))) {
		return "", "", &ConfigError{Problem: fmt.Sprintf("the OIDC discovery document's jwks_uri %q is not an https URL", doc.JWKSURI)}
	}
	return doc.JWKSURI, doc.Issuer, nil
}

// get fetches a document: 200 only (a redirect is an error, never followed),
// at most maxDocumentBytes.
func (k *Keys) get(ctx context.Context, rawURL string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.opts.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return nil, fmt.Errorf("%s answered %s", rawURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxDocumentBytes {
		return nil, fmt.Errorf("%s answered more than %d bytes", rawURL, maxDocumentBytes)
	}
	return body, nil
}

// keySet holds the usable keys by id, and those without an id.
type keySet struct {
	byID  map[string]jwk.Key
	noKID []jwk.Key
}

func (s *keySet) size() int { return len(s.byID) + len(s.noKID) }

// find returns the key for kid that fits alg, or nil.
func (s *keySet) find(kid string, alg jwa.SignatureAlgorithm) jwk.Key {
	if kid != "" {
		if key, ok := s.byID[kid]; ok && fits(key, alg) {
			return key
		}
		return nil
	}
	var only jwk.Key
	for _, key := range s.all() {
		if fits(key, alg) {
			if only != nil {
				return nil // ambiguous: a token must name its key
			}
			only = key
		}
	}
	return only
}

func (s *keySet) all() []jwk.Key {
	out := append([]jwk.Key(nil), s.noKID...)
	for _, key := range s.byID {
		out = append(out, key)
	}
	return out
}

// usableKeys keeps the signing keys Tether accepts.
func usableKeys(raw jwk.Set) *keySet {
	s := &keySet{byID: map[string]jwk.Key{}}
	for i := range raw.Len() {
		key, ok := raw.Key(i)
		if !ok || algFor(key) == jwa.EmptySignatureAlgorithm() {
			continue
		}
		if use, ok := key.KeyUsage(); ok && use != "sig" {
			continue
		}
		if kid, ok := key.KeyID(); ok && kid != "" {
			s.byID[kid] = key
		} else {
			s.noKID = append(s.noKID, key)
		}
	}
	return s
}

// algFor returns the one algorithm a key may verify: RS256 for RSA of 2048
// bits or more, ES256 for EC P-256; none for anything else, or for a key
// whose own "alg" says otherwise.
func algFor(key jwk.Key) jwa.SignatureAlgorithm {
	var alg jwa.SignatureAlgorithm
	switch key.KeyType() {
	case jwa.RSA():
		var pub rsa.PublicKey
		if jwk.Export(key, &pub) != nil || pub.N == nil || pub.N.BitLen() < 2048 {
			return jwa.EmptySignatureAlgorithm()
		}
		alg = jwa.RS256()
	case jwa.EC():
		var pub ecdsa.PublicKey
		if jwk.Export(key, &pub) != nil || pub.Curve != elliptic.P256() {
			return jwa.EmptySignatureAlgorithm()
		}
		alg = jwa.ES256()
	default:
		return jwa.EmptySignatureAlgorithm()
	}
	if stated, ok := key.Algorithm(); ok && stated.String() != alg.String() {
		return jwa.EmptySignatureAlgorithm()
	}
	return alg
}

func fits(key jwk.Key, alg jwa.SignatureAlgorithm) bool {
	return algFor(key).String() == alg.String()
}
