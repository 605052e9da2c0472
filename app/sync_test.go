package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/testenv"
)

const syncTimeout = 15 * time.Second

// The incumbent's six cases, and the ones it gets wrong, end to end: service
// call → outbox → River worker → SpiceDB, checked with CheckPermission.
func TestSyncScenarios(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ConnectGrants", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		pool := tt.Pool(t, "gpu", "gitlab", false)
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "alice", pool.ID))
		tt.Connect(t, "alice", "gitlab")
		tt.WaitSynced(t, syncTimeout)
		require.True(t, tt.CanView(t, "alice", pool.ID))
	})

	t.Run("DisconnectRevokes", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		pool := tt.Pool(t, "gpu", "gitlab", false)
		conn := tt.Connect(t, "alice", "gitlab")
		tt.WaitSynced(t, syncTimeout)
		require.True(t, tt.CanView(t, "alice", pool.ID))
		require.NoError(t, tt.Service.ConnectionDelete(ctx, &app.User{ID: "alice"}, conn.ID))
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "alice", pool.ID))
		tt.RequireInSync(t)
	})

	t.Run("NoLinkedPoolIsNoOp", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		pool := tt.Pool(t, "cpu", "", false)
		tt.Connect(t, "alice", "gitlab")
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "alice", pool.ID))
		// The connection itself is projected, and nothing else.
		require.Equal(t, []string{"oauth2_client:gitlab#connected@user:alice"}, tt.Relationships(t))
	})

	t.Run("TwoUsersBothGetAccessAndOneDisconnectLeavesTheOther", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		pool := tt.Pool(t, "gpu", "gitlab", false)
		alice := tt.Connect(t, "alice", "gitlab")
		tt.Connect(t, "bob", "gitlab")
		tt.WaitSynced(t, syncTimeout)
		require.True(t, tt.CanView(t, "alice", pool.ID))
		require.True(t, tt.CanView(t, "bob", pool.ID))
		require.NoError(t, tt.Service.ConnectionDelete(ctx, &app.User{ID: "alice"}, alice.ID))
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "alice", pool.ID))
		require.True(t, tt.CanView(t, "bob", pool.ID))
	})

	t.Run("ManualGrantSurvivesDisconnect", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		pool := tt.Pool(t, "gpu", "gitlab", false)
		conn := tt.Connect(t, "alice", "gitlab")
		_, err := tt.Service.PoolViewerAdd(ctx, pool.ID, []app.PoolViewer{{ID: "alice"}})
		require.NoError(t, err)
		tt.WaitSynced(t, syncTimeout)
		require.NoError(t, tt.Service.ConnectionDelete(ctx, &app.User{ID: "alice"}, conn.ID))
		tt.WaitSynced(t, syncTimeout)
		require.True(t, tt.CanView(t, "alice", pool.ID), "the manual grant must survive the disconnect")
		require.NoError(t, tt.Service.PoolViewerRemove(ctx, pool.ID, "alice"))
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "alice", pool.ID))
	})

	t.Run("PoolCreatedWhileConnectedGrantsAndDisconnectRevokes", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		conn := tt.Connect(t, "alice", "gitlab")
		tt.WaitSynced(t, syncTimeout)
		pool := tt.Pool(t, "gpu", "gitlab", false)
		tt.WaitSynced(t, syncTimeout)
		require.True(t, tt.CanView(t, "alice", pool.ID))
		// The incumbent leaks here: users connected before the pool existed
		// keep access after they disconnect.
		require.NoError(t, tt.Service.ConnectionDelete(ctx, &app.User{ID: "alice"}, conn.ID))
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "alice", pool.ID))
	})

	t.Run("RelinkMovesAccess", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		tt.Provider(t, "github")
		pool := tt.Pool(t, "gpu", "gitlab", false)
		tt.Connect(t, "alice", "gitlab")
		tt.Connect(t, "bob", "github")
		tt.WaitSynced(t, syncTimeout)
		require.True(t, tt.CanView(t, "alice", pool.ID))
		require.False(t, tt.CanView(t, "bob", pool.ID))
		_, err := tt.Service.PoolUpdate(ctx, pool.ID, &app.PoolInput{Remote: app.Optional[app.Remote]{Set: true, Value: &app.Remote{ProviderID: "github"}}})
		require.NoError(t, err)
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "alice", pool.ID))
		require.True(t, tt.CanView(t, "bob", pool.ID))
	})

	t.Run("UnlinkAndDeleteRemoveAccess", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		unlinked := tt.Pool(t, "a", "gitlab", false)
		deleted := tt.Pool(t, "b", "gitlab", false)
		tt.Connect(t, "alice", "gitlab")
		tt.WaitSynced(t, syncTimeout)
		require.True(t, tt.CanView(t, "alice", unlinked.ID))
		require.True(t, tt.CanView(t, "alice", deleted.ID))
		_, err := tt.Service.PoolUpdate(ctx, unlinked.ID, &app.PoolInput{Remote: app.Optional[app.Remote]{Set: true}})
		require.NoError(t, err)
		require.NoError(t, tt.Service.PoolDelete(ctx, deleted.ID))
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "alice", unlinked.ID))
		require.False(t, tt.CanView(t, "alice", deleted.ID))
		tt.RequireInSync(t)
	})

	t.Run("ProviderDeleteRemovesConnectionsAccess", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		pool := tt.Pool(t, "gpu", "gitlab", false)
		tt.Connect(t, "alice", "gitlab")
		tt.Connect(t, "bob", "gitlab")
		tt.WaitSynced(t, syncTimeout)

		err := tt.Service.ProviderDelete(ctx, "gitlab")
		require.Equal(t, app.ECONFLICT, app.ErrorCode(err), "a linked provider cannot be deleted")

		require.NoError(t, tt.Service.PoolDelete(ctx, pool.ID))
		require.NoError(t, tt.Service.ProviderDelete(ctx, "gitlab"))
		tt.WaitSynced(t, syncTimeout)
		require.Empty(t, tt.Relationships(t))
		conns, err := tt.Service.ConnectionList(ctx, &app.User{ID: "alice"})
		require.NoError(t, err)
		require.Empty(t, conns)
	})

	t.Run("PublicPoolVisibleToAll", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		pool := tt.Pool(t, "shared", "", true)
		tt.WaitSynced(t, syncTimeout)
		require.True(t, tt.CanView(t, "anyone", pool.ID))
		require.True(t, tt.CanView(t, "*", pool.ID))
		_, err := tt.Service.PoolUpdate(ctx, pool.ID, &app.PoolInput{Public: new(bool)})
		require.NoError(t, err)
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "anyone", pool.ID))
	})

	t.Run("ErrorStatusRevokesAndReconnectRestores", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		pool := tt.Pool(t, "gpu", "gitlab", false)
		tt.Connect(t, "alice", "gitlab")
		tt.WaitSynced(t, syncTimeout)
		_, err := tt.Service.ConnectionSetStatus(ctx, "alice", "gitlab", "error")
		require.NoError(t, err)
		tt.WaitSynced(t, syncTimeout)
		require.False(t, tt.CanView(t, "alice", pool.ID))
		tt.Connect(t, "alice", "gitlab")
		tt.WaitSynced(t, syncTimeout)
		require.True(t, tt.CanView(t, "alice", pool.ID))
	})

	t.Run("SubjectsOutsideSpiceDBAlphabet", func(t *testing.T) {
		t.Parallel()
		tt := testenv.StartTether(t, testenv.TetherOpts{})
		tt.Provider(t, "gitlab")
		pool := tt.Pool(t, "gpu", "gitlab", false)
		for _, user := range []string{"alice@example.org", "*", "user:with spaces/and#hash", "日本語"} {
			tt.Connect(t, user, "gitlab")
		}
		tt.WaitSynced(t, syncTimeout)
		for _, user := range []string{"alice@example.org", "*", "user:with spaces/and#hash", "日本語"} {
			require.True(t, tt.CanView(t, user, pool.ID), user)
		}
		require.False(t, tt.CanView(t, "bob", pool.ID), "a sub of * must not become the wildcard")
		tt.RequireInSync(t)
	})
}
