package app

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"
)

// Browser-facing rules: which cookie carries the token, where a
// cookie-authenticated write may come from, and the headers of an https
// deployment. See docs/operations.md, "Cookies and origins".

// Names of the browser-binding cookie of an authorization in flight. Over
// https it carries the __Host- prefix: a browser only accepts it from
// Tether's own origin (Secure, Path=/, no Domain), so a sibling host cannot
// plant one (cookie tossing).
const (
	BindingCookie       = "tether_oauth_binding"
	SecureBindingCookie = "__Host-tether_oauth_binding"
)

// strictTransportSecurity is sent on every response over https: two years,
// subdomains included (Tether owns its origin; see docs/operations.md).
const strictTransportSecurity = "max-age=63072000; includeSubDomains"

var (
	errDuplicateCookie = Errorf(EUNAUTHORIZED, "The request carries the authentication cookie more than once; sign in again.")
	errCrossOrigin     = Errorf(EFORBIDDEN, "This request came from another site; writes with the session cookie must come from Tether's own pages.")
)

// cookieValue returns the value of the one cookie called name, "" if there
// is none, or errDuplicateCookie if there are several: a second cookie of the
// same name is one a sibling host (or a more specific path) planted, and
// which one a server sees first is up to the browser.
func cookieValue(r *http.Request, name string) (string, error) {
	var value string
	n := 0
	for _, c := range r.CookiesNamed(name) {
		value = c.Value
		n++
	}
	if n > 1 {
		return "", errDuplicateCookie
	}
	return value, nil
}

// credentials returns the request's token: from the Authorization header,
// or else from the auth cookie (byCookie).
func (s *Server) credentials(r *http.Request) (raw string, byCookie bool, err error) {
	cookie, err := cookieValue(r, s.cookie)
	if err != nil {
		return "", false, err
	}
	if h := r.Header.Get(echo.HeaderAuthorization); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", false, errBadToken
		}
		return strings.TrimSpace(token), false, nil
	}
	return cookie, cookie != "", nil
}

func unsafeMethod(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return false
	}
	return true
}

// checkOrigin refuses a browser request made by another site: Sec-Fetch-Site
// other than same-origin or none (a typed URL), or an Origin other than the
// public URL's. Requests with neither header are not from a browser that
// could be tricked into sending them (curl, services): they pass.
//
// "Origin: null" passes only with "Sec-Fetch-Site: same-origin": browsers
// send null for a form posted from a page whose Referrer-Policy is
// no-referrer (Tether's own pages), and the fetch metadata vouches for it.
func (s *Server) checkOrigin(r *http.Request) error {
	site := r.Header.Get("Sec-Fetch-Site")
	switch site {
	case "", "same-origin", "none":
	default: // cross-site, same-site, and values not invented yet
		return errCrossOrigin
	}
	origin := r.Header.Get("Origin")
	switch {
	case origin == "":
		return nil
	case origin == "null":
		if site == "same-origin" {
			return nil
		}
		return errCrossOrigin // sandboxed frames, data: URLs, old browsers
	}
	if want := s.publicOrigin(); want == "" || normalOrigin(origin) != want {
		return errCrossOrigin
	}
	return nil
}

// requireSameOrigin applies checkOrigin to every unsafe request of a group
// whose writes are made by browsers (the user page, the dev sign-in).
func (s *Server) requireSameOrigin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if unsafeMethod(c.Request().Method) {
			if err := s.checkOrigin(c.Request()); err != nil {
				return err
			}
		}
		return next(c)
	}
}

// publicURL is TETHER_PUBLIC_URL (nil in tests that run no OAuth2 flow).
func (s *Server) publicURL() *url.URL {
	if s.service == nil || s.service.OAuth == nil {
		return nil
	}
	return s.service.OAuth.PublicURL
}

func (s *Server) publicOrigin() string {
	u := s.publicURL()
	if u == nil {
		return ""
	}
	return normalOrigin(u.Scheme + "://" + u.Host)
}

// normalOrigin lower-cases an origin and drops its default port, as browsers
// send it.
func normalOrigin(origin string) string {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || u.Path != "" || u.User != nil {
		return "\x00invalid" // matches nothing
	}
	scheme, host := strings.ToLower(u.Scheme), strings.ToLower(u.Hostname())
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	port := u.Port()
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host
}

// secureCookies says whether Tether is served over https: cookies are
// Secure and the binding cookie takes its __Host- name.
func (s *Server) secureCookies() bool {
	u := s.publicURL()
	return u != nil && u.Scheme == "https"
}

func (s *Server) bindingCookieName() string {
	if s.secureCookies() {
		return SecureBindingCookie
	}
	return BindingCookie
}

// bindingCookiePath is / for the __Host- cookie (the prefix requires it) and
// the OAuth2 routes otherwise (as before the prefix: a cookie set earlier
// with that path is replaced, not doubled).
func (s *Server) bindingCookiePath() string {
	if s.secureCookies() {
		return "/"
	}
	return "/api/data/oauth2/"
}

// authCookieSecure says whether the auth cookie must be Secure: over https,
// and whenever its name has a prefix that browsers only accept when Secure.
func (s *Server) authCookieSecure() bool {
	return s.secureCookies() || strings.HasPrefix(s.cookie, "__Host-") || strings.HasPrefix(s.cookie, "__Secure-")
}

func (s *Server) securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		if s.secureCookies() {
			h.Set("Strict-Transport-Security", strictTransportSecurity)
		}
		return next(c)
	}
}
