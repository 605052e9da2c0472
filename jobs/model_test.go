package jobs_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// model is what the API promises, kept in plain Go: who may view which pool.
type model struct {
	providers   map[string]bool      // exists
	connections map[[2]string]string // (user, provider) → status
	pools       map[int64]*modelPool // alive pools
}

type modelPool struct {
	link    string
	public  bool
	viewers map[string]bool
}

func (m *model) canView(user string, poolID int64) bool {
	p := m.pools[poolID]
	if p == nil {
		return false
	}
	return p.public || p.viewers[user] || (p.link != "" && m.connections[[2]string{user, p.link}] == "connected")
}

// TestModel runs random sequences of every operation that affects access
// against the real service, with 8 concurrent workers and SpiceDB writes that
// fail before or after landing and are randomly delayed (so same-key jobs
// overlap and reorder), and with faults of the outside world as operations:
// writes and deletes on Tether's relations by someone else, and SpiceDB
// wiped (its in-memory server restarted). Each engine heals itself as in
// production; the test never reconciles. After each sequence drains,
// SpiceDB (CheckPermission, fully consistent), the API's database-computed
// view and the model must agree exactly, and a full ReadRelationships dump
// must equal the relationships derived from Postgres.
// TETHER_MODEL_SEQUENCES (default 1000) sets the number of sequences,
// spread over four engines, two of which hand changes off after the commit.
func TestModel(t *testing.T) {
	t.Parallel()
	total := 1000
	if v := os.Getenv("TETHER_MODEL_SEQUENCES"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err)
		total = n
	}
	const engines = 4
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "rapid.checks" })
	if !explicit {
		require.NoError(t, flag.Set("rapid.checks", strconv.Itoa((total+engines-1)/engines)))
	}
	var sequences, injected, foreign, wipes atomic.Int64
	t.Cleanup(func() {
		t.Logf("%d sequences, %d injected SpiceDB faults, %d foreign writes, %d wipes",
			sequences.Load(), injected.Load(), foreign.Load(), wipes.Load())
	})
	for e := range engines {
		t.Run(fmt.Sprintf("Engine%d", e), func(t *testing.T) {
			t.Parallel()
			f := &faults{rng: rand.New(rand.NewPCG(uint64(e), 42)), failBefore: 0.15, failAfter: 0.15, maxDelay: 3 * time.Millisecond}
			proc := testenv.StartSpiceDBProcess(t, false) // its own, to wipe
			tt := testenv.StartTether(t, testenv.TetherOpts{
				Heal: true,
				SpiceDB: func(c *spicedb.Config) {
					*c = proc.Config()
					c.DialOptions = append(c.DialOptions, f.interceptor())
				},
				Client: func(c *jobs.ClientConfig) { c.MaxWorkers = 8 },
				// Half the engines hand their changes off after the commit
				// (TETHER_SYNC_HANDOFF_GRACE), half leave them all to River.
				Config: func(c *config.Config) {
					if e%2 == 1 {
						c.HandOffGrace = 2 * time.Second
					}
				},
			})
			outside := &outsideWorld{proc: proc, client: testenv.ForeignClient(t, proc.Config())}
			var seq atomic.Int64
			rapid.Check(t, func(rt *rapid.T) {
				runSequence(rt, tt, outside, fmt.Sprintf("e%ds%d", e, seq.Add(1)))
				sequences.Add(1)
			})
			foreign.Add(outside.writes)
			wipes.Add(outside.wipes)
			f.mu.Lock()
			injected.Add(int64(f.injected))
			f.mu.Unlock()
		})
	}
}

// outsideWorld makes the faults no test of Tether's own code can: someone
// else writing to SpiceDB, and SpiceDB losing everything.
type outsideWorld struct {
	proc          *testenv.SpiceDBProcess
	client        *spicedb.Client // writes without Tether's metadata
	writes, wipes int64
}

func runSequence(rt *rapid.T, tt *testenv.Tether, outside *outsideWorld, ns string) {
	ctx := context.Background()
	m := &model{providers: map[string]bool{}, connections: map[[2]string]string{}, pools: map[int64]*modelPool{}}
	providers := []string{ns + "-p0", ns + "-p1"}
	users := []string{ns + "-u0", ns + "-u1", ns + "@u2 odd/id"}
	var poolIDs []int64 // every pool ever created in this sequence
	for _, p := range providers {
		tt.Provider(rt, p)
		m.providers[p] = true
	}
	user := rapid.SampledFrom(users)
	provider := rapid.SampledFrom(providers)
	linkOrNone := rapid.SampledFrom(append([]string{""}, providers...))
	pickPool := func(rt *rapid.T) (int64, bool) {
		if len(poolIDs) == 0 {
			return 0, false
		}
		return rapid.SampledFrom(poolIDs).Draw(rt, "pool"), true
	}
	remote := func(link string) app.Optional[app.Remote] {
		if link == "" {
			return app.Optional[app.Remote]{Set: true}
		}
		return app.Optional[app.Remote]{Set: true, Value: &app.Remote{ProviderID: link}}
	}
	linked := func(p string) bool {
		for _, pool := range m.pools {
			if pool.link == p {
				return true
			}
		}
		return false
	}

	actions := map[string]func(*rapid.T){
		"connect": func(rt *rapid.T) {
			u, p := user.Draw(rt, "user"), provider.Draw(rt, "provider")
			_, err := tt.Service.ConnectionSetStatus(ctx, u, p, "connected")
			if !m.providers[p] {
				require.Equal(rt, app.ENOTFOUND, app.ErrorCode(err))
				return
			}
			require.NoError(rt, err)
			m.connections[[2]string{u, p}] = "connected"
		},
		"refreshFails": func(rt *rapid.T) {
			u, p := user.Draw(rt, "user"), provider.Draw(rt, "provider")
			if m.connections[[2]string{u, p}] == "" {
				return
			}
			_, err := tt.Service.ConnectionSetStatus(ctx, u, p, "error")
			require.NoError(rt, err)
			m.connections[[2]string{u, p}] = "error"
		},
		"disconnect": func(rt *rapid.T) {
			u, p := user.Draw(rt, "user"), provider.Draw(rt, "provider")
			conns, err := tt.Service.ConnectionList(ctx, &app.User{ID: u})
			require.NoError(rt, err)
			for _, c := range conns {
				if c.ProviderID == p {
					require.NoError(rt, tt.Service.ConnectionDelete(ctx, &app.User{ID: u}, c.ID))
					delete(m.connections, [2]string{u, p})
					return
				}
			}
			require.Empty(rt, m.connections[[2]string{u, p}])
		},
		"createPool": func(rt *rapid.T) {
			link, public := linkOrNone.Draw(rt, "link"), rapid.Bool().Draw(rt, "public")
			if link != "" && !m.providers[link] {
				return
			}
			pool := tt.Pool(rt, "pool", link, public)
			poolIDs = append(poolIDs, pool.ID)
			m.pools[pool.ID] = &modelPool{link: link, public: public, viewers: map[string]bool{}}
		},
		"relink": func(rt *rapid.T) {
			id, ok := pickPool(rt)
			link := linkOrNone.Draw(rt, "link")
			if !ok || m.pools[id] == nil || (link != "" && !m.providers[link]) {
				return
			}
			_, err := tt.Service.PoolUpdate(ctx, id, &app.PoolInput{Remote: remote(link)})
			require.NoError(rt, err)
			m.pools[id].link = link
		},
		"setPublic": func(rt *rapid.T) {
			id, ok := pickPool(rt)
			public := rapid.Bool().Draw(rt, "public")
			if !ok || m.pools[id] == nil {
				return
			}
			_, err := tt.Service.PoolUpdate(ctx, id, &app.PoolInput{Public: &public})
			require.NoError(rt, err)
			m.pools[id].public = public
		},
		"deletePool": func(rt *rapid.T) {
			id, ok := pickPool(rt)
			if !ok {
				return
			}
			err := tt.Service.PoolDelete(ctx, id)
			if m.pools[id] == nil {
				require.Equal(rt, app.ENOTFOUND, app.ErrorCode(err))
				return
			}
			require.NoError(rt, err)
			delete(m.pools, id)
		},
		"grant": func(rt *rapid.T) {
			id, ok := pickPool(rt)
			u := user.Draw(rt, "user")
			if !ok || m.pools[id] == nil {
				return
			}
			_, err := tt.Service.PoolViewerAdd(ctx, id, []app.PoolViewer{{ID: u}})
			require.NoError(rt, err)
			m.pools[id].viewers[u] = true
		},
		"ungrant": func(rt *rapid.T) {
			id, ok := pickPool(rt)
			u := user.Draw(rt, "user")
			if !ok || m.pools[id] == nil {
				return
			}
			err := tt.Service.PoolViewerRemove(ctx, id, u)
			if !m.pools[id].viewers[u] {
				require.Equal(rt, app.ENOTFOUND, app.ErrorCode(err))
				return
			}
			require.NoError(rt, err)
			delete(m.pools[id].viewers, u)
		},
		"deleteProvider": func(rt *rapid.T) {
			p := provider.Draw(rt, "provider")
			err := tt.Service.ProviderDelete(ctx, p)
			switch {
			case !m.providers[p]:
				require.Equal(rt, app.ENOTFOUND, app.ErrorCode(err))
			case linked(p):
				require.Equal(rt, app.ECONFLICT, app.ErrorCode(err))
			default:
				require.NoError(rt, err)
				delete(m.providers, p)
				for k := range m.connections {
					if k[1] == p {
						delete(m.connections, k)
					}
				}
			}
		},
		"recreateProvider": func(rt *rapid.T) {
			p := provider.Draw(rt, "provider")
			if m.providers[p] {
				return
			}
			tt.Provider(rt, p)
			m.providers[p] = true
		},
	}
	// Faults of the outside world, drawn less often than the operations.
	someone := func(rt *rapid.T) {
		pool := fmt.Sprint(rapid.SampledFrom(append(poolIDs, 0)).Draw(rt, "pool"))
		subject := rapid.SampledFrom(append(slices.Clone(users), "intruder", spicedb.Wildcard)).Draw(rt, "subject")
		if subject != spicedb.Wildcard {
			subject = spicedb.SubjectID(subject)
		}
		rels := []spicedb.Relationship{
			{ResourceType: spicedb.TypeResourcePool, ResourceID: pool, Relation: spicedb.RelViewer, SubjectType: spicedb.TypeUser, SubjectID: subject},
			{ResourceType: spicedb.TypeResourcePool, ResourceID: pool, Relation: spicedb.RelProvider, SubjectType: spicedb.TypeOAuth2Client, SubjectID: provider.Draw(rt, "link")},
		}
		if subject != spicedb.Wildcard {
			rels = append(rels, spicedb.Relationship{ResourceType: spicedb.TypeOAuth2Client, ResourceID: provider.Draw(rt, "provider"),
				Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: subject})
		}
		u := spicedb.Update{Relationship: rapid.SampledFrom(rels).Draw(rt, "relationship"), Delete: rapid.Bool().Draw(rt, "delete")}
		_, err := outside.client.Write(ctx, []spicedb.Update{u})
		switch {
		case err == nil:
			outside.writes++
		case spicedb.IsSchemaMissing(err) || spicedb.IsTransient(err):
			// Just after a wipe the intruder fails too (no schema yet, or
			// SpiceDB still starting): nothing was written.
		default:
			rt.Fatalf("foreign write %v: %v", u, err)
		}
	}
	wipe := func() {
		outside.proc.Stop()
		outside.proc.Start() // empty: no schema, no relationships
		outside.wipes++
	}
	names := sortedKeys(actions)
	steps := rapid.IntRange(1, 12).Draw(rt, "steps")
	for range steps {
		switch rapid.IntRange(0, 39).Draw(rt, "kind") { // rapid favours small draws: faults at the top
		case 39:
			wipe()
		case 31, 32, 33, 34, 35, 36, 37, 38:
			someone(rt)
		default:
			actions[rapid.SampledFrom(names).Draw(rt, "action")](rt)
		}
	}

	// Drained: no reconcile, just the engine healing itself.
	tt.WaitConverged(rt, 30*time.Second)
	for _, u := range users {
		visible, err := tt.Service.PoolList(ctx, &app.User{ID: u})
		require.NoError(rt, err)
		apiView := map[int64]bool{}
		for _, p := range visible {
			apiView[p.ID] = true
		}
		for _, id := range poolIDs {
			want := m.canView(u, id)
			require.Equal(rt, want, tt.CanView(rt, u, id), "SpiceDB: may %s view pool %d?", u, id)
			require.Equal(rt, want, apiView[id], "API: may %s view pool %d?", u, id)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
