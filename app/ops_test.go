package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

func (b *oauthBundle) bearer(t *testing.T, method, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, b.url+path, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (b *oauthBundle) bearerGet(t *testing.T, path, token string) (int, string) {
	t.Helper()
	return b.bearer(t, http.MethodGet, path, token)
}

func (b *oauthBundle) bearerDelete(t *testing.T, path, token string) (int, string) {
	t.Helper()
	return b.bearer(t, http.MethodDelete, path, token)
}

func devToken(t *testing.T, sub string, admin bool) string {
	t.Helper()
	var roles []string
	if admin {
		roles = []string{"tether-admin"}
	}
	tok, err := app.SignDevToken([]byte(testSecret), sub, roles, time.Hour)
	require.NoError(t, err)
	return tok
}

func TestRiverUIAdminsOnly(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	b.tt.WaitSynced(t, 15*time.Second)

	status, body := b.bearerGet(t, "/riverui/", "")
	require.Equal(t, http.StatusUnauthorized, status)
	requireErrorBody(t, []byte(body), app.EUNAUTHORIZED)
	status, body = b.bearerGet(t, "/riverui/api/jobs?state=completed", devToken(t, "alice", false))
	require.Equal(t, http.StatusForbidden, status)
	requireErrorBody(t, []byte(body), app.EFORBIDDEN)

	admin := devToken(t, "root", true)
	status, body = b.bearerGet(t, "/riverui/", admin)
	require.Equal(t, http.StatusOK, status)
	asset := regexp.MustCompile(`/riverui/assets/[^"]+\.js`).FindString(body)
	require.NotEmpty(t, asset, "the page references its assets under the prefix")
	status, _ = b.bearerGet(t, asset, admin)
	require.Equal(t, http.StatusOK, status)
	status, body = b.bearerGet(t, "/riverui/api/jobs?state=completed", admin)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, jobs.SyncPoolArgs{}.Kind())
}

// An admin signs in, opens River UI, finds a Tether sync job and opens it.
func TestBrowserRiverUI(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	b.tt.WaitSynced(t, 15*time.Second)
	browser := startBrowser(t)
	ctx, cancel := context.WithTimeout(browser, 60*time.Second)
	defer cancel()

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(b.url+"/ui/dev/login"),
		chromedp.WaitVisible(chromedp.ID("login-user")),
		chromedp.SetValue(chromedp.ID("login-user"), "root"),
		chromedp.Click(chromedp.ID("login-admin")),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.Navigate(b.url+"/riverui/jobs?state=completed"),
		chromedp.WaitVisible(chromedp.Search(`//a[contains(., "`+jobs.SyncPoolArgs{}.Kind()+`")]`)),
		chromedp.Click(chromedp.Search(`//a[contains(., "`+jobs.SyncPoolArgs{}.Kind()+`")]`)),
		// The job's page shows its args.
		chromedp.WaitVisible(chromedp.Search(`//*[contains(text(), "resource_pool_id")]`)),
	))
	location, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.Regexp(t, `/riverui/jobs/\d+`, location)

	// A signed-in non-admin gets 403 on the same page.
	resp, err := b.browser(t, "alice").Get(b.url + "/riverui/jobs?state=completed")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
}

var labelPair = regexp.MustCompile(`(\w+)="([^"]*)"`)

// /metrics during connect/disconnect traffic: the sync-lag histogram fills,
// and no label carries a user id.
func TestMetricsDuringTraffic(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	users := []string{}
	for i := range 20 {
		user := fmt.Sprintf("metrics-user-%d", i)
		users = append(users, user)
		c := b.tt.Connect(t, user, "dev")
		if i%2 == 0 {
			status, _ := b.bearerDelete(t, "/api/data/oauth2/connections/"+c.ID.String(), devToken(t, user, false))
			require.Equal(t, http.StatusNoContent, status)
		}
		status, _ := b.bearerGet(t, "/api/data/resource_pools", devToken(t, user, false))
		require.Equal(t, http.StatusOK, status)
	}
	var page string
	require.Eventually(t, func() bool {
		status, body := b.bearerGet(t, "/metrics", "")
		require.Equal(t, http.StatusOK, status)
		page = body
		m := regexp.MustCompile(`(?m)^tether_sync_lag_seconds_count\{kind="connection"\} (\d+)`).FindStringSubmatch(body)
		return m != nil && m[1] != "0"
	}, 15*time.Second, 50*time.Millisecond, "the sync-lag histogram fills")
	for _, name := range []string{"tether_spicedb_write_duration_seconds_bucket", "tether_jobs_total", "tether_http_requests_total",
		"tether_sync_oldest_unapplied_revocation_age_seconds", "tether_spicedb_up 1", "tether_reconcile_last_run_timestamp_seconds"} {
		require.Contains(t, page, name)
	}
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		for _, pair := range labelPair.FindAllStringSubmatch(line, -1) {
			for _, user := range users {
				require.NotContains(t, pair[2], user, "a user id in a label: %s", line)
			}
			require.NotContains(t, pair[2], "dev", "a provider id in a label: %s", line)
		}
	}
}

// SpiceDB fails: the affected connection reports retrying with a scrubbed
// error; SpiceDB returns: it reports synced.
func TestSyncStatusRetryingThenSynced(t *testing.T) {
	t.Parallel()
	proc := testenv.StartSpiceDBProcess(t, true)
	b := setupServer(t, testenv.TetherOpts{SpiceDB: func(c *spicedb.Config) { *c = proc.Config() }})
	b.tt.WaitSynced(t, 15*time.Second)
	proc.Stop()
	b.tt.Connect(t, "alice", "dev")

	client := b.browser(t, "alice")
	connection := func() app.Connection {
		resp, body := get(t, client, b.url+"/api/data/oauth2/connections")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var conns []app.Connection
		require.NoError(t, jsonUnmarshal(body, &conns))
		require.Len(t, conns, 1)
		return conns[0]
	}
	require.Eventually(t, func() bool { return connection().Sync.State == "retrying" }, 15*time.Second, 20*time.Millisecond)
	c := connection()
	require.NotNil(t, c.Sync.LastError)
	require.True(t, strings.HasPrefix(*c.Sync.LastError, "Unavailable: "), *c.Sync.LastError)
	require.NotContains(t, *c.Sync.LastError, proc.Config().Token, "the SpiceDB key never shows")
	require.LessOrEqual(t, len(*c.Sync.LastError), 310)

	proc.Start()
	require.Eventually(t, func() bool { return connection().Sync.State == "synced" }, 20*time.Second, 50*time.Millisecond)
	c = connection()
	require.Nil(t, c.Sync.LastError)
	require.NotNil(t, c.Sync.AppliedAt)
	require.True(t, b.tt.CanView(t, "alice", b.pool.ID))
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
