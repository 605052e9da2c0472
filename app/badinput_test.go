package app_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/testenv"
)

// hostile is one malformed or malicious request and the refusal it must get.
type hostile struct {
	name         string
	method, path string
	bearer       string            // Authorization: Bearer …, if set
	cookie       string            // the tether_token cookie, if set
	header       map[string]string // more headers (a body defaults to application/json)
	body         string
	chunked      bool // send the body without a Content-Length
	status       int
	code         string
	// upstream marks an attack by a provider, not by the client: the
	// answer is a 502 (the fault is upstream), still changing nothing.
	upstream bool
}

// send sends a request as given, never following redirects.
func (b *oauthBundle) send(t *testing.T, c hostile) (*http.Response, []byte) {
	t.Helper()
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
		if c.chunked {
			body = io.MultiReader(body) // unknown length: chunked encoding
		}
	}
	req, err := http.NewRequest(c.method, b.url+c.path, body)
	require.NoError(t, err)
	if c.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range c.header {
		if v == "" {
			req.Header.Del(k) // e.g. no Content-Type at all, as a Blob body
		} else {
			req.Header.Set(k, v)
		}
	}
	if c.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+c.bearer)
	}
	if c.cookie != "" {
		req.AddCookie(&http.Cookie{Name: "tether_token", Value: c.cookie})
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, out
}

// stateSnapshot is every table Tether writes (as sorted row text) and all of
// SpiceDB.
func (b *oauthBundle) stateSnapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, table := range []string{"oauth2_providers", "resource_pools", "resource_pool_viewers", "oauth2_connections",
		"sync_state", "oauth2_token_revocations", "oauth2_states"} {
		var rows string
		require.NoError(t, b.tt.DB.QueryRow(context.Background(),
			fmt.Sprintf("SELECT COALESCE(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM %s t", table)).Scan(&rows))
		out[table] = rows
	}
	var jobs string // jobs change state as they run: compare which exist
	require.NoError(t, b.tt.DB.QueryRow(context.Background(),
		"SELECT count(*) || ': ' || COALESCE(string_agg(id::text, ',' ORDER BY id), '') FROM river_job").Scan(&jobs))
	out["river_job"] = jobs
	out["spicedb"] = strings.Join(b.tt.Relationships(t), "\n")
	return out
}

// csrfFor derives the UI's CSRF token from an auth cookie, as the page does.
func csrfFor(cookie string) string {
	h := sha256.Sum256([]byte("tether-csrf/" + cookie))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

func signToken(t *testing.T, alg jwa.SignatureAlgorithm, key string, build func(*jwt.Builder) *jwt.Builder) string {
	t.Helper()
	tok, err := build(jwt.NewBuilder()).Build()
	require.NoError(t, err)
	signed, err := jwt.Sign(tok, jwt.WithKey(alg, []byte(key)))
	require.NoError(t, err)
	return string(signed)
}

// Hostile and malformed input on every route is refused with a 4xx and a
// JSON error, never a 5xx, and changes nothing in Postgres or SpiceDB.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	admin, alice, bob := devToken(t, "root", true), devToken(t, "alice", false), devToken(t, "bob", false)

	// Realistic data, made through the real flows.
	b.connect(t, b.browser(t, "alice"))
	conn := b.connection(t, "alice").ID.String()
	gpu := fmt.Sprint(b.pool.ID)
	setup := func(method, path, body string) []byte {
		resp, out := b.send(t, hostile{method: method, path: path, bearer: admin, body: body})
		require.Equal(t, http.StatusCreated, resp.StatusCode, string(out))
		return out
	}
	setup("POST", "/api/data/resource_pools/"+gpu+"/users", `[{"id": "carol"}]`)
	var pub app.Pool
	require.NoError(t, jsonUnmarshal(string(setup("POST", "/api/data/resource_pools", `{"name": "shared", "public": true}`)), &pub))
	public := fmt.Sprint(pub.ID)
	setup("POST", "/api/data/resource_pools/"+public+"/users", `[{"id": "dave@example.org"}]`)
	// A flow in flight (for the mix-up case), and a connection to a
	// provider whose token endpoint redirects to catcher.
	inFlight := b.authorize(t, b.browser(t, "alice"), "/ui/").Query().Get("state")
	catcher := startCounter(t)
	b.plainProvider(t, "redirector", startRedirector(t, catcher.URL).URL)
	redirected := b.plantConnection(t, "alice", "redirector", "refresh-token-a-redirect-must-not-carry").String()
	b.tt.WaitSynced(t, 15*time.Second)

	// The page's CSRF token is the one csrfFor derives.
	resp, page := b.send(t, hostile{method: "GET", path: "/ui/", cookie: alice})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(page), `name="csrf" value="`+csrfFor(alice)+`"`)

	hs256 := func(build func(*jwt.Builder) *jwt.Builder) string {
		return signToken(t, jwa.HS256(), testSecret, build)
	}
	valid := func(sub string) func(*jwt.Builder) *jwt.Builder {
		return func(jb *jwt.Builder) *jwt.Builder { return jb.Subject(sub).Expiration(time.Now().Add(time.Hour)) }
	}
	expired := hs256(func(jb *jwt.Builder) *jwt.Builder {
		return jb.Subject("root").Claim("roles", []string{"tether-admin"}).Expiration(time.Now().Add(-time.Hour))
	})
	noExp := hs256(func(jb *jwt.Builder) *jwt.Builder { return jb.Subject("root").Claim("roles", []string{"tether-admin"}) })
	notYet := hs256(func(jb *jwt.Builder) *jwt.Builder {
		return valid("alice")(jb).NotBefore(time.Now().Add(time.Hour))
	})
	noSub := hs256(func(jb *jwt.Builder) *jwt.Builder { return jb.Expiration(time.Now().Add(time.Hour)) })
	longSub := hs256(valid(strings.Repeat("a", 513)))
	wrongKey := signToken(t, jwa.HS256(), "another-secret-another-secret-another-secret", valid("root"))
	hs512 := signToken(t, jwa.HS512(), testSecret, valid("root"))
	rolesAsString := hs256(func(jb *jwt.Builder) *jwt.Builder { return valid("root")(jb).Claim("roles", "tether-admin") })
	wildcard, aliceSpace, aliceZW, aliceUpper := hs256(valid("*")), hs256(valid("alice ")), hs256(valid("alice\u200b")), hs256(valid("ALICE"))
	nulSub, ctrlSub := hs256(valid("bob\u0000")), hs256(valid("bob\u0007"))
	// alg "none", sub alice, roles [tether-admin], far exp, empty signature.
	algNone := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwicm9sZXMiOlsidGV0aGVyLWFkbWluIl19."
	// alg none with the payload of a valid admin token and its signature dropped.
	validParts := strings.Split(admin, ".")
	strippedAdmin := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + validParts[1] + "."

	const (
		providers = "/api/data/oauth2/providers"
		pools     = "/api/data/resource_pools"
		conns     = "/api/data/oauth2/connections"
		callback  = "/api/data/oauth2/callback"
		authorize = "/api/data/oauth2/providers/dev/authorize?next_url="
		riverui   = "/riverui/"
	)
	ct := func(v string) map[string]string { return map[string]string{"Content-Type": v} }
	form := ct("application/x-www-form-urlencoded")
	str := func(n int) string { return strings.Repeat("x", n) }
	provider := func(extra string) string { // a valid gitlab provider body, plus or overriding fields
		return `{"kind": "gitlab", "display_name": "GitLab", "client_id": "id", "url": "https://gitlab.example"` + extra + `}`
	}
	q := url.QueryEscape
	disconnect := "/ui/connections/" + conn + "/disconnect"
	oneMB := `{"name": "` + str(1<<20) + `"}`
	deep := `{"name": "x", "remote": ` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`
	viewers1001 := "[" + strings.Repeat(`{"id": "u"},`, 1000) + `{"id": "u"}]`

	cookieWrite := func(extra ...string) map[string]string { // the admin's cookie on a write, plus headers
		h := map[string]string{"Cookie": "tether_token=" + admin}
		for i := 0; i < len(extra); i += 2 {
			h[extra[i]] = extra[i+1]
		}
		return h
	}
	cases := []hostile{
		// ---- second round: cookies, origins, media types (findings 1, 3) ----
		{name: "Connections_DuplicateCookie", method: "GET", path: conns, header: map[string]string{"Cookie": "tether_token=" + bob + "; tether_token=" + alice}, status: 401, code: app.EUNAUTHORIZED},
		{name: "Authorize_DuplicateCookie", method: "GET", path: authorize + q("/ui/"), header: map[string]string{"Cookie": "tether_token=" + alice + "; tether_token=" + bob}, status: 401, code: app.EUNAUTHORIZED},
		{name: "ViewerAdd_BlobNoContentType", method: "POST", path: pools + "/" + gpu + "/users", header: cookieWrite("Content-Type", ""), body: `[{"id": "mallory"}]`, status: 415, code: app.EUNSUPPORTED},
		{name: "ViewerAdd_BlobCrossSite", method: "POST", path: pools + "/" + gpu + "/users", header: cookieWrite("Content-Type", "", "Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"), body: `[{"id": "mallory"}]`, status: 403, code: app.EFORBIDDEN},
		{name: "ViewerAdd_JSONSameSite", method: "POST", path: pools + "/" + gpu + "/users", header: cookieWrite("Sec-Fetch-Site", "same-site"), body: `[{"id": "mallory"}]`, status: 403, code: app.EFORBIDDEN},
		{name: "PoolDelete_CookieOtherOrigin", method: "DELETE", path: pools + "/" + public, header: cookieWrite("Origin", "https://evil.example"), status: 403, code: app.EFORBIDDEN},
		{name: "RiverUI_TextPlainCancelSameSite", method: "POST", path: riverui + "api/jobs/cancel", header: cookieWrite("Content-Type", "text/plain", "Sec-Fetch-Site", "same-site"), body: `{"ids": ["1"]}`, status: 403, code: app.EFORBIDDEN},
		{name: "RiverUI_TextPlainDeleteOtherOrigin", method: "POST", path: riverui + "api/jobs/delete", header: cookieWrite("Content-Type", "text/plain", "Origin", "https://evil.example"), body: `{"ids": ["1"]}`, status: 403, code: app.EFORBIDDEN},
		{name: "UILogin_CrossSite", method: "POST", path: "/ui/dev/login", header: map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"}, body: "user=mallory&admin=true", status: 403, code: app.EFORBIDDEN},
		{name: "UIDisconnect_CrossSiteValidCSRF", method: "POST", path: disconnect, cookie: alice, header: map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"}, body: "csrf=" + csrfFor(alice), status: 403, code: app.EFORBIDDEN},
		// ---- second round: providers (findings 2, 4, 6) ----
		{name: "Callback_IssuerMismatch", method: "GET", path: callback + "?code=abc&iss=" + q("https://evil.example/") + "&state=" + inFlight, bearer: alice, status: 400, code: app.EINVALID},
		{name: "Callback_IssuerEmpty", method: "GET", path: callback + "?code=abc&iss=&state=" + inFlight, bearer: alice, status: 400, code: app.EINVALID},
		{name: "ProviderUpdate_IssuerWithoutSecret", method: "PATCH", path: providers + "/dev", bearer: admin, body: `{"issuer_url": "https://evil.example/"}`, status: 422, code: app.EUNPROCESSABLE},
		{name: "ProviderUpdate_TokenURLWithoutSecret", method: "PATCH", path: providers + "/dev", bearer: admin, body: `{"kind": "generic_oauth2", "authorization_url": "https://evil.example/a", "token_url": "https://evil.example/t"}`, status: 422, code: app.EUNPROCESSABLE},
		{name: "ProviderUpdate_RedirectorTokenURLWithoutSecret", method: "PATCH", path: providers + "/redirector", bearer: admin, body: `{"token_url": "https://evil.example/t"}`, status: 422, code: app.EUNPROCESSABLE},
		{name: "ProviderUpdate_ClientIDWithoutSecret", method: "PATCH", path: providers + "/dev", bearer: admin, body: `{"client_id": "someone-else"}`, status: 422, code: app.EUNPROCESSABLE},
		{name: "ConnectionToken_TokenEndpointRedirects", method: "GET", path: conns + "/" + redirected + "/token", bearer: alice, status: 502, code: app.EBADGATEWAY, upstream: true},

		// ---- providers ----
		{name: "ProviderCreate_NoToken", method: "POST", path: providers, body: provider(`, "id": "x"`), status: 401, code: app.EUNAUTHORIZED},
		{name: "ProviderCreate_NonAdmin", method: "POST", path: providers, bearer: alice, body: provider(`, "id": "x"`), status: 403, code: app.EFORBIDDEN},
		{name: "ProviderCreate_RolesClaimIsString", method: "POST", path: providers, bearer: rolesAsString, body: provider(`, "id": "x"`), status: 403, code: app.EFORBIDDEN},
		{name: "ProviderCreate_MalformedJSON", method: "POST", path: providers, bearer: admin, body: `{"id": "x", "kind":`, status: 400, code: app.EINVALID},
		{name: "ProviderCreate_TrailingData", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x"`) + `{"id": "y"}`, status: 400, code: app.EINVALID},
		{name: "ProviderCreate_UnknownField", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "client_secret_enc": "AA=="`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_WrongTypePKCE", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "use_pkce": "yes"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_TextPlain", method: "POST", path: providers, bearer: admin, header: ct("text/plain"), body: provider(`, "id": "x"`), status: 415, code: app.EUNSUPPORTED},
		{name: "ProviderCreate_IDPathTraversal", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "../etc"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_IDZeroWidth", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "de\u200bv"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_IDInvalidUTF8", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x` + "\xff\xfe" + `"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_IDTooLong", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "` + str(64) + `"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_IDSpiceDBWildcard", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "*"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_DisplayName201", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "display_name": "` + str(201) + `"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_DisplayNameBidiOverride", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "display_name": "Git\u202eLab"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_ClientIDNUL", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "client_id": "a\u0000b"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_ClientSecret2001", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "client_secret": "` + str(2001) + `"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_URLJavascript", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "url": "javascript:alert(1)"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_URLCredentials", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "url": "https://u:p@gitlab.example"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_URLTooLong", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "url": "https://gitlab.example/` + str(2000) + `"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_UnknownKind", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "x", "kind": "ldap"`), status: 400, code: app.EINVALID},
		{name: "ProviderCreate_Duplicate", method: "POST", path: providers, bearer: admin, body: provider(`, "id": "dev"`), status: 409, code: app.ECONFLICT},
		{name: "ProviderCreate_1MB", method: "POST", path: providers, bearer: admin, body: oneMB, status: 413, code: app.ETOOLARGE},
		{name: "ProviderCreate_1MBChunked", method: "POST", path: providers, bearer: admin, body: oneMB, chunked: true, status: 413, code: app.ETOOLARGE},
		{name: "PoolList_SubWithNUL", method: "GET", path: "/api/data/resource_pools", bearer: nulSub, status: 401, code: app.EUNAUTHORIZED},
		{name: "Connections_SubWithControlChar", method: "GET", path: "/api/data/oauth2/connections", bearer: ctrlSub, status: 401, code: app.EUNAUTHORIZED},
		{name: "Authorize_SubWithNUL", method: "GET", path: "/api/data/oauth2/providers/dev/authorize", bearer: nulSub, status: 401, code: app.EUNAUTHORIZED},
		{name: "ProviderList_Expired", method: "GET", path: providers, bearer: expired, status: 401, code: app.EUNAUTHORIZED},
		{name: "ProviderGet_EncodedDotDot", method: "GET", path: providers + "/%2e%2e", bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "ProviderGet_EncodedSlash", method: "GET", path: providers + "/dev%2F..%2Fdev", bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "ProviderGet_NUL", method: "GET", path: providers + "/dev%00", bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "ProviderGet_VeryLongID", method: "GET", path: providers + "/" + str(5000), bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "ProviderGet_UpperCase", method: "GET", path: providers + "/DEV", bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "ProviderUpdate_ChangeID", method: "PATCH", path: providers + "/dev", bearer: admin, body: `{"id": "evil"}`, status: 400, code: app.EINVALID},
		{name: "ProviderUpdate_ClearRequiredIssuer", method: "PATCH", path: providers + "/dev", bearer: admin, body: `{"issuer_url": ""}`, status: 400, code: app.EINVALID},
		{name: "ProviderUpdate_ControlChar", method: "PATCH", path: providers + "/dev", bearer: admin, body: `{"display_name": "Dev\u0007"}`, status: 400, code: app.EINVALID},
		{name: "ProviderUpdate_FormBody", method: "PATCH", path: providers + "/dev", bearer: admin, header: form, body: "display_name=x", status: 415, code: app.EUNSUPPORTED},
		{name: "ProviderUpdate_Unknown", method: "PATCH", path: providers + "/nope", bearer: admin, body: `{"display_name": "x"}`, status: 404, code: app.ENOTFOUND},
		{name: "ProviderUpdate_NonAdmin", method: "PATCH", path: providers + "/dev", bearer: bob, body: `{"display_name": "x"}`, status: 403, code: app.EFORBIDDEN},
		{name: "ProviderDelete_LinkedByPool", method: "DELETE", path: providers + "/dev", bearer: admin, status: 409, code: app.ECONFLICT},
		{name: "ProviderDelete_NonAdmin", method: "DELETE", path: providers + "/dev", bearer: bob, status: 403, code: app.EFORBIDDEN},
		{name: "ProviderDelete_AlgNoneAdmin", method: "DELETE", path: providers + "/dev", bearer: algNone, status: 401, code: app.EUNAUTHORIZED},

		// ---- resource pools ----
		{name: "PoolCreate_Name201", method: "POST", path: pools, bearer: admin, body: `{"name": "` + str(201) + `"}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_NameEmpty", method: "POST", path: pools, bearer: admin, body: `{"name": ""}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_NameBidiOverride", method: "POST", path: pools, bearer: admin, body: `{"name": "gpu\u202egnp.exe"}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_NameBidiIsolate", method: "POST", path: pools, bearer: admin, body: `{"name": "gpu\u2066x\u2069"}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_NameLineSeparator", method: "POST", path: pools, bearer: admin, body: `{"name": "a\u2028b"}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_Name201Runes", method: "POST", path: pools, bearer: admin, body: `{"name": "` + strings.Repeat("é", 201) + `"}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_NameNUL", method: "POST", path: pools, bearer: admin, body: `{"name": "a\u0000b"}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_NameNumber", method: "POST", path: pools, bearer: admin, body: `{"name": 5}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_RemoteString", method: "POST", path: pools, bearer: admin, body: `{"name": "x", "remote": "dev"}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_RemoteUnknownField", method: "POST", path: pools, bearer: admin, body: `{"name": "x", "remote": {"provider_id": "dev", "admin": true}}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_RemotePathTraversal", method: "POST", path: pools, bearer: admin, body: `{"name": "x", "remote": {"provider_id": "../dev"}}`, status: 422, code: app.EUNPROCESSABLE},
		{name: "PoolCreate_RemoteUnknownProvider", method: "POST", path: pools, bearer: admin, body: `{"name": "x", "remote": {"provider_id": "nope"}}`, status: 422, code: app.EUNPROCESSABLE},
		{name: "PoolCreate_ByteOrderMark", method: "POST", path: pools, bearer: admin, body: "\ufeff" + `{"name": "x"}`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_Null", method: "POST", path: pools, bearer: admin, body: `null`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_DeepNesting", method: "POST", path: pools, bearer: admin, body: deep, status: 400, code: app.EINVALID},
		{name: "PoolCreate_TrailingGarbage", method: "POST", path: pools, bearer: admin, body: `{"name": "x"}]`, status: 400, code: app.EINVALID},
		{name: "PoolCreate_1MBName", method: "POST", path: pools, bearer: admin, body: oneMB, status: 413, code: app.ETOOLARGE},
		{name: "PoolCreate_BadMediaTypeParam", method: "POST", path: pools, bearer: admin, header: ct("application/json; charset"), body: `{"name": "x"}`, status: 415, code: app.EUNSUPPORTED},
		{name: "PoolCreate_NonAdmin", method: "POST", path: pools, bearer: alice, body: `{"name": "x"}`, status: 403, code: app.EFORBIDDEN},
		{name: "PoolList_AlgNone", method: "GET", path: pools, bearer: algNone, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_SignatureStripped", method: "GET", path: pools, bearer: strippedAdmin, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_HS512", method: "GET", path: pools, bearer: hs512, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_NotYetValid", method: "GET", path: pools, bearer: notYet, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_NoExp", method: "GET", path: pools, bearer: noExp, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_NoSub", method: "GET", path: pools, bearer: noSub, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_SubTooLong", method: "GET", path: pools, bearer: longSub, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_TokenOver16KiB", method: "GET", path: pools, bearer: str(17 << 10), status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_WrongKey", method: "GET", path: pools, bearer: wrongKey, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_BasicScheme", method: "GET", path: pools, header: map[string]string{"Authorization": "Basic cm9vdDpyb290"}, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_BearerWithoutToken", method: "GET", path: pools, header: map[string]string{"Authorization": "Bearer"}, status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolList_ForgedCookie", method: "GET", path: pools, cookie: "not.a.jwt", status: 401, code: app.EUNAUTHORIZED},
		{name: "PoolGet_Zero", method: "GET", path: pools + "/0", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "PoolGet_Negative", method: "GET", path: pools + "/-1", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "PoolGet_Overflow", method: "GET", path: pools + "/99999999999999999999", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "PoolGet_EncodedSlash", method: "GET", path: pools + "/" + gpu + "%2F..%2F" + public, bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "PoolGet_NotVisibleToBob", method: "GET", path: pools + "/" + gpu, bearer: bob, status: 404, code: app.ENOTFOUND},
		{name: "PoolGet_WildcardSubIsNotEveryone", method: "GET", path: pools + "/" + gpu, bearer: wildcard, status: 404, code: app.ENOTFOUND},
		{name: "PoolUpdate_Name201", method: "PATCH", path: pools + "/" + gpu, bearer: admin, body: `{"name": "` + str(201) + `"}`, status: 400, code: app.EINVALID},
		{name: "PoolUpdate_PublicAsString", method: "PATCH", path: pools + "/" + gpu, bearer: admin, body: `{"public": "true"}`, status: 400, code: app.EINVALID},
		{name: "PoolUpdate_RemoteUnknownProvider", method: "PATCH", path: pools + "/" + gpu, bearer: admin, body: `{"remote": {"provider_id": "nope"}}`, status: 422, code: app.EUNPROCESSABLE},
		{name: "PoolUpdate_RemoteProviderIDNumber", method: "PATCH", path: pools + "/" + gpu, bearer: admin, body: `{"remote": {"provider_id": 1}}`, status: 400, code: app.EINVALID},
		{name: "PoolUpdate_Missing", method: "PATCH", path: pools + "/9223372036854775807", bearer: admin, body: `{"name": "x"}`, status: 404, code: app.ENOTFOUND},
		{name: "PoolUpdate_NonAdmin", method: "PATCH", path: pools + "/" + gpu, bearer: alice, body: `{"public": true}`, status: 403, code: app.EFORBIDDEN},
		{name: "PoolDelete_Missing", method: "DELETE", path: pools + "/999999", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "PoolDelete_Float", method: "DELETE", path: pools + "/" + gpu + ".0", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "PoolDelete_NonAdmin", method: "DELETE", path: pools + "/" + gpu, bearer: bob, status: 403, code: app.EFORBIDDEN},

		// ---- pool viewers ----
		{name: "ViewerList_NonAdmin", method: "GET", path: pools + "/" + gpu + "/users", bearer: alice, status: 403, code: app.EFORBIDDEN},
		{name: "ViewerList_PoolNotANumber", method: "GET", path: pools + "/abc/users", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerList_DotDot", method: "GET", path: pools + "/../users", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerList_MissingPool", method: "GET", path: pools + "/999999/users", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerAdd_EmptyArray", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `[]`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_Object", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `{"id": "eve"}`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_NullEntry", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `[null]`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_EmptyID", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `[{"id": ""}]`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_ControlChar", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `[{"id": "eve\u0001"}]`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_C1Control", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `[{"id": "eve\u0085"}]`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_ID513", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `[{"id": "` + str(513) + `"}]`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_1001", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: viewers1001, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_IDNumber", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `[{"id": 7}]`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_UnknownField", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `[{"id": "eve", "relation": "owner"}]`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_OneBadAmongGood", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, body: `[{"id": "eve"}, {"id": ""}]`, status: 400, code: app.EINVALID},
		{name: "ViewerAdd_MissingPool", method: "POST", path: pools + "/999999/users", bearer: admin, body: `[{"id": "eve"}]`, status: 404, code: app.ENOTFOUND},
		{name: "ViewerAdd_TextPlain", method: "POST", path: pools + "/" + gpu + "/users", bearer: admin, header: ct("text/plain"), body: `[{"id": "eve"}]`, status: 415, code: app.EUNSUPPORTED},
		{name: "ViewerAdd_NonAdmin", method: "POST", path: pools + "/" + gpu + "/users", bearer: alice, body: `[{"id": "alice"}]`, status: 403, code: app.EFORBIDDEN},
		{name: "ViewerRemove_WildcardOnPublicPool", method: "DELETE", path: pools + "/" + public + "/users/*", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_EncodedWildcard", method: "DELETE", path: pools + "/" + public + "/users/%2A", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_AtSign", method: "DELETE", path: pools + "/" + gpu + "/users/carol@example.org", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_SpiceDBSubjectSyntax", method: "DELETE", path: pools + "/" + gpu + "/users/user:carol", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_Fragment", method: "DELETE", path: pools + "/" + gpu + "/users/carol%23viewer", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_NUL", method: "DELETE", path: pools + "/" + gpu + "/users/carol%00", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_LeadingSpace", method: "DELETE", path: pools + "/" + gpu + "/users/%20carol", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_UpperCase", method: "DELETE", path: pools + "/" + gpu + "/users/CAROL", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_InvalidUTF8", method: "DELETE", path: pools + "/" + gpu + "/users/%FF%FE", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_EncodedSubjectID", method: "DELETE", path: pools + "/" + public + "/users/%2FZGF2ZUBleGFtcGxlLm9yZw", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_TooLong", method: "DELETE", path: pools + "/" + gpu + "/users/" + str(600), bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_MissingPool", method: "DELETE", path: pools + "/999999/users/carol", bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ViewerRemove_NonAdmin", method: "DELETE", path: pools + "/" + gpu + "/users/carol", bearer: devToken(t, "carol", false), status: 403, code: app.EFORBIDDEN},

		// ---- connections ----
		{name: "ConnectionList_NoToken", method: "GET", path: conns, status: 401, code: app.EUNAUTHORIZED},
		{name: "ConnectionList_ExpiredCookie", method: "GET", path: conns, cookie: expired, status: 401, code: app.EUNAUTHORIZED},
		{name: "ConnectionGet_OtherUser", method: "GET", path: conns + "/" + conn, bearer: bob, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionGet_OtherUserAdmin", method: "GET", path: conns + "/" + conn, bearer: admin, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionGet_OtherUserUpperCase", method: "GET", path: conns + "/" + strings.ToUpper(conn), bearer: bob, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionGet_OtherUserURN", method: "GET", path: conns + "/urn:uuid:" + conn, bearer: bob, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionGet_SubWithTrailingSpace", method: "GET", path: conns + "/" + conn, bearer: aliceSpace, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionGet_SubWithZeroWidth", method: "GET", path: conns + "/" + conn, bearer: aliceZW, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionGet_SubUpperCase", method: "GET", path: conns + "/" + conn, bearer: aliceUpper, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionGet_EncodedTraversal", method: "GET", path: conns + "/..%2f..%2fresource_pools", bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionGet_NilUUID", method: "GET", path: conns + "/00000000-0000-0000-0000-000000000000", bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionGet_VeryLongID", method: "GET", path: conns + "/" + str(8000), bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionDelete_OtherUser", method: "DELETE", path: conns + "/" + conn, bearer: bob, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionDelete_OtherUserBraces", method: "DELETE", path: conns + "/%7B" + conn + "%7D", bearer: bob, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionDelete_NoToken", method: "DELETE", path: conns + "/" + conn, status: 401, code: app.EUNAUTHORIZED},
		{name: "ConnectionDelete_AlgNone", method: "DELETE", path: conns + "/" + conn, bearer: algNone, status: 401, code: app.EUNAUTHORIZED},
		{name: "ConnectionToken_OtherUser", method: "GET", path: conns + "/" + conn + "/token", bearer: bob, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionToken_NUL", method: "GET", path: conns + "/%00/token", bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "ConnectionToken_Expired", method: "GET", path: conns + "/" + conn + "/token", bearer: expired, status: 401, code: app.EUNAUTHORIZED},

		// ---- authorize (a refused next_url must create no state) ----
		{name: "Authorize_ProtocolRelative", method: "GET", path: authorize + q("//evil.example/x"), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_OtherOrigin", method: "GET", path: authorize + q("https://evil.example/"), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_AllowedHostWrongScheme", method: "GET", path: authorize + q("http://app.example/"), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_LookalikeOrigin", method: "GET", path: authorize + q("https://app.example.evil.example/"), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_Javascript", method: "GET", path: authorize + q("javascript:alert(1)"), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_Backslash", method: "GET", path: authorize + q(`/\evil.example`), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_CRLF", method: "GET", path: authorize + q("/ok\r\nSet-Cookie: x=y"), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_NUL", method: "GET", path: authorize + q("/ok\x00"), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_Relative", method: "GET", path: authorize + q("evil"), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_TooLong", method: "GET", path: authorize + q("/"+str(3000)), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_FirstOfTwoBad", method: "GET", path: authorize + q("//evil.example") + "&next_url=" + q("/ui/"), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Authorize_NoToken", method: "GET", path: authorize + q("/ui/"), status: 401, code: app.EUNAUTHORIZED},
		{name: "Authorize_UnknownProvider", method: "GET", path: providers + "/nope/authorize?next_url=" + q("/ui/"), bearer: alice, status: 404, code: app.ENOTFOUND},
		{name: "Authorize_ProviderEncodedSlash", method: "GET", path: providers + "/..%2Fdev/authorize?next_url=" + q("/ui/"), bearer: alice, status: 404, code: app.ENOTFOUND},

		// ---- callback (bad state) ----
		{name: "Callback_NoState", method: "GET", path: callback + "?code=abc", bearer: alice, status: 400, code: app.EINVALID},
		{name: "Callback_ForgedState", method: "GET", path: callback + "?code=abc&state=" + str(43), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Callback_StateTooLong", method: "GET", path: callback + "?code=abc&state=" + str(201), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Callback_StateHuge", method: "GET", path: callback + "?code=abc&state=" + str(100000), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Callback_StateBadEscape", method: "GET", path: callback + "?code=abc&state=%zz", bearer: alice, status: 400, code: app.EINVALID},
		{name: "Callback_StateNUL", method: "GET", path: callback + "?code=abc&state=%00", bearer: alice, status: 400, code: app.EINVALID},
		{name: "Callback_ProviderErrorForgedState", method: "GET", path: callback + "?error=access_denied&state=" + str(43), bearer: alice, status: 400, code: app.EINVALID},
		{name: "Callback_NoToken", method: "GET", path: callback + "?code=abc&state=" + str(43), status: 401, code: app.EUNAUTHORIZED},

		// ---- user page ----
		{name: "UILogin_EmptyUser", method: "POST", path: "/ui/dev/login", header: form, body: "user=", status: 400, code: app.EINVALID},
		{name: "UILogin_ControlChar", method: "POST", path: "/ui/dev/login", header: form, body: "user=root%07&admin=true", status: 400, code: app.EINVALID},
		{name: "UILogin_NUL", method: "POST", path: "/ui/dev/login", header: form, body: "user=root%00", status: 400, code: app.EINVALID},
		{name: "UILogin_InvalidUTF8", method: "POST", path: "/ui/dev/login", header: form, body: "user=%ff%fe", status: 400, code: app.EINVALID},
		{name: "UILogin_UserTooLong", method: "POST", path: "/ui/dev/login", header: form, body: "user=" + str(513), status: 400, code: app.EINVALID},
		{name: "UILogin_MultipartNoBoundary", method: "POST", path: "/ui/dev/login", header: ct("multipart/form-data"), body: "user=root", status: 400, code: app.EINVALID},
		{name: "UILogin_1MB", method: "POST", path: "/ui/dev/login", header: form, body: "user=" + str(1<<20), status: 413, code: app.ETOOLARGE},
		// An unserved method falls into the group's not-found route (as in TestBadInput).
		{name: "UILogin_WrongMethod", method: "PUT", path: "/ui/dev/login", header: form, body: "user=root", status: 404, code: app.ENOTFOUND},
		{name: "UIPage_WrongMethod", method: "POST", path: "/ui/", cookie: alice, header: form, body: "csrf=" + csrfFor(alice), status: 404, code: app.ENOTFOUND},
		{name: "UIStatic_Traversal", method: "GET", path: "/ui/static/..%2f..%2fopenapi.json", status: 404, code: app.ENOTFOUND},
		{name: "UIDisconnect_NoCookie", method: "POST", path: disconnect, header: form, body: "csrf=" + csrfFor(alice), status: 401, code: app.EUNAUTHORIZED},
		{name: "UIDisconnect_BearerOnly", method: "POST", path: disconnect, bearer: alice, header: form, body: "csrf=" + csrfFor(alice), status: 401, code: app.EUNAUTHORIZED},
		{name: "UIDisconnect_ExpiredCookie", method: "POST", path: disconnect, cookie: expired, header: form, body: "csrf=" + csrfFor(expired), status: 401, code: app.EUNAUTHORIZED},
		{name: "UIDisconnect_NoCSRF", method: "POST", path: disconnect, cookie: alice, header: form, body: "x=1", status: 403, code: app.EFORBIDDEN},
		{name: "UIDisconnect_EmptyCSRF", method: "POST", path: disconnect, cookie: alice, header: form, body: "csrf=", status: 403, code: app.EFORBIDDEN},
		{name: "UIDisconnect_OtherCookiesCSRF", method: "POST", path: disconnect, cookie: alice, header: form, body: "csrf=" + csrfFor(bob), status: 403, code: app.EFORBIDDEN},
		{name: "UIDisconnect_CSRFTruncated", method: "POST", path: disconnect, cookie: alice, header: form, body: "csrf=" + csrfFor(alice)[:42], status: 403, code: app.EFORBIDDEN},
		{name: "UIDisconnect_JSONBody", method: "POST", path: disconnect, cookie: alice, body: `{"csrf": "` + csrfFor(alice) + `"}`, status: 403, code: app.EFORBIDDEN},
		{name: "UIDisconnect_OtherUsersConnection", method: "POST", path: disconnect, cookie: bob, header: form, body: "csrf=" + csrfFor(bob), status: 404, code: app.ENOTFOUND},
		{name: "UIDisconnect_TraversalID", method: "POST", path: "/ui/connections/..%2F..%2Fapi/disconnect", cookie: alice, header: form, body: "csrf=" + csrfFor(alice), status: 404, code: app.ENOTFOUND},
		{name: "UIDisconnect_WrongMethod", method: "PUT", path: disconnect, cookie: alice, header: form, body: "csrf=" + csrfFor(alice), status: 404, code: app.ENOTFOUND},
		{name: "UIConfirm_OtherUsersConnection", method: "GET", path: disconnect, cookie: bob, status: 404, code: app.ENOTFOUND},
		{name: "UIConfirm_NoCookie", method: "GET", path: disconnect, status: 401, code: app.EUNAUTHORIZED},
		{name: "UIConfirm_BadID", method: "GET", path: "/ui/connections/not-a-uuid/disconnect", cookie: alice, status: 404, code: app.ENOTFOUND},
		{name: "UILogout_NoCookie", method: "POST", path: "/ui/logout", header: form, body: "csrf=" + csrfFor(alice), status: 401, code: app.EUNAUTHORIZED},
		{name: "UILogout_NoCSRF", method: "POST", path: "/ui/logout", cookie: alice, header: form, body: "x=1", status: 403, code: app.EFORBIDDEN},
		{name: "UILogout_OtherCookiesCSRF", method: "POST", path: "/ui/logout", cookie: alice, header: form, body: "csrf=" + csrfFor(bob), status: 403, code: app.EFORBIDDEN},

		// ---- River UI ----
		{name: "RiverUI_NoToken", method: "GET", path: riverui, status: 401, code: app.EUNAUTHORIZED},
		{name: "RiverUI_NoSlash", method: "GET", path: "/riverui", status: 401, code: app.EUNAUTHORIZED},
		{name: "RiverUI_NonAdmin", method: "GET", path: riverui, bearer: alice, status: 403, code: app.EFORBIDDEN},
		{name: "RiverUI_NonAdminCookie", method: "GET", path: riverui + "api/jobs?state=completed", cookie: alice, status: 403, code: app.EFORBIDDEN},
		{name: "RiverUI_RolesClaimIsString", method: "GET", path: riverui + "api/jobs?state=completed", bearer: rolesAsString, status: 403, code: app.EFORBIDDEN},
		{name: "RiverUI_AlgNoneAdmin", method: "GET", path: riverui + "api/jobs?state=completed", bearer: algNone, status: 401, code: app.EUNAUTHORIZED},
		{name: "RiverUI_ForgedCookie", method: "GET", path: riverui, cookie: wrongKey, status: 401, code: app.EUNAUTHORIZED},
		{name: "RiverUI_NonAdminCancel", method: "POST", path: riverui + "api/jobs/cancel", bearer: bob, body: `{"ids": ["1"]}`, status: 403, code: app.EFORBIDDEN},
		{name: "RiverUI_NonAdminRetry", method: "POST", path: riverui + "api/jobs/retry", bearer: bob, body: `{"ids": ["1"]}`, status: 403, code: app.EFORBIDDEN},
	}

	before := b.stateSnapshot(t)
	seen := map[string]bool{}
	for _, c := range cases {
		require.False(t, seen[c.name], "duplicate case %s", c.name)
		seen[c.name] = true
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.status, app.StatusForCode(c.code), "the case's status and code disagree")
			resp, body := b.send(t, c)
			if !c.upstream {
				require.Less(t, resp.StatusCode, 500, "a 5xx: %s", body)
			}
			require.Equal(t, c.status, resp.StatusCode, "%s %s: %s", c.method, c.path, body)
			require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json"), resp.Header.Get("Content-Type"))
			requireErrorBody(t, body, c.code)
			if c.status == http.StatusUnauthorized {
				require.Equal(t, `Bearer realm="tether"`, resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
	require.GreaterOrEqual(t, len(cases), 60)
	b.tt.WaitSynced(t, 15*time.Second) // anything wrongly queued reaches SpiceDB first
	require.Zero(t, catcher.hits.Load(), "a provider's redirect was followed")
	after := b.stateSnapshot(t)
	for key := range before {
		require.Equal(t, before[key], after[key], "%s changed", key)
	}
}

// Ids a browser percent-encodes (encodeURIComponent) still name the viewer.
func TestViewerIDsPercentEncoded(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, testenv.TetherOpts{NoWorkers: true})
	status, body := b.do(t, http.MethodPost, "/api/data/resource_pools", b.admin, map[string]any{"name": "p"})
	require.Equal(t, http.StatusCreated, status, string(body))
	for _, id := range []string{"dave@example.org", "a b/c", "ünï"} {
		status, body = b.do(t, http.MethodPost, "/api/data/resource_pools/1/users", b.admin, []map[string]string{{"id": id}})
		require.Equal(t, http.StatusCreated, status, string(body))
		status, body = b.do(t, http.MethodDelete, "/api/data/resource_pools/1/users/"+url.PathEscape(strings.ReplaceAll(id, "@", "%40")), b.admin, nil)
		if strings.Contains(id, "@") {
			// "%40" was escaped once more by PathEscape: that names another id.
			require.Equal(t, http.StatusNotFound, status, string(body))
			status, body = b.do(t, http.MethodDelete, "/api/data/resource_pools/1/users/dave%40example.org", b.admin, nil)
		}
		require.Equal(t, http.StatusNoContent, status, "%s: %s", id, body)
	}
	status, body = b.do(t, http.MethodGet, "/api/data/resource_pools/1/users", b.admin, nil)
	require.Equal(t, http.StatusOK, status)
	require.JSONEq(t, `[]`, string(body))
}

// At most one pool is the default.
func TestOneDefaultPool(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, testenv.TetherOpts{NoWorkers: true})
	status, body := b.do(t, http.MethodPost, "/api/data/resource_pools", b.admin, map[string]any{"name": "a", "default": true})
	require.Equal(t, http.StatusCreated, status, string(body))
	status, body = b.do(t, http.MethodPost, "/api/data/resource_pools", b.admin, map[string]any{"name": "b", "default": true})
	require.Equal(t, http.StatusConflict, status, string(body))
	requireErrorBody(t, body, app.ECONFLICT)
}

// Hostile configurations: each is refused at start, naming the variable,
// before anything listens (finding 5: dev mode anywhere but a loopback
// listener; finding 10: an HMAC secret next to a production issuer).
func TestHostileConfiguration(t *testing.T) {
	t.Parallel()
	base := map[string]string{
		"TETHER_DATABASE_URL": "postgres://u@db:5432/tether", "TETHER_SPICEDB_ENDPOINT": "spicedb:50051",
		"TETHER_ENCRYPTION_KEYS": testenv.TestKeyRing, "TETHER_AUTH_HMAC_SECRET": testSecret,
	}
	dev := func(addr string) map[string]string {
		return map[string]string{"TETHER_DEV_MODE": "true", "TETHER_HTTP_ADDR": addr, "TETHER_PUBLIC_URL": "http://tether.example"}
	}
	for _, tc := range []struct {
		name     string
		env      map[string]string
		variable string
	}{
		{"DevModeOnEveryInterface", dev("0.0.0.0:8080"), "TETHER_DEV_MODE"},
		{"DevModeOnEveryInterfaceIPv6", dev("[::]:8080"), "TETHER_DEV_MODE"},
		{"DevModeOnEmptyHost", dev(":8080"), "TETHER_DEV_MODE"},
		{"DevModeOnPublicAddress", dev("203.0.113.7:8080"), "TETHER_DEV_MODE"},
		{"DevModeOnPrivateAddress", dev("10.0.0.7:8080"), "TETHER_DEV_MODE"},
		{"DevModeOnHostname", dev("tether.example:8080"), "TETHER_DEV_MODE"},
		{"DevModeOnLocalhostLookalike", dev("localhost.evil.example:8080"), "TETHER_DEV_MODE"},
		{"DevModeOverHTTPS", map[string]string{"TETHER_DEV_MODE": "true", "TETHER_PUBLIC_URL": "https://tether.example"}, "TETHER_DEV_MODE"},
		{"DevModeWithIssuer", map[string]string{"TETHER_DEV_MODE": "true", "TETHER_AUTH_ISSUER": "https://idp.example", "TETHER_AUTH_AUDIENCE": "tether"}, "TETHER_DEV_MODE"},
		{"HMACSecretWithIssuer", map[string]string{"TETHER_AUTH_ISSUER": "https://idp.example", "TETHER_AUTH_AUDIENCE": "tether"}, "TETHER_AUTH_HMAC_SECRET"},
		{"CookieNameWithSemicolon", map[string]string{"TETHER_AUTH_COOKIE": "tether_token; Domain=example.org"}, "TETHER_AUTH_COOKIE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			_, err := config.Load(func(k string) string { return env[k] }, config.ScopeServe)
			var cfgErr *config.Error
			require.ErrorAs(t, err, &cfgErr)
			require.Contains(t, err.Error(), tc.variable+": ")
		})
	}
	// Dev mode where it belongs still starts.
	for _, addr := range []string{"127.0.0.1:8080", "localhost:8080", "[::1]:8080"} {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		env["TETHER_DEV_MODE"], env["TETHER_HTTP_ADDR"] = "true", addr
		cfg, err := config.Load(func(k string) string { return env[k] }, config.ScopeServe)
		require.NoError(t, err, addr)
		require.True(t, cfg.DevMode)
	}
}
