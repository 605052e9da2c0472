package app_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
)

// listConnections is GET /api/data/oauth2/connections as user.
func (b *oauthBundle) listConnections(t *testing.T, client *http.Client) []app.Connection {
	t.Helper()
	resp, body := get(t, client, b.url+"/api/data/oauth2/connections")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	var conns []app.Connection
	require.NoError(t, json.Unmarshal([]byte(body), &conns), body)
	return conns
}

// An authorization that is never finished ends when its state expires. The
// pending connection of a user who never connected goes: from the API at
// once, from the table at the next sweep. A re-authorization of a connected
// user falls back to connected, its access kept. Nothing waits meanwhile:
// the never-connected row's sync.state says none and no key is pending.
func TestAbandonedConnectEnds(t *testing.T) {
	t.Parallel()
	const ttl = 3 * time.Second
	b := setupServer(t, testenv.TetherOpts{StateTTL: ttl,
		Client: func(cfg *jobs.ClientConfig) { cfg.ExpireInterval = 100 * time.Millisecond }})
	ctx := context.Background()
	alice, bob := b.browser(t, "alice"), b.browser(t, "bob")
	b.tt.Connect(t, "bob", "dev")
	b.tt.WaitSynced(t, 15*time.Second)
	require.True(t, b.tt.CanView(t, "bob", b.pool.ID))

	b.authorize(t, alice, "/ui/")                               // alice never comes back
	bobCallback := b.login(t, bob, b.authorize(t, bob, "/ui/")) // bob comes back too late
	started := time.Now()

	conns := b.listConnections(t, alice)
	require.Len(t, conns, 1)
	require.Equal(t, app.StatusPending, conns[0].Status)
	require.NotNil(t, conns[0].AuthorizingUntil)
	require.Equal(t, app.SyncNone, conns[0].Sync.State, "nothing is waiting to be applied")
	pendingID := conns[0].ID
	conns = b.listConnections(t, bob)
	require.Len(t, conns, 1)
	require.Equal(t, app.StatusConnected, conns[0].Status, "a re-authorization keeps the connection")
	require.NotNil(t, conns[0].AuthorizingUntil)
	require.Equal(t, app.SyncSynced, conns[0].Sync.State)
	oldest, err := dbsqlc.New().SyncOldestPending(ctx, b.tt.DB)
	require.NoError(t, err)
	require.Zero(t, oldest.PendingKeys, "an authorization in flight is no sync work")

	require.Eventually(t, func() bool { return len(b.listConnections(t, alice)) == 0 }, ttl+10*time.Second, 50*time.Millisecond,
		"the abandoned connection is gone once its state expired")
	require.GreaterOrEqual(t, time.Since(started), ttl-time.Second, "it went only when its state expired")
	resp, body := get(t, alice, b.url+"/api/data/oauth2/connections/"+pendingID.String())
	require.Equal(t, http.StatusNotFound, resp.StatusCode, body)
	require.Eventually(t, func() bool {
		return countRows(t, b, "SELECT count(*) FROM oauth2_connections WHERE user_id = 'alice'") == 0 &&
			countRows(t, b, "SELECT count(*) FROM oauth2_connections WHERE authorizing_until IS NOT NULL") == 0
	}, 15*time.Second, 50*time.Millisecond, "the sweep removes the row and ends bob's expired re-authorization")

	conns = b.listConnections(t, bob)
	require.Len(t, conns, 1)
	require.Equal(t, app.StatusConnected, conns[0].Status, "bob falls back to connected")
	require.Nil(t, conns[0].AuthorizingUntil)
	require.True(t, b.tt.CanView(t, "bob", b.pool.ID), "with his access")

	// bob's late callback: told it expired, back on the page; nothing changes.
	resp, body = get(t, bob, bobCallback.String())
	require.Equal(t, http.StatusFound, resp.StatusCode, body)
	require.Equal(t, "/ui/?error=authorization_expired", resp.Header.Get("Location"))
	require.Equal(t, app.StatusConnected, b.connection(t, "bob").Status)
	require.True(t, b.tt.CanView(t, "bob", b.pool.ID))
}

// A connection shows which account it connected, when, and with which
// scopes: the account's name from the provider (userinfo here: the OP's ID
// token carries only sub), never a token.
func TestConnectionShowsAccount(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	alice := b.browser(t, "alice")
	before := time.Now().Add(-time.Second)
	b.connect(t, alice)

	conns := b.listConnections(t, alice)
	require.Len(t, conns, 1)
	c := conns[0]
	require.Equal(t, app.StatusConnected, c.Status)
	require.NotNil(t, c.Account)
	require.Equal(t, b.op.Users[0].Username, *c.Account)
	require.Subset(t, c.Scopes, []string{"openid", "profile", "offline_access"})
	require.NotNil(t, c.ConnectedAt)
	require.WithinRange(t, *c.ConnectedAt, before, time.Now().Add(time.Second))
	require.Nil(t, c.AuthorizingUntil)

	_, tok := b.token(t, alice, c.ID)
	var stored string
	require.NoError(t, b.tt.DB.QueryRow(context.Background(),
		"SELECT coalesce(account, '') || ' ' || array_to_string(granted_scopes, ' ') FROM oauth2_connections WHERE id = $1", c.ID).Scan(&stored))
	require.NotContains(t, stored, tok.AccessToken)
}
