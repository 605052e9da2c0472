package app_test

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
)

// chromium finds Debian's chromium. The browser test is mandatory: `make
// test` and CI install chromium, and its absence fails the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("TETHER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium found: install it (apt-get install chromium) or set TETHER_CHROMIUM; `make test` does this for you")
	return ""
}

// startBrowser starts a headless chromium for the test, 1000 px wide.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1000, 700),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true), chromedp.Flag("font-render-hinting", "none"),
	)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first action starts the browser: no timeout on it, or the browser
	// dies with the timeout.
	require.NoError(t, chromedp.Do(ctx))
	return ctx
}

// screenshots saves the page as PNGs: into TETHER_SCREENSHOTS when set
// (`make screenshots` sets it to docs/screenshots: the pictures in the
// README), into the test's temporary folder otherwise.
type screenshots struct {
	dir string
}

func newScreenshots(t *testing.T) *screenshots {
	t.Helper()
	dir := os.Getenv("TETHER_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return &screenshots{dir: dir}
}

// take saves the whole page as name.png, at most 700 px high per 1000 px of
// width (the top of the page: what a person sees first).
func (s *screenshots) take(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(shot))
	require.NoError(t, err, "a PNG")
	require.Greater(t, img.Bounds().Dx(), 300)
	small, err := shrinkPNG(img)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(s.dir, name+".png"), small, 0o644))
}

// text reads an element's text, its white space collapsed.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	// A page that refreshes itself (something is on its way) can replace
	// its nodes between finding one and reading it: read again, within a
	// deadline, until a read lands on one whole page.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err == nil {
			return strings.Join(strings.Fields(s), " ")
		}
		if time.Now().After(deadline) || !strings.Contains(err.Error(), "No node") {
			require.NoError(t, err, sel)
		}
	}
}

// stateCatcher records the state of each authorization request the browser
// sends to the provider: what a provider echoes back when it redirects.
type stateCatcher struct {
	mu     sync.Mutex
	states []string
}

func catchStates(t *testing.T, ctx context.Context, authURL string) *stateCatcher {
	t.Helper()
	c := &stateCatcher{}
	require.NoError(t, chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok && strings.HasPrefix(e.Request.URL, authURL) {
			if u, err := url.Parse(e.Request.URL); err == nil {
				c.mu.Lock()
				c.states = append(c.states, u.Query().Get("state"))
				c.mu.Unlock()
			}
		}
	}))
	return c
}

func (c *stateCatcher) last(t *testing.T) string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	require.NotEmpty(t, c.states, "the browser went to the provider")
	return c.states[len(c.states)-1]
}

// A person's first visit, as the page shows it at each step: sign in, a
// declined connect, a connect at a real OAuth2 server (account, date,
// scopes, access granted), disconnect with confirmation and its result (the
// access removed), a connect that expired at the provider's login page, and
// a callback that cannot be completed. Each step's page is screenshotted.
func TestBrowserConnectedAccounts(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	browser := startBrowser(t)
	ctx, cancel := context.WithTimeout(browser, 180*time.Second) // generous: a loaded CI machine runs Chromium slowly
	defer cancel()
	shots := newScreenshots(t)
	states := catchStates(t, browser, b.op.AuthURL)
	user := b.op.Users[0]
	pool := fmt.Sprintf("#pool-%d", b.pool.ID)

	// Signed out: to the development sign-in.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(b.url+"/ui/"), chromedp.WaitVisible(chromedp.ID("login-user"))))
	shots.take(t, ctx, "sign-in")
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SetValue(chromedp.ID("login-user"), "alice"),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.ID("connect-dev")),
	))
	require.Equal(t, "alice", text(t, ctx, "#user"))
	require.Equal(t, "Not connected", text(t, ctx, "#status-dev"))
	require.Equal(t, "Connect Dev", text(t, ctx, "#connect-dev"), "the button names its service for screen readers")
	require.Contains(t, text(t, ctx, "#no-pools"), "None yet")
	shots.take(t, ctx, "not-connected")

	// Declined at the provider: the example OP has no consent screen, so the
	// browser follows the redirect a provider sends when the user declines.
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.ID("connect-dev")), chromedp.WaitVisible(chromedp.ID("username"))))
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(b.url+app.CallbackPath+"?error=access_denied&state="+url.QueryEscape(states.last(t))),
		chromedp.WaitVisible(chromedp.ID("flash")),
	))
	require.Equal(t, "You declined access at Dev. Nothing was connected.", text(t, ctx, "#flash"))
	require.Equal(t, "Not connected", text(t, ctx, "#status-dev"), "the declined connect left nothing pending")
	shots.take(t, ctx, "declined")

	// Connected: the account, when, the scopes, the access, the pool.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("connect-dev")),
		chromedp.WaitVisible(chromedp.ID("username")),
		chromedp.SendKeys(chromedp.ID("username"), user.Username),
		chromedp.SendKeys(chromedp.ID("password"), user.Password),
		chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS(pool)),
		// Granted without a reload by hand: the page refreshes itself while
		// the access is on its way.
		chromedp.WaitVisible(chromedp.CSS("#access-dev.access-granted")),
	))
	location, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.Equal(t, b.url+"/ui/?provider=dev", location)
	require.Equal(t, "Connected Dev as "+user.Username+".", text(t, ctx, "#flash"))
	require.Equal(t, "Connected", text(t, ctx, "#status-dev"))
	require.Equal(t, user.Username, text(t, ctx, "#account-dev"))
	require.Regexp(t, `^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$`, text(t, ctx, "#connected-at-dev"))
	require.Contains(t, text(t, ctx, "#scopes-dev"), "openid profile offline_access")
	require.Contains(t, text(t, ctx, "#access-dev"), "Granted")
	require.Equal(t, "Ready", text(t, ctx, pool+"-state"))
	require.Equal(t, "Reconnect Dev", text(t, ctx, "#connect-dev"))
	requireNoRefresh(t, ctx)
	b.tt.WaitSynced(t, 15*time.Second)
	require.True(t, b.tt.CanView(t, "alice", b.pool.ID), "SpiceDB agrees")
	shots.take(t, ctx, "connected")
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(390, 800), chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("disconnect-dev"))))
	shots.take(t, ctx, "connected-phone")
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(1000, 700)))

	// Disconnect asks first, then shows the result once SpiceDB applied it.
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.ID("disconnect-dev")), chromedp.WaitVisible(chromedp.ID("confirm-disconnect"))))
	require.Equal(t, "Disconnect Dev?", text(t, ctx, "#confirm-title"))
	require.Equal(t, user.Username, text(t, ctx, "#confirm-account"))
	require.Equal(t, "gpu", text(t, ctx, "#confirm-pools"))
	shots.take(t, ctx, "confirm-disconnect")
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.ID("cancel-disconnect")), chromedp.WaitVisible(chromedp.ID("disconnect-dev"))))
	require.Equal(t, "Connected", text(t, ctx, "#status-dev"), "Cancel changes nothing")
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("disconnect-dev")),
		chromedp.Click(chromedp.ID("confirm-disconnect")),
		chromedp.WaitVisible(chromedp.ID("no-pools")),
		chromedp.WaitVisible(chromedp.CSS("#flash.flash-success")),
	))
	require.Regexp(t, `^Disconnected Dev\. Its access was removed at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\.$`, text(t, ctx, "#flash"))
	require.Equal(t, "Not connected", text(t, ctx, "#status-dev"))
	requireNoRefresh(t, ctx)
	b.tt.WaitSynced(t, 15*time.Second)
	require.False(t, b.tt.CanView(t, "alice", b.pool.ID), "SpiceDB agrees")
	shots.take(t, ctx, "disconnected")

	// Expired: the person lingers at the provider's login page past the
	// authorization's lifetime (the clock is moved, not waited for).
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.ID("connect-dev")), chromedp.WaitVisible(chromedp.ID("username"))))
	expireAuthorizations(t, b, "alice")
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("username"), user.Username),
		chromedp.SendKeys(chromedp.ID("password"), user.Password),
		chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.ID("flash")),
	))
	require.Equal(t, "The sign-in at Dev took too long and expired. Nothing was connected: connect again.", text(t, ctx, "#flash"))
	require.Equal(t, "Not connected", text(t, ctx, "#status-dev"))
	shots.take(t, ctx, "expired")

	// A callback that cannot be completed (a state Tether never issued), and
	// an unknown provider: back on the page, in words.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(b.url+app.CallbackPath+"?code=x&state="+strings.Repeat("A", 43)),
		chromedp.WaitVisible(chromedp.ID("flash")),
	))
	require.Contains(t, text(t, ctx, "#flash"), "That sign-in could not be completed")
	location, err = chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.Equal(t, b.url+"/ui/?error=invalid_state", location)
	shots.take(t, ctx, "callback-error")
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(b.url+"/api/data/oauth2/providers/nope/authorize?next_url=%2Fui%2F"),
		chromedp.WaitVisible(chromedp.ID("flash")),
	))
	require.Equal(t, "That service is not configured in Tether (any more).", text(t, ctx, "#flash"))
	require.NotContains(t, b.logs.String(), `"route":"unmatched"`, "no 404s (favicon included)")
}

// expireAuthorizations moves the user's authorizations in flight into the
// past, as ten minutes at the provider's login page would.
func expireAuthorizations(t *testing.T, b *oauthBundle, userID string) {
	t.Helper()
	ctx := context.Background()
	_, err := b.tt.DB.Exec(ctx, "UPDATE oauth2_states SET expires_at = now() - interval '1 second' WHERE user_id = $1", userID)
	require.NoError(t, err)
	_, err = b.tt.DB.Exec(ctx, "UPDATE oauth2_connections SET authorizing_until = now() - interval '1 second' WHERE user_id = $1", userID)
	require.NoError(t, err)
}

// requireNoRefresh checks the page is settled: it no longer reloads itself.
func requireNoRefresh(t *testing.T, ctx context.Context) {
	t.Helper()
	nodes, err := chromedp.Run(ctx, chromedp.Nodes(chromedp.CSS(`meta[http-equiv="refresh"]`), chromedp.AtLeast(0)))
	require.NoError(t, err)
	require.Empty(t, nodes, "nothing is on its way, so the page does not reload")
}
