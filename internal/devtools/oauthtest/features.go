package oauthtest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
)

// Features beyond the example OP that tests switch on: RFC 9207 issuer
// identification, holding token requests, and counting how clients
// authenticate.

// rfc9207 makes the OP identify itself in authorization responses (RFC
// 9207), which the example OP does not: its discovery document says
// authorization_response_iss_parameter_supported, and every redirect to a
// registered redirect URI carries iss.
func (p *Provider) rfc9207(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/"+DiscoveryPath {
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			var doc map[string]any
			if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &doc) != nil {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			doc["authorization_response_iss_parameter_supported"] = true
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(doc)
			return
		}
		next.ServeHTTP(&issWriter{ResponseWriter: w, p: p}, r)
	})
}

type issWriter struct {
	http.ResponseWriter
	p *Provider
}

func (w *issWriter) WriteHeader(code int) {
	if code >= 300 && code < 400 {
		if loc := w.Header().Get("Location"); w.p.toClient(loc) {
			if u, err := url.Parse(loc); err == nil {
				q := u.Query()
				q.Set("iss", w.p.Issuer)
				u.RawQuery = q.Encode()
				w.Header().Set("Location", u.String())
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (p *Provider) toClient(location string) bool {
	for _, uri := range p.RedirectURIs {
		if uri != "" && strings.HasPrefix(location, uri) {
			return true
		}
	}
	return false
}

// HoldTokens makes token requests wait until release is called, whatever
// the client does meanwhile: a request whose client hung up is still
// handled (a provider that rotated a refresh token although nobody read the
// answer). TokensHeld says how many wait.
func (p *Provider) HoldTokens() (release func()) {
	ch := make(chan struct{})
	p.hold.Store(&ch)
	return func() {
		if p.hold.CompareAndSwap(&ch, nil) {
			close(ch)
		}
	}
}

// TokensHeld returns how many token requests HoldTokens holds right now.
func (p *Provider) TokensHeld() int { return int(p.held.Load()) }

// SecretsInBody returns how many token and revocation requests carried
// the client secret in their form (client_secret_post) rather than in
// HTTP Basic authentication.
func (p *Provider) SecretsInBody() int { return int(p.secretsInBody.Load()) }

// observeClientAuth counts a token or revocation request's client secret in
// its body; it leaves the body readable for the OP.
func (p *Provider) observeClientAuth(r *http.Request) {
	if r.Body == nil {
		return
	}
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(r.Body)
	r.Body.Close()
	form, _ := url.ParseQuery(buf.String())
	if form.Get("client_secret") != "" {
		p.secretsInBody.Add(1)
	}
	r.Body = readCloser{bytes.NewReader(buf.Bytes())}
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// waitHold blocks while HoldTokens holds.
func (p *Provider) waitHold() {
	if ch := p.hold.Load(); ch != nil {
		p.held.Add(1)
		<-*ch
		p.held.Add(-1)
	}
}
