package oauthtest

import (
	"io"
	"net/http"
	"time"
)

// TokenRequests returns how many POSTs the token endpoint received with
// that grant_type ("authorization_code", "refresh_token", …), or in all
// if grantType is "". Requests refused while down count too.
func (p *Provider) TokenRequests(grantType string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if grantType != "" {
		return p.tokenRequests[grantType]
	}
	n := 0
	for _, c := range p.tokenRequests {
		n += c
	}
	return n
}

// RevokeRequests returns how many POSTs the revocation endpoint received,
// including those refused while down.
func (p *Provider) RevokeRequests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.revokes
}

// SetDown makes the token and revocation endpoints answer 503
// {"error":"temporarily_unavailable"} (down) or work again (!down). The
// login pages and discovery keep working; tokens are not consumed.
func (p *Provider) SetDown(down bool) { p.down.Store(down) }

// SetTokenDelay delays every token-endpoint request by d before it is
// handled (0: none), to make concurrent requests overlap.
func (p *Provider) SetTokenDelay(d time.Duration) { p.tokenDelay.Store(int64(d)) }

func (p *Provider) middleware(next http.Handler) http.Handler {
	tokenPath, revokePath := "/"+TokenPath, "/"+RevokePath
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == tokenPath:
			p.observeClientAuth(r)
			// ParseForm is idempotent: the OP reads the parsed form.
			_ = r.ParseForm()
			p.mu.Lock()
			p.tokenRequests[r.PostForm.Get("grant_type")]++
			p.mu.Unlock()
			if d := time.Duration(p.tokenDelay.Load()); d > 0 {
				select {
				case <-time.After(d):
				case <-r.Context().Done():
					return
				}
			}
			p.waitHold()
			if p.down.Load() {
				unavailable(w)
				return
			}
		case r.Method == http.MethodPost && r.URL.Path == revokePath:
			p.observeClientAuth(r)
			p.mu.Lock()
			p.revokes++
			p.mu.Unlock()
			if p.down.Load() {
				unavailable(w)
				return
			}
			p.exclusive.Lock()
			defer p.exclusive.Unlock()
			next.ServeHTTP(w, r)
			return
		}
		p.exclusive.RLock()
		defer p.exclusive.RUnlock()
		next.ServeHTTP(w, r)
	})
}

func unavailable(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, `{"error":"temporarily_unavailable","error_description":"oauthtest: provider is down"}`)
}
