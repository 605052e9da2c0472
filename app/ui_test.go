package app_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
)

// A person's browser (a page navigation) never lands on a JSON error: the
// OAuth2 flow sends it back to the page with the reason, and the page's own
// routes answer with a page that says what happened and links back. API
// clients keep their JSON.
func TestPageErrorsForBrowsers(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	alice := devToken(t, "alice", false)
	navigate := map[string]string{"Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate",
		"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}

	unknown := "/api/data/oauth2/providers/nope/authorize?next_url=%2Fui%2F"
	resp, body := b.send(t, hostile{method: "GET", path: unknown, cookie: alice, header: navigate})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, string(body))
	require.Equal(t, "/ui/?error=unknown_provider", resp.Header.Get("Location"))
	resp, body = b.send(t, hostile{method: "GET", path: unknown, cookie: alice})
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	requireErrorBody(t, body, app.ENOTFOUND)

	callback := app.CallbackPath + "?code=x&state=" + strings.Repeat("A", 43)
	resp, _ = b.send(t, hostile{method: "GET", path: callback, cookie: alice, header: navigate})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/?error=invalid_state", resp.Header.Get("Location"))
	resp, body = b.send(t, hostile{method: "GET", path: callback, cookie: alice, header: map[string]string{"Accept": "text/html"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, "Accept alone marks a browser without Sec-Fetch headers: %s", body)

	stale := hostile{method: "POST", path: "/ui/logout", cookie: alice, body: "csrf=stale", header: map[string]string{}}
	for k, v := range form {
		stale.header[k] = v
	}
	for k, v := range navigate {
		stale.header[k] = v
	}
	resp, body = b.send(t, stale)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/html")
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'none'")
	require.Contains(t, string(body), "The form is stale or came from another site; reload the page.")
	require.Contains(t, string(body), `href="/ui/" id="message-link"`)
	resp, body = b.send(t, hostile{method: "GET", path: "/ui/nowhere", cookie: alice, header: navigate})
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Contains(t, string(body), "<h1 id=\"message-title\">Not found</h1>")

	resp, body = b.send(t, hostile{method: "GET", path: "/favicon.ico"})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "image/x-icon", resp.Header.Get("Content-Type"))
	require.Equal(t, []byte{0, 0, 1, 0}, body[:4], "an ICO file")
}

// Sign-out drops the cookie and says so; the page needs signing in again.
func TestSignOut(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	alice := devToken(t, "alice", false)
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	resp, body := b.send(t, hostile{method: "POST", path: "/ui/logout", cookie: alice, header: form, body: "csrf=" + csrfFor(alice)})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, string(body))
	require.Equal(t, "/ui/signed-out", resp.Header.Get("Location"))
	var dropped bool
	for _, c := range resp.Cookies() {
		dropped = dropped || (c.Name == "tether_token" && c.Value == "" && c.MaxAge < 0 && c.HttpOnly)
	}
	require.True(t, dropped, "the auth cookie is deleted: %v", resp.Header["Set-Cookie"])
	resp, body = b.send(t, hostile{method: "GET", path: "/ui/signed-out"})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), "You are signed out")
}

// The page while a connect is in flight: the row waits for the sign-in,
// says until when, and the page reloads itself by then.
func TestPageShowsConnectInFlight(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	client := b.browser(t, "alice")
	b.authorize(t, client, "/ui/")
	resp, body := get(t, client, b.url+"/ui/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, `id="status-dev">Waiting for you to sign in at Dev</p>`)
	require.Regexp(t, `This sign-in expires at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\.`, body)
	require.Regexp(t, `<meta http-equiv="refresh" content="60">`, body, "reloads by the time the sign-in expires (at most a minute)")
	require.Contains(t, body, `id="connect-dev" href="/api/data/oauth2/providers/dev/authorize?next_url=%2Fui%2F%3Fprovider%3Ddev"`)
	require.NotContains(t, body, `id="disconnect-dev"`, "nothing to disconnect yet")
}

// The page says in words what the flow's codes mean, and echoes none it
// does not know: a link to the page cannot put words in Tether's mouth.
func TestPageFlowMessages(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	client := b.browser(t, "alice")
	for query, want := range map[string]string{
		"provider=dev&error=access_denied":                  "You declined access at Dev. Nothing was connected.",
		"provider=dev&error=authorization_expired":          "The sign-in at Dev took too long and expired.",
		"provider=dev&error=invalid_scope":                  "Dev refused the connection (invalid_scope): an administrator needs to check its settings.",
		"provider=dev&error=temporarily_unavailable":        "Dev had a problem (temporarily_unavailable).",
		"provider=nope&error=access_denied":                 "You declined access at the service.",
		"error=invalid_state":                               "That sign-in could not be completed",
		"provider=dev&error=call_us_your_account_is_locked": "The connection did not complete. Nothing was connected: try again.",
		"provider=dev&error=%3Cscript%3E":                   "The connection did not complete.",
	} {
		resp, body := get(t, client, b.url+"/ui/?"+query)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Contains(t, body, want, query)
		require.NotContains(t, body, "call_us", query)
		require.NotContains(t, body, "<script>", query)
	}
}
