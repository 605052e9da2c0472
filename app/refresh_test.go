package app_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/oauthtest"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/internal/keyring"
)

// Finding 8: token refreshes.

// waitFor polls cond until it holds, failing after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, timeout, 5*time.Millisecond, what)
}

// A client that hangs up while the provider rotates the refresh token does
// not lose the new one: the refresh finishes and stores it on its own.
func TestRefreshOutlivesTheRequest(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	alice := b.browser(t, "alice")
	b.connect(t, alice)
	conn := b.connection(t, "alice")
	old := b.storedRefreshToken(t, conn.ID)
	b.expireToken(t, conn.ID)
	refreshes := b.op.TokenRequests(oauthtest.GrantRefreshToken)

	release := b.op.HoldTokens()
	defer release()
	ctx, hangUp := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url+"/api/data/oauth2/connections/"+conn.ID.String()+"/token", nil)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		resp, err := alice.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waitFor(t, 10*time.Second, "the refresh reaches the provider", func() bool { return b.op.TokensHeld() == 1 })
	hangUp()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("the client's request did not end")
	}
	release() // the provider rotates the refresh token and answers nobody…
	waitFor(t, 10*time.Second, "…but Tether stores the rotated token", func() bool {
		return b.storedRefreshToken(t, conn.ID) != old
	})
	status, tok := b.token(t, alice, conn.ID)
	require.Equal(t, http.StatusOK, status)
	require.NotEmpty(t, tok.AccessToken)
	require.Equal(t, refreshes+1, b.op.TokenRequests(oauthtest.GrantRefreshToken), "one refresh, stored once")
	require.Equal(t, app.StatusConnected, b.connection(t, "alice").Status)
}

// Slow refreshes hold no database connection and are bounded in number:
// with every refresh stuck at the provider, more of them than the pool has
// connections, changes still commit and sync.
func TestRefreshesNeverStarveTheDatabase(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	const users = 24 // more than the pool's 20 connections
	conns := make([]uuid.UUID, users)
	clients := make([]*http.Client, users)
	for i := range users {
		user := fmt.Sprint("user-", i)
		clients[i] = b.browser(t, user)
		b.connect(t, clients[i])
		conns[i] = b.connection(t, user).ID
		b.expireToken(t, conns[i])
	}
	b.tt.WaitSynced(t, 15*time.Second)
	refreshes := b.op.TokenRequests(oauthtest.GrantRefreshToken)
	release := b.op.HoldTokens()
	defer release()
	var wg sync.WaitGroup
	statuses := make([]int, users)
	for i := range users {
		wg.Go(func() { statuses[i], _ = b.token(t, clients[i], conns[i]) })
	}
	limit := app.DefaultMaxRefreshes
	waitFor(t, 10*time.Second, "refreshes reach the provider", func() bool { return b.op.TokensHeld() == limit })
	require.Equal(t, refreshes+limit, b.op.TokenRequests(oauthtest.GrantRefreshToken), "no more than the bound in flight")

	// Meanwhile the database serves everyone else: a change commits and
	// River syncs it.
	pool := b.tt.Pool(t, "while-refreshing", "", true)
	b.tt.WaitSynced(t, 10*time.Second)
	require.True(t, b.tt.CanView(t, "anyone", pool.ID))
	require.Equal(t, limit, b.op.TokensHeld())

	release()
	wg.Wait()
	for i, status := range statuses {
		require.Equal(t, http.StatusOK, status, "user %d", i)
	}
	require.Equal(t, refreshes+users, b.op.TokenRequests(oauthtest.GrantRefreshToken), "one refresh per connection")
}

// A refresh has its own deadline: a provider that does not answer costs
// the caller at most that long, and the connection's lease is given back.
func TestRefreshDeadline(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	b.tt.Service.OAuth.RefreshTimeout = 300 * time.Millisecond // before the first refresh
	alice := b.browser(t, "alice")
	b.connect(t, alice)
	conn := b.connection(t, "alice")
	b.expireToken(t, conn.ID)
	release := b.op.HoldTokens()
	defer release()
	start := time.Now()
	status, _ := b.token(t, alice, conn.ID)
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Less(t, time.Since(start), 3*time.Second, "the refresh's deadline, not the provider, ended it")
	require.Zero(t, countRows(t, b, "SELECT count(*) FROM oauth2_connections WHERE refresh_lease_id IS NOT NULL"), "lease released")
	release()
}

// Concurrent refreshes of one connection, from two processes, make one
// provider call; every caller gets the refreshed token.
func TestConcurrentRefreshAcrossProcesses(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	other := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true, DatabaseURL: b.tt.Config.DatabaseURL})
	alice := b.browser(t, "alice")
	b.connect(t, alice)
	conn := b.connection(t, "alice")
	b.expireToken(t, conn.ID)
	refreshes := b.op.TokenRequests(oauthtest.GrantRefreshToken)
	release := b.op.HoldTokens()
	defer release()

	user := &app.User{ID: "alice"}
	var wg sync.WaitGroup
	tokens := make([]string, 10)
	errs := make([]error, 10)
	for i := range tokens {
		svc := b.tt.Service
		if i%2 == 1 {
			svc = other.Service
		}
		wg.Go(func() {
			tok, err := svc.ConnectionToken(context.Background(), user, conn.ID)
			if err == nil {
				tokens[i] = tok.AccessToken
			}
			errs[i] = err
		})
	}
	waitFor(t, 10*time.Second, "one refresh reaches the provider", func() bool { return b.op.TokensHeld() == 1 })
	release()
	wg.Wait()
	for i := range tokens {
		require.NoError(t, errs[i])
		require.Equal(t, tokens[0], tokens[i])
	}
	require.Equal(t, refreshes+1, b.op.TokenRequests(oauthtest.GrantRefreshToken), "one provider call for all")
}

// An expired token under an older key is re-encrypted and refreshed in one
// call: the re-encryption does not pass for someone else's refresh.
func TestRefreshUnderOldKey(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	alice := b.browser(t, "alice")
	b.connect(t, alice)
	conn := b.connection(t, "alice")
	b.expireToken(t, conn.ID) // under the test key
	newKey := "k2:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))
	both, err := keyring.Parse(newKey + "," + testenv.TestKeyRing)
	require.NoError(t, err)
	svc := *b.tt.Service
	svc.Keys = both
	refreshes := b.op.TokenRequests(oauthtest.GrantRefreshToken)
	tok, err := svc.ConnectionToken(context.Background(), &app.User{ID: "alice"}, conn.ID)
	require.NoError(t, err)
	require.True(t, tok.ExpiresAt.After(time.Now()), "a fresh token, not the expired one")
	require.Equal(t, refreshes+1, b.op.TokenRequests(oauthtest.GrantRefreshToken))
}
