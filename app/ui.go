package app

import (
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"html/template"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

//go:embed ui
var uiFS embed.FS

var uiTemplates = template.Must(template.ParseFS(uiFS, "ui/*.html"))

// contentSecurityPolicy allows the page its own stylesheet and forms, and
// nothing else: no scripts at all, no framing.
const contentSecurityPolicy = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// UIConfig switches on the user page's development sign-in.
type UIConfig struct {
	// DevLogin lets anyone sign in as anyone: development only. config.Load
	// refuses it with an https public URL.
	DevLogin   bool
	HMACSecret []byte
	AdminRole  string
}

func (s *Server) registerUI(ui UIConfig) {
	s.ui = ui
	e := s.Echo
	g := e.Group("/ui", uiHeaders)
	e.GET("/", func(c echo.Context) error { return c.Redirect(http.StatusFound, "/ui/") })
	g.GET("/static/style.css", func(c echo.Context) error {
		b, _ := uiFS.ReadFile("ui/style.css")
		c.Response().Header().Set("Cache-Control", "public, max-age=300")
		return c.Blob(http.StatusOK, "text/css; charset=utf-8", b)
	})
	g.GET("/", s.uiPage)
	g.POST("/connections/:connection_id/disconnect", s.uiDisconnect)
	if ui.DevLogin {
		g.GET("/dev/login", s.uiLoginPage)
		g.POST("/dev/login", s.uiLogin)
	}
}

func uiHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Response().Header().Set("Content-Security-Policy", contentSecurityPolicy)
		return next(c)
	}
}

// uiUser authenticates a page request from the auth cookie (or bearer).
func (s *Server) uiUser(c echo.Context) (*User, string, error) {
	raw := ""
	if ck, err := c.Cookie(s.cookie); err == nil {
		raw = ck.Value
	}
	user, err := s.auth.Authenticate(raw)
	return user, raw, err
}

// csrfToken is derived from the auth cookie: a page from another site can
// neither read it nor compute it.
func csrfToken(authCookie string) string {
	h := sha256.Sum256([]byte("tether-csrf/" + authCookie))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

type providerView struct {
	*Provider
	Connected bool
}

func (s *Server) uiPage(c echo.Context) error {
	user, raw, err := s.uiUser(c)
	if err != nil {
		if s.ui.DevLogin {
			return c.Redirect(http.StatusFound, "/ui/dev/login")
		}
		return err
	}
	ctx := c.Request().Context()
	providers, err := s.service.ProviderList(ctx)
	if err != nil {
		return err
	}
	conns, err := s.service.ConnectionList(ctx, user)
	if err != nil {
		return err
	}
	pools, err := s.service.PoolList(ctx, user)
	if err != nil {
		return err
	}
	connected := map[string]bool{}
	for _, conn := range conns {
		connected[conn.ProviderID] = conn.Status == StatusConnected
	}
	views := make([]providerView, len(providers))
	for i, p := range providers {
		views[i] = providerView{Provider: p, Connected: connected[p.ID]}
	}
	errCode := c.QueryParam("error")
	if !providerErrorPattern.MatchString(errCode) {
		errCode = ""
	}
	c.Response().Header().Set(echo.HeaderContentType, echo.MIMETextHTMLCharsetUTF8)
	c.Response().WriteHeader(http.StatusOK)
	return uiTemplates.ExecuteTemplate(c.Response(), "page.html", map[string]any{
		"User": user, "Providers": views, "Connections": conns, "Pools": pools, "CSRF": csrfToken(raw), "Error": errCode,
	})
}

func (s *Server) uiDisconnect(c echo.Context) error {
	user, raw, err := s.uiUser(c)
	if err != nil {
		return err
	}
	if err := c.Request().ParseForm(); err != nil {
		if isTooLarge(err) {
			return Errorf(ETOOLARGE, "The form is too large.")
		}
		return Errorf(EINVALID, "The form could not be read.")
	}
	// From the body only: a token in the URL would leak through logs and Referer.
	if subtle.ConstantTimeCompare([]byte(c.Request().PostForm.Get("csrf")), []byte(csrfToken(raw))) != 1 {
		return Errorf(EFORBIDDEN, "The form is stale or came from another site; reload the page.")
	}
	id, err := connectionIDParam(c)
	if err != nil {
		return err
	}
	if err := s.service.ConnectionDelete(c.Request().Context(), user, id); err != nil {
		return err
	}
	return c.Redirect(http.StatusSeeOther, "/ui/")
}

func (s *Server) uiLoginPage(c echo.Context) error {
	c.Response().Header().Set(echo.HeaderContentType, echo.MIMETextHTMLCharsetUTF8)
	c.Response().WriteHeader(http.StatusOK)
	return uiTemplates.ExecuteTemplate(c.Response(), "login.html", nil)
}

func (s *Server) uiLogin(c echo.Context) error {
	if err := c.Request().ParseForm(); err != nil {
		if isTooLarge(err) {
			return Errorf(ETOOLARGE, "The form is too large.")
		}
		return Errorf(EINVALID, "The form could not be read.")
	}
	userID := c.Request().PostForm.Get("user")
	if err := ValidUserID(userID); err != nil {
		return err
	}
	var roles []string
	if c.Request().PostForm.Get("admin") == "true" {
		roles = []string{s.ui.AdminRole}
	}
	token, err := SignDevToken(s.ui.HMACSecret, userID, roles, 12*time.Hour)
	if err != nil {
		return err
	}
	c.SetCookie(&http.Cookie{Name: s.cookie, Value: token, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: s.secureCookies(), MaxAge: int((12 * time.Hour) / time.Second)})
	return c.Redirect(http.StatusSeeOther, "/ui/")
}
