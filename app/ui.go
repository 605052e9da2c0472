package app

import (
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"html/template"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

//go:embed ui
var uiFS embed.FS

var uiTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"when": formatTime,
	"iso":  func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
}).ParseFS(uiFS, "ui/*.html"))

// contentSecurityPolicy allows the page its own stylesheet, icon and forms,
// and nothing else: no scripts at all, no framing.
const contentSecurityPolicy = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// UIConfig switches on the user page's development sign-in.
type UIConfig struct {
	// DevLogin lets anyone sign in as anyone: development only. config.Load
	// refuses it with an https public URL.
	DevLogin   bool
	HMACSecret []byte
	AdminRole  string
}

// uiState is what the page needs to know besides its configuration.
type uiState struct {
	UIConfig
	registered bool // the page is served (role api or all)
	riverUI    bool // River UI is mounted: admins get a link
}

func (s *Server) registerUI(ui UIConfig, riverUI bool) {
	s.ui = uiState{UIConfig: ui, registered: true, riverUI: riverUI}
	e := s.Echo
	g := e.Group("/ui", uiHeaders, s.requireSameOrigin)
	e.GET("/", func(c echo.Context) error { return c.Redirect(http.StatusFound, "/ui/") })
	e.GET("/favicon.ico", staticFile("ui/favicon.ico", "image/x-icon"), uiHeaders)
	g.GET("/static/style.css", staticFile("ui/style.css", "text/css; charset=utf-8"))
	g.GET("/static/favicon.svg", staticFile("ui/favicon.svg", "image/svg+xml"))
	g.GET("/", s.uiPage)
	g.GET("/connections/:connection_id/disconnect", s.uiConfirmDisconnect)
	g.POST("/connections/:connection_id/disconnect", s.uiDisconnect)
	g.POST("/logout", s.uiLogout)
	g.GET("/signed-out", s.uiSignedOut)
	if ui.DevLogin {
		g.GET("/dev/login", s.uiLoginPage)
		g.POST("/dev/login", s.uiLogin)
	}
}

func staticFile(name, contentType string) echo.HandlerFunc {
	b, err := uiFS.ReadFile(name)
	if err != nil {
		panic(err) // embedded at build time: a missing file is a build bug
	}
	return func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "public, max-age=300")
		return c.Blob(http.StatusOK, contentType, b)
	}
}

func uiHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Response().Header().Set("Content-Security-Policy", contentSecurityPolicy)
		return next(c)
	}
}

// render writes one of the page templates, always under the page's CSP (an
// error page too, whatever route it answers).
func render(c echo.Context, status int, name string, data any) error {
	c.Response().Header().Set("Content-Security-Policy", contentSecurityPolicy)
	c.Response().Header().Set(echo.HeaderContentType, echo.MIMETextHTMLCharsetUTF8)
	c.Response().WriteHeader(status)
	return uiTemplates.ExecuteTemplate(c.Response(), name, data)
}

// uiUser authenticates a page request from the auth cookie.
func (s *Server) uiUser(c echo.Context) (*User, string, error) {
	raw, err := cookieValue(c.Request(), s.cookie)
	if err != nil {
		return nil, "", err
	}
	user, err := s.auth.Authenticate(c.Request().Context(), raw)
	return user, raw, err
}

// csrfToken is derived from the auth cookie: a page from another site can
// neither read it nor compute it.
func csrfToken(authCookie string) string {
	h := sha256.Sum256([]byte("tether-csrf/" + authCookie))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// uiForm authenticates a form post and checks its CSRF token (from the body
// only: a token in the URL would leak through logs and Referer).
func (s *Server) uiForm(c echo.Context) (*User, error) {
	user, raw, err := s.uiUser(c)
	if err != nil {
		return nil, err
	}
	if err := c.Request().ParseForm(); err != nil {
		if isTooLarge(err) {
			return nil, Errorf(ETOOLARGE, "The form is too large.")
		}
		return nil, Errorf(EINVALID, "The form could not be read.")
	}
	if subtle.ConstantTimeCompare([]byte(c.Request().PostForm.Get("csrf")), []byte(csrfToken(raw))) != 1 {
		return nil, Errorf(EFORBIDDEN, "The form is stale or came from another site; reload the page.")
	}
	return user, nil
}

func (s *Server) uiPage(c echo.Context) error {
	user, raw, err := s.uiUser(c)
	if err != nil {
		if s.ui.DevLogin && !errors.Is(err, errDuplicateCookie) {
			return c.Redirect(http.StatusFound, "/ui/dev/login")
		}
		return err
	}
	data, err := s.pageData(c.Request().Context(), user, c.QueryParams())
	if err != nil {
		return err
	}
	data.CSRF = csrfToken(raw)
	return render(c, http.StatusOK, "page.html", data)
}

// uiConfirmDisconnect asks before disconnecting: what the user loses, and
// a button that posts the form.
func (s *Server) uiConfirmDisconnect(c echo.Context) error {
	user, raw, err := s.uiUser(c)
	if err != nil {
		return err
	}
	id, err := connectionIDParam(c)
	if err != nil {
		return err
	}
	data, err := s.confirmData(c.Request().Context(), user, id)
	if err != nil {
		return err
	}
	data.CSRF = csrfToken(raw)
	return render(c, http.StatusOK, "confirm.html", data)
}

func (s *Server) uiDisconnect(c echo.Context) error {
	user, err := s.uiForm(c)
	if err != nil {
		return err
	}
	id, err := connectionIDParam(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	conn, err := s.service.ConnectionGet(ctx, user, id)
	if err != nil {
		return err
	}
	if err := s.service.ConnectionDelete(ctx, user, id); err != nil {
		return err
	}
	// The page then shows the result, and the revocation until it is applied.
	return c.Redirect(http.StatusSeeOther, "/ui/?disconnected="+conn.ProviderID)
}

// uiLogout drops the auth cookie (Tether's copy of the user's session).
func (s *Server) uiLogout(c echo.Context) error {
	if _, err := s.uiForm(c); err != nil {
		return err
	}
	c.SetCookie(&http.Cookie{Name: s.cookie, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: s.secureCookies(), MaxAge: -1})
	return c.Redirect(http.StatusSeeOther, "/ui/signed-out")
}

func (s *Server) uiSignedOut(c echo.Context) error {
	return render(c, http.StatusOK, "message.html", messagePage{
		Title: "You are signed out", Message: "Your connected accounts stay connected.",
		Link: "/ui/", LinkText: "Sign in again",
	})
}

func (s *Server) uiLoginPage(c echo.Context) error {
	return render(c, http.StatusOK, "login.html", nil)
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
	s.logger.Warn("dev-mode sign-in (TETHER_DEV_MODE is on)", "user_id", userID, "admin", len(roles) > 0)
	token, err := SignDevToken(s.ui.HMACSecret, userID, roles, 12*time.Hour)
	if err != nil {
		return err
	}
	c.SetCookie(&http.Cookie{Name: s.cookie, Value: token, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: s.authCookieSecure(), MaxAge: int((12 * time.Hour) / time.Second)})
	return c.Redirect(http.StatusSeeOther, "/ui/")
}

// formatTime is how the page shows a time: in full, with its zone (UTC: the
// server does not know the reader's).
func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05 MST")
}
