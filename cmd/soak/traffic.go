package main

import (
	"context"
	"fmt"
	"log"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/app"
)

// Traffic's shape: how many workers send requests, and the longest pause
// between one worker's requests.
const (
	workers  = 16
	maxPause = 2 * time.Millisecond
)

// traffic is the soak's request mix against srv.
type traffic struct {
	srv   *server
	conns []connection // disconnected in turn, wrapping around
	next  atomic.Int64 // disconnects so far: picks the next connection
	// tokens caches a bearer token per user: signing one per request
	// would make the soak measure HMACs.
	tokens sync.Map
}

// stats are the soak's totals and the server's memory along the way.
type stats struct {
	requests, fivexx atomic.Int64
	// rss is tether serve's resident set in KB: at the start, at the
	// middle sample (after warm-up) and at the end.
	rss struct{ start, middle, end int64 }
}

func (t *traffic) token(user string) string {
	if tok, ok := t.tokens.Load(user); ok {
		return tok.(string)
	}
	tok, _ := app.SignDevToken([]byte(t.srv.secret), user, nil, 24*time.Hour)
	t.tokens.Store(user, tok)
	return tok
}

// op sends one request of the mix — disconnects, reads as random users,
// viewer grants and revocations, pool relinks, metrics scrapes — and
// returns its status (0: no answer).
func (t *traffic) op(ctx context.Context, rng *rand.Rand) int {
	base, admin := t.srv.base, t.srv.admin
	switch r := rng.IntN(100); {
	case r < 35: // disconnect
		i := int(t.next.Add(1)) % len(t.conns)
		c := t.conns[i]
		return call(ctx, "DELETE", base+"/api/data/oauth2/connections/"+c.id, t.token(c.user), "")
	case r < 55:
		return call(ctx, "GET", base+"/api/data/resource_pools", t.token(fmt.Sprintf("u%d", rng.IntN(fixtureUsers)+1)), "")
	case r < 65:
		return call(ctx, "GET", base+"/api/data/oauth2/connections", t.token(fmt.Sprintf("u%d", rng.IntN(fixtureUsers)+1)), "")
	case r < 80:
		return call(ctx, "POST", fmt.Sprintf("%s/api/data/resource_pools/%d/users", base, rng.IntN(fixturePools)+1), admin, fmt.Sprintf(`[{"id":"v%d"}]`, rng.IntN(500)))
	case r < 90:
		code := call(ctx, "DELETE", fmt.Sprintf("%s/api/data/resource_pools/%d/users/v%d", base, rng.IntN(fixturePools)+1, rng.IntN(500)), admin, "")
		if code == 404 {
			return 204 // not a viewer at the moment: fine
		}
		return code
	case r < 97:
		link := []string{`{"provider_id":"alpha"}`, `{"provider_id":"beta"}`, "null"}[rng.IntN(3)]
		return call(ctx, "PATCH", fmt.Sprintf("%s/api/data/resource_pools/%d", base, rng.IntN(fixturePools)+1), admin, `{"remote":`+link+`}`)
	default:
		return call(ctx, "GET", base+"/metrics", "", "")
	}
}

// drive sends the traffic for duration while sampling the RSS of the
// server process pid twenty times, logging progress at each sample.
func (t *traffic) drive(ctx context.Context, duration time.Duration, pid int) *stats {
	st := &stats{}
	start := time.Now()
	soakCtx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.work(ctx, soakCtx, st, rand.New(rand.NewPCG(uint64(w), 7)))
		}()
	}
	samples := 0
	ticker := time.NewTicker(duration / 20)
	defer ticker.Stop()
	st.rss.start = rssKB(pid)
	for {
		select {
		case <-soakCtx.Done():
			wg.Wait()
			st.rss.end = rssKB(pid)
			return st
		case <-ticker.C:
			kb := rssKB(pid)
			if samples++; samples == 10 {
				st.rss.middle = kb
			}
			log.Printf("%s: %d requests, %d 5xx, tether RSS %d MB", time.Since(start).Round(time.Second), st.requests.Load(), st.fivexx.Load(), kb/1024)
		}
	}
}

// work is one worker: requests on ctx until soakCtx ends. A failure after
// the end is not counted: an interrupt cancels requests in flight.
func (t *traffic) work(ctx, soakCtx context.Context, st *stats, rng *rand.Rand) {
	for soakCtx.Err() == nil {
		code := t.op(ctx, rng)
		st.requests.Add(1)
		if code >= 500 || code == 0 {
			if soakCtx.Err() == nil {
				st.fivexx.Add(1)
				log.Printf("server error %d", code)
			}
		}
		time.Sleep(time.Duration(rng.IntN(int(maxPause/time.Microsecond))) * time.Microsecond)
	}
}
