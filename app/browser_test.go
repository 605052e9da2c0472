package app_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
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

// startBrowser starts a headless chromium for the test.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.Flag("disable-dev-shm-usage", true),
	)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first action starts the browser: no timeout on it, or the browser
	// dies with the timeout.
	require.NoError(t, chromedp.Do(ctx))
	return ctx
}

// A person signs in, clicks Connect, signs in at a real OAuth2 server, comes
// back to the pool listed (and SpiceDB agreeing), clicks Disconnect and sees
// it gone.
func TestBrowserConnectAndDisconnect(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	browser := startBrowser(t)
	ctx, cancel := context.WithTimeout(browser, 60*time.Second)
	defer cancel()
	poolSel := chromedp.ID(fmt.Sprintf("pool-%d", b.pool.ID))
	user := b.op.Users[0]

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(b.url+"/ui/"), // not signed in: to the dev sign-in
		chromedp.WaitVisible(chromedp.ID("login-user")),
		chromedp.SetValue(chromedp.ID("login-user"), "alice"),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.ID("connect-dev")),
	))
	signedInAs, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("user")))
	require.NoError(t, err)
	require.Equal(t, "alice", signedInAs)
	_, err = chromedp.Run(ctx, chromedp.Text(chromedp.ID("no-pools")))
	require.NoError(t, err, "no pool before connecting")

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("connect-dev")),
		chromedp.WaitVisible(chromedp.ID("username")), // the provider's login page
		chromedp.SendKeys(chromedp.ID("username"), user.Username),
		chromedp.SendKeys(chromedp.ID("password"), user.Password),
		chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(poolSel), // back on Tether, the linked pool listed
	))
	location, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.Equal(t, b.url+"/ui/", location)
	status, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#connection-dev .status")))
	require.NoError(t, err)
	require.Equal(t, "connected", status)
	b.tt.WaitSynced(t, 15*time.Second)
	require.True(t, b.tt.CanView(t, "alice", b.pool.ID), "SpiceDB agrees")

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(b.url+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("disconnect-dev")),
		chromedp.Click(chromedp.ID("disconnect-dev")),
		chromedp.WaitVisible(chromedp.ID("no-pools")),
		chromedp.WaitNotPresent(poolSel),
	))
	b.tt.WaitSynced(t, 15*time.Second)
	require.False(t, b.tt.CanView(t, "alice", b.pool.ID), "SpiceDB agrees")
}
