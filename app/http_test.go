package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
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

const testSecret = testenv.HMACSecret

type httpBundle struct {
	tt     *testenv.Tether
	server *app.Server
	url    string
	admin  string
	alice  string
	bob    string
}

func setupHTTP(t *testing.T, opts testenv.TetherOpts) *httpBundle {
	t.Helper()
	tt := testenv.StartTether(t, opts)
	token := func(sub string, roles ...string) string {
		tok, err := app.SignDevToken([]byte(testSecret), sub, roles, time.Hour)
		require.NoError(t, err)
		return tok
	}
	return &httpBundle{tt: tt, server: tt.Server, url: tt.URL,
		admin: token("root", "tether-admin"), alice: token("alice"), bob: token("bob")}
}

// noDevMode is a test engine without dev mode: https-only provider URLs.
func noDevMode() testenv.TetherOpts {
	return testenv.TetherOpts{NoWorkers: true, Config: func(c *config.Config) { c.DevMode = false }}
}

// do sends a request; body may be nil, a string (sent raw) or a value (JSON).
func (b *httpBundle) do(t *testing.T, method, path, token string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	switch v := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(v)
	default:
		buf, err := json.Marshal(v)
		require.NoError(t, err)
		r = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, b.url+path, r)
	require.NoError(t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, out
}

func requireErrorBody(t *testing.T, body []byte, code string) {
	t.Helper()
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(body, &e), "error body must be JSON: %s", body)
	require.Equal(t, code, e.Error.Code, "body: %s", body)
	require.NotEmpty(t, e.Error.Message)
}

func TestSpecDocumentsEveryRoute(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, testenv.TetherOpts{NoWorkers: true})
	status, body := b.do(t, http.MethodGet, "/api/data/spec.json", "", nil)
	require.Equal(t, http.StatusOK, status)
	var spec struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	require.NoError(t, json.Unmarshal(body, &spec))
	require.True(t, strings.HasPrefix(spec.OpenAPI, "3."))
	param := regexp.MustCompile(`:([a-z_]+)`)
	documented := map[string]bool{}
	for path, ops := range spec.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	served := map[string]bool{}
	for _, r := range b.server.Echo.Routes() {
		// River UI is its own application, mounted for admins, not part of the API.
		if strings.HasPrefix(r.Name, "github.com/labstack/echo") || r.Method == "echo_route_any" || strings.HasPrefix(r.Path, "/riverui") {
			continue
		}
		key := r.Method + " " + param.ReplaceAllString(r.Path, "{$1}")
		served[key] = true
		require.True(t, documented[key], "route %s is not in the OpenAPI document", key)
	}
	for key := range documented {
		require.True(t, served[key], "the OpenAPI document lists %s, which is not served", key)
	}
	require.GreaterOrEqual(t, len(served), 18)
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, testenv.TetherOpts{NoWorkers: true})

	sign := func(t *testing.T, build func(*jwt.Builder) *jwt.Builder, key []byte) string {
		tok, err := build(jwt.NewBuilder()).Build()
		require.NoError(t, err)
		signed, err := jwt.Sign(tok, jwt.WithKey(jwa.HS256(), key))
		require.NoError(t, err)
		return string(signed)
	}
	expired := sign(t, func(jb *jwt.Builder) *jwt.Builder {
		return jb.Subject("alice").Expiration(time.Now().Add(-time.Hour))
	}, []byte(testSecret))
	noExp := sign(t, func(jb *jwt.Builder) *jwt.Builder { return jb.Subject("alice") }, []byte(testSecret))
	wrongKey := sign(t, func(jb *jwt.Builder) *jwt.Builder {
		return jb.Subject("alice").Expiration(time.Now().Add(time.Hour))
	}, []byte("another-secret-another-secret-another-secret"))
	// alg "none": header {"alg":"none","typ":"JWT"}, payload with sub and exp, empty signature.
	algNone := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwicm9sZXMiOlsidGV0aGVyLWFkbWluIl19."

	for name, token := range map[string]string{
		"Missing": "", "Expired": expired, "NoExp": noExp, "WrongSignature": wrongKey, "AlgNone": algNone, "Garbage": "not.a.jwt",
	} {
		t.Run(name, func(t *testing.T) {
			status, body := b.do(t, http.MethodGet, "/api/data/resource_pools", token, nil)
			require.Equal(t, http.StatusUnauthorized, status)
			requireErrorBody(t, body, app.EUNAUTHORIZED)
		})
	}

	t.Run("NonAdminOnAdminRoute", func(t *testing.T) {
		status, body := b.do(t, http.MethodPost, "/api/data/resource_pools", b.alice, map[string]any{"name": "x"})
		require.Equal(t, http.StatusForbidden, status)
		requireErrorBody(t, body, app.EFORBIDDEN)
	})

	t.Run("Cookie", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, b.url+"/api/data/resource_pools", nil)
		require.NoError(t, err)
		req.AddCookie(&http.Cookie{Name: "tether_token", Value: b.alice})
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	})

	t.Run("KeycloakRealmRole", func(t *testing.T) {
		tok := sign(t, func(jb *jwt.Builder) *jwt.Builder {
			return jb.Subject("kc").Expiration(time.Now().Add(time.Hour)).
				Claim("realm_access", map[string]any{"roles": []string{"tether-admin"}})
		}, []byte(testSecret))
		status, _ := b.do(t, http.MethodPost, "/api/data/resource_pools", tok, map[string]any{"name": "kc-pool"})
		require.Equal(t, http.StatusCreated, status)
	})
}

// Read-your-writes without any worker running: the API answers from the
// database, so the caller sees its change as soon as the request returns.
func TestReadYourWrites(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, testenv.TetherOpts{NoWorkers: true})
	ctx := context.Background()

	status, body := b.do(t, http.MethodPost, "/api/data/oauth2/providers", b.admin, map[string]any{
		"id": "gitlab", "kind": "gitlab", "display_name": "GitLab", "client_id": "id", "client_secret": "s3cret-value", "url": "https://gitlab.example",
	})
	require.Equal(t, http.StatusCreated, status, string(body))
	require.NotContains(t, string(body), "s3cret-value")
	status, body = b.do(t, http.MethodPost, "/api/data/resource_pools", b.admin, map[string]any{
		"name": "gpu", "remote": map[string]any{"provider_id": "gitlab"},
	})
	require.Equal(t, http.StatusCreated, status, string(body))
	var pool app.Pool
	require.NoError(t, json.Unmarshal(body, &pool))

	listPools := func(token string) []app.Pool {
		status, body := b.do(t, http.MethodGet, "/api/data/resource_pools", token, nil)
		require.Equal(t, http.StatusOK, status)
		var pools []app.Pool
		require.NoError(t, json.Unmarshal(body, &pools))
		return pools
	}
	require.Empty(t, listPools(b.alice))

	conn := b.tt.Connect(t, "alice", "gitlab")
	require.Len(t, listPools(b.alice), 1)
	require.Empty(t, listPools(b.bob))

	status, body = b.do(t, http.MethodGet, "/api/data/oauth2/connections", b.alice, nil)
	require.Equal(t, http.StatusOK, status)
	var conns []app.Connection
	require.NoError(t, json.Unmarshal(body, &conns))
	require.Len(t, conns, 1)
	require.Equal(t, app.StatusConnected, conns[0].Status)
	require.Equal(t, app.SyncPending, conns[0].Sync.State, "no worker runs, so the access is not applied yet")

	// Someone else's connection does not exist for bob.
	status, body = b.do(t, http.MethodDelete, "/api/data/oauth2/connections/"+conn.ID.String(), b.bob, nil)
	require.Equal(t, http.StatusNotFound, status)
	requireErrorBody(t, body, app.ENOTFOUND)

	status, _ = b.do(t, http.MethodDelete, "/api/data/oauth2/connections/"+conn.ID.String(), b.alice, nil)
	require.Equal(t, http.StatusNoContent, status)
	require.Empty(t, listPools(b.alice))
	_ = ctx
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, testenv.TetherOpts{NoWorkers: true})
	status, _ := b.do(t, http.MethodPost, "/api/data/oauth2/providers", b.admin, map[string]any{
		"id": "gitlab", "kind": "gitlab", "display_name": "GitLab", "client_id": "id", "url": "https://gitlab.example",
	})
	require.Equal(t, http.StatusCreated, status)

	for _, tc := range []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"MalformedJSON", "POST", "/api/data/resource_pools", `{"name": `, 400, app.EINVALID},
		{"UnknownField", "POST", "/api/data/resource_pools", `{"name": "x", "colour": "red"}`, 400, app.EINVALID},
		{"WrongType", "POST", "/api/data/resource_pools", `{"name": 5}`, 400, app.EINVALID},
		{"TrailingData", "POST", "/api/data/resource_pools", `{"name": "x"} {}`, 400, app.EINVALID},
		{"EmptyBody", "POST", "/api/data/resource_pools", ` `, 400, app.EINVALID},
		{"MissingName", "POST", "/api/data/resource_pools", `{}`, 400, app.EINVALID},
		{"UnknownProvider", "POST", "/api/data/resource_pools", `{"name": "x", "remote": {"provider_id": "nope"}}`, 422, app.EUNPROCESSABLE},
		{"Oversized", "POST", "/api/data/resource_pools", `{"name": "` + strings.Repeat("a", app.MaxBodyBytes) + `"}`, 413, app.ETOOLARGE},
		{"BadProviderID", "POST", "/api/data/oauth2/providers", `{"id": "../etc", "kind": "github", "display_name": "x", "client_id": "y"}`, 400, app.EINVALID},
		{"DuplicateProvider", "POST", "/api/data/oauth2/providers", `{"id": "gitlab", "kind": "gitlab", "display_name": "x", "client_id": "y", "url": "https://g.example"}`, 409, app.ECONFLICT},
		{"PoolIDNotANumber", "GET", "/api/data/resource_pools/abc", nil, 404, app.ENOTFOUND},
		{"ConnectionIDNotAUUID", "GET", "/api/data/oauth2/connections/..%2f..%2fetc", nil, 404, app.ENOTFOUND},
		{"NoSuchRoute", "GET", "/api/data/nothing", nil, 404, app.ENOTFOUND},
		{"UnservedMethod", "PUT", "/api/data/resource_pools", nil, 404, app.ENOTFOUND},
		{"ViewersNotAnArray", "POST", "/api/data/resource_pools/1/users", `{"id": "x"}`, 400, app.EINVALID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := b.do(t, tc.method, tc.path, b.admin, tc.body)
			require.Equal(t, tc.status, status, string(body))
			requireErrorBody(t, body, tc.code)
		})
	}
}
