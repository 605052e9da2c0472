package app_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode"

	"github.com/tetherhq/tether/app"
)

var fuzzOrigins = []string{"https://app.example", "http://localhost:3000"}

// An accepted next_url is a same-site path or an allowed origin, and stays
// one when the callback adds an error to it: no open redirect either way.
func FuzzValidateNextURL(f *testing.F) {
	for _, seed := range []string{"/ui/", "//evil.example", "/\\evil", "https://app.example/x", "https://APP.example",
		"javascript:alert(1)", "http://localhost:3000/a?b=c#d", "https://app.example@evil.example/", "/%2F%2Fevil",
		"https:evil.example", "/a\tb", "https://app.example.evil.example/", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		next, err := app.ValidateNextURL(raw, fuzzOrigins)
		if err != nil {
			if app.ErrorCode(err) != app.EINVALID {
				t.Fatalf("unexpected error code for %q: %v", raw, err)
			}
			return
		}
		for _, candidate := range []string{next, app.WithError(next, "access_denied")} {
			if candidate == "" || (candidate == app.WithError("", "access_denied") && next == "") {
				continue
			}
			requireSafeRedirect(t, raw, candidate)
		}
	})
}

func requireSafeRedirect(t *testing.T, raw, target string) {
	t.Helper()
	for _, r := range target {
		if unicode.IsControl(r) || r == '\\' {
			t.Fatalf("%q → %q holds a control character or backslash", raw, target)
		}
	}
	// Resolve it the way a browser would, against Tether's own origin.
	base, _ := url.Parse("https://tether.example/api/data/oauth2/callback")
	ref, err := url.Parse(target)
	if err != nil {
		t.Fatalf("%q → %q does not parse: %v", raw, target, err)
	}
	resolved := base.ResolveReference(ref)
	origin := resolved.Scheme + "://" + strings.ToLower(resolved.Host)
	if origin != "https://tether.example" && origin != fuzzOrigins[0] && origin != fuzzOrigins[1] {
		t.Fatalf("%q → %q redirects to %s", raw, target, origin)
	}
	if resolved.User != nil {
		t.Fatalf("%q → %q carries credentials", raw, target)
	}
}

// Request decoding never panics, and accepts only a single JSON object of
// the known fields.
func FuzzDecodeJSON(f *testing.F) {
	for _, seed := range []string{`{"name":"x"}`, `{"name":"x","remote":null}`, `{"remote":{"provider_id":"p"}}`,
		`{"name":1}`, `{"name":"x"} {}`, `[]`, `null`, `{"remote":{"provider_id":"p","x":1}}`, `{"name":"\u0000"}`, ``} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := http.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		var in app.PoolInput
		if err := app.DecodeJSON(req, &in); err != nil {
			if code := app.ErrorCode(err); code != app.EINVALID && code != app.ETOOLARGE {
				t.Fatalf("decoding %q: unexpected code %s", body, code)
			}
			return
		}
		if !strings.HasPrefix(strings.TrimSpace(body), "{") {
			t.Fatalf("accepted a body that is not an object: %q", body)
		}
	})
}

// State parsing never panics, accepts only what Tether issues (43 base64url
// characters), and maps each accepted state to its own hash.
func FuzzParseState(f *testing.F) {
	for _, seed := range []string{"", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", strings.Repeat("_", 43), strings.Repeat("A", 44),
		"%41" + strings.Repeat("A", 40), strings.Repeat("A", 42) + "=", strings.Repeat("é", 22)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		hash, err := app.ParseState(raw)
		if err != nil {
			if app.ErrorCode(err) != app.EINVALID || hash != nil {
				t.Fatalf("%q: %v", raw, err)
			}
			return
		}
		if len(raw) != 43 || len(hash) != 32 {
			t.Fatalf("accepted %q (%d bytes) with a %d-byte hash", raw, len(raw), len(hash))
		}
		for _, r := range raw {
			if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				t.Fatalf("accepted %q with %q", raw, r)
			}
		}
	})
}
