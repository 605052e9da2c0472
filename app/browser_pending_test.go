package app_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// failWrites makes SpiceDB refuse writes (Unavailable) while down is set:
// an outage, injected.
func failWrites(down *atomic.Bool) func(*spicedb.Config) {
	return func(cfg *spicedb.Config) {
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithUnaryInterceptor(
			func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				if down.Load() && method == "/authzed.api.v1.PermissionsService/WriteRelationships" {
					return status.Error(codes.Unavailable, "injected: SpiceDB unavailable")
				}
				return invoker(ctx, method, req, reply, cc, opts...)
			}))
	}
}

// While SpiceDB is away, a connect is shown as what it is: connected, the
// access being granted (retrying, in words), the pool awaiting it, and the
// page reloading itself until SpiceDB is back and the access is in effect,
// with no reload by hand. The failures are logged at WARN, rate-limited.
func TestBrowserShowsAccessOnItsWay(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	b := setupServer(t, testenv.TetherOpts{SpiceDB: failWrites(&down)})
	b.tt.WaitSynced(t, 15*time.Second)
	browser := startBrowser(t)
	ctx, cancel := context.WithTimeout(browser, 180*time.Second) // generous: a loaded CI machine runs Chromium slowly
	defer cancel()
	shots := newScreenshots(t)
	pool := fmt.Sprintf("#pool-%d", b.pool.ID)
	user := b.op.Users[0]

	down.Store(true)
	outage := time.Now()
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(b.url+"/ui/dev/login"),
		chromedp.SetValue(chromedp.ID("login-user"), "alice"),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.Click(chromedp.ID("connect-dev")),
		chromedp.WaitVisible(chromedp.ID("username")),
		chromedp.SendKeys(chromedp.ID("username"), user.Username),
		chromedp.SendKeys(chromedp.ID("password"), user.Password),
		chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#access-dev.access-retrying")),
	))
	require.Equal(t, "Connected", text(t, ctx, "#status-dev"))
	require.Equal(t, "Being granted: the permission service cannot be reached right now. Tether keeps trying.", text(t, ctx, "#access-dev"))
	require.True(t, strings.HasPrefix(text(t, ctx, pool+"-state"), "Awaiting access"), "the pool is listed, as not usable yet")
	require.Contains(t, text(t, ctx, "#refreshing"), "updates by itself")
	shots.take(t, ctx, "access-on-its-way")

	require.Eventually(t, func() bool {
		return countRows(t, b, "SELECT coalesce(max(attempt), 0) FROM river_job WHERE kind = 'tether.sync_connection'") >= 3
	}, 30*time.Second, 20*time.Millisecond, "the connection's job retries")
	down.Store(false)
	require.NoError(t, chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS("#access-dev.access-granted")),
		chromedp.WaitVisible(chromedp.CSS(pool+"-state.ready")),
	))
	requireNoRefresh(t, ctx)
	b.tt.WaitSynced(t, 15*time.Second)
	require.True(t, b.tt.CanView(t, "alice", b.pool.ID))

	// Logged: kind, key, attempt, error class; one line per class and 10 s.
	var warnings []string
	for _, line := range strings.Split(b.logs.String(), "\n") {
		if strings.Contains(line, `"msg":"sync attempt failed; retrying"`) && strings.Contains(line, `"kind":"connection"`) {
			warnings = append(warnings, line)
		}
	}
	require.NotEmpty(t, warnings, "the failures are logged")
	require.Contains(t, warnings[0], `"level":"WARN"`)
	require.Contains(t, warnings[0], `"key":"dev/alice"`)
	require.Contains(t, warnings[0], `"attempt":1`)
	require.Contains(t, warnings[0], `"error_class":"Unavailable"`)
	require.LessOrEqual(t, len(warnings), 1+int(time.Since(outage)/(10*time.Second)), "rate-limited:\n%s", strings.Join(warnings, "\n"))
}
