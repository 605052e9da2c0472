package jwks_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tetherhq/tether/internal/devtools/oauthtest"
	"github.com/tetherhq/tether/internal/jwks"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a fake clock for the key set's intervals: tests move it instead
// of waiting ten minutes.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type bundle struct {
	issuer *oauthtest.Issuer
	clock  *clock
	keys   *jwks.Keys
}

func setup(t *testing.T) *bundle {
	t.Helper()
	is := oauthtest.StartIssuer(t)
	c := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	keys := jwks.New(is.URL, jwks.Options{Now: c.Now})
	t.Cleanup(keys.Close)
	return &bundle{issuer: is, clock: c, keys: keys}
}

func (b *bundle) jwksFetches() int {
	_, n := b.issuer.Requests()
	return n
}

func TestRotationRefetchesRateLimited(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	old := b.issuer.AddKey(t, jwa.RS256())
	require.NoError(t, b.keys.Init(ctx))
	require.Equal(t, 1, b.jwksFetches())
	_, err := b.keys.Key(ctx, old, jwa.RS256())
	require.NoError(t, err)

	// A flood of tokens naming key ids nobody published: one refetch, then
	// none until ten seconds have passed.
	b.clock.Advance(jwks.DefaultMinRefetch)
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			_, err := b.keys.Key(ctx, "invented", jwa.RS256())
			require.ErrorIs(t, err, jwks.ErrUnknownKey)
		})
	}
	wg.Wait()
	require.Equal(t, 2, b.jwksFetches(), "200 unknown kids, one fetch")

	// The issuer rotates within the window: its new key is refused (no
	// fetch allowed yet) …
	rotated := b.issuer.AddKey(t, jwa.ES256())
	b.clock.Advance(jwks.DefaultMinRefetch - time.Second)
	_, err = b.keys.Key(ctx, rotated, jwa.ES256())
	require.ErrorIs(t, err, jwks.ErrUnknownKey)
	require.Equal(t, 2, b.jwksFetches())
	// … and accepted once it may fetch again, without a restart.
	b.clock.Advance(time.Second)
	_, err = b.keys.Key(ctx, rotated, jwa.ES256())
	require.NoError(t, err)
	require.Equal(t, 3, b.jwksFetches())
	_, err = b.keys.Key(ctx, rotated, jwa.RS256())
	require.ErrorIs(t, err, jwks.ErrUnknownKey, "an EC key never verifies RS256")
}

func TestWithdrawnKeyRefusedAfterMaxAge(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	kid := b.issuer.AddKey(t, jwa.ES256())
	b.issuer.AddKey(t, jwa.RS256())
	require.NoError(t, b.keys.Init(ctx))
	b.issuer.RemoveKey(kid)

	// Within the refresh interval the cached set is used as it is.
	b.clock.Advance(jwks.DefaultRefreshInterval - time.Second)
	_, err := b.keys.Key(ctx, kid, jwa.ES256())
	require.NoError(t, err)
	require.Equal(t, 1, b.jwksFetches())

	// Past the maximum age the set is fetched again before use, and the
	// withdrawn key is gone.
	b.clock.Advance(jwks.DefaultMaxAge)
	_, err = b.keys.Key(ctx, kid, jwa.ES256())
	require.ErrorIs(t, err, jwks.ErrUnknownKey)
	require.Equal(t, 2, b.jwksFetches())
}

func TestBackgroundRefreshAfterInterval(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	kid := b.issuer.AddKey(t, jwa.RS256())
	require.NoError(t, b.keys.Init(ctx))
	b.clock.Advance(jwks.DefaultRefreshInterval)
	// Due, still trusted: the key is served at once and a refresh starts.
	_, err := b.keys.Key(ctx, kid, jwa.RS256())
	require.NoError(t, err)
	require.Eventually(t, func() bool { return b.jwksFetches() == 2 }, 5*time.Second, 5*time.Millisecond)
}

// A token without a kid is verified only by the one key of its type.
func TestNoKid(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.issuer.AddKey(t, jwa.RS256())
	require.NoError(t, b.keys.Init(ctx))
	_, err := b.keys.Key(ctx, "", jwa.RS256())
	require.NoError(t, err)
	b.issuer.AddKey(t, jwa.RS256())
	b.clock.Advance(jwks.DefaultMaxAge)
	_, err = b.keys.Key(ctx, "", jwa.RS256())
	require.ErrorIs(t, err, jwks.ErrUnknownKey, "two RSA keys: the token must say which")
}

func TestIssuerUnreachable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	kid := b.issuer.AddKey(t, jwa.RS256())

	// At start: Init fails without a configuration error; nothing verifies.
	b.issuer.SetDown(true)
	err := b.keys.Init(ctx)
	require.Error(t, err)
	var cfgErr *jwks.ConfigError
	require.NotErrorAs(t, err, &cfgErr)
	require.ErrorIs(t, b.keys.Ready(ctx), jwks.ErrUnavailable)
	_, err = b.keys.Key(ctx, kid, jwa.RS256())
	require.ErrorIs(t, err, jwks.ErrUnavailable)
	discovery, _ := b.issuer.Requests()
	require.Equal(t, 1, discovery, "retries are rate-limited too")

	// It comes back: the next attempt after the rate limit succeeds.
	b.issuer.SetDown(false)
	b.clock.Advance(jwks.DefaultMinRefetch)
	require.NoError(t, b.keys.Ready(ctx))
	_, err = b.keys.Key(ctx, kid, jwa.RS256())
	require.NoError(t, err)

	// Later: down again. The cached set serves until its maximum age …
	b.issuer.SetDown(true)
	b.clock.Advance(jwks.DefaultMaxAge - time.Second)
	_, err = b.keys.Key(ctx, kid, jwa.RS256())
	require.NoError(t, err)
	// … then nothing verifies (503 upstream) and Ready says so.
	b.clock.Advance(time.Second)
	_, err = b.keys.Key(ctx, kid, jwa.RS256())
	require.ErrorIs(t, err, jwks.ErrUnavailable)
	require.ErrorIs(t, b.keys.Ready(ctx), jwks.ErrUnavailable)
}

func TestDiscoveryNamingAnotherIssuerIsAConfigError(t *testing.T) {
	t.Parallel()
	is := oauthtest.StartIssuer(t)
	keys := jwks.New(is.URL+"/realms/other", jwks.Options{})
	t.Cleanup(keys.Close)
	// The document at …/realms/other does not exist: unreachable, not config.
	require.Error(t, keys.Init(context.Background()))
	keys2 := jwks.New("http://localhost:"+portOf(t, is.URL), jwks.Options{})
	t.Cleanup(keys2.Close)
	var cfgErr *jwks.ConfigError
	require.ErrorAs(t, keys2.Init(context.Background()), &cfgErr, "localhost is not 127.0.0.1 as the document spells it")
}

func portOf(t *testing.T, rawURL string) string {
	t.Helper()
	i := len(rawURL) - 1
	for i >= 0 && rawURL[i] != ':' {
		i--
	}
	require.Positive(t, i)
	return rawURL[i+1:]
}
