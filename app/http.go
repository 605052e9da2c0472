package app

import (
	"context"
	_ "embed"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tetherhq/tether/jobs"
)

//go:embed openapi.json
var openAPISpec []byte

// MaxBodyBytes bounds request bodies.
const MaxBodyBytes = 256 << 10

// Server is Tether's HTTP API.
type Server struct {
	Echo     *echo.Echo
	service  *Service
	auth     *Authenticator
	logger   *slog.Logger
	spicedb  *jobs.SpiceDB
	cookie   string
	httpReq  *prometheus.CounterVec
	httpDur  *prometheus.HistogramVec
	gatherer prometheus.Gatherer
	ui       UIConfig
}

// ServerDeps are what the server is built from.
type ServerDeps struct {
	Service  *Service
	Auth     *Authenticator
	Logger   *slog.Logger
	SpiceDB  *jobs.SpiceDB
	Cookie   string
	Registry *prometheus.Registry
	// API serves the /api/data routes and the user page; without it (role
	// worker) only the probes and metrics are served.
	API bool
	UI  UIConfig
	// RiverUI, if set, is mounted at /riverui/ for admins.
	RiverUI http.Handler
}

// NewServer wires every route in one place, so the surface can be audited
// (and checked against the OpenAPI document) at a glance.
func NewServer(d ServerDeps) *Server {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	s := &Server{Echo: e, service: d.Service, auth: d.Auth, logger: d.Logger, spicedb: d.SpiceDB, cookie: d.Cookie, gatherer: d.Registry}
	s.httpReq = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_http_requests_total", Help: "HTTP requests by route, method and status.",
	}, []string{"route", "method", "status"})
	s.httpDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "tether_http_request_duration_seconds", Help: "HTTP request latency by route and method.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"route", "method"})
	d.Registry.MustRegister(s.httpReq, s.httpDur)

	e.HTTPErrorHandler = s.handleError
	e.Use(middleware.RequestIDWithConfig(middleware.RequestIDConfig{}))
	e.Use(s.observe)
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisableStackAll: true, LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
		s.logger.Error("panic in handler", "error", err, "stack", string(stack), "request_id", c.Response().Header().Get(echo.HeaderXRequestID))
		return err
	}}))
	e.Use(middleware.BodyLimit(strconv.Itoa(MaxBodyBytes)))
	e.Use(middleware.ContextTimeoutWithConfig(middleware.ContextTimeoutConfig{Timeout: 30 * time.Second}))
	e.Use(securityHeaders)

	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(d.Registry, promhttp.HandlerOpts{})))

	if !d.API {
		return s
	}
	s.registerUI(d.UI)
	if d.RiverUI != nil {
		// River UI shows job args and errors and can cancel or retry jobs:
		// admins only, with the same token (bearer or cookie).
		e.Any("/riverui*", echo.WrapHandler(d.RiverUI), s.authenticate, requireAdmin)
	}
	api := e.Group("/api/data")
	api.GET("/spec.json", func(c echo.Context) error { return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, openAPISpec) })

	user := api.Group("", s.authenticate)
	admin := api.Group("", s.authenticate, requireAdmin)

	user.GET("/oauth2/providers", s.providerList)
	user.GET("/oauth2/providers/:provider_id", s.providerGet)
	admin.POST("/oauth2/providers", s.providerCreate)
	admin.PATCH("/oauth2/providers/:provider_id", s.providerUpdate)
	admin.DELETE("/oauth2/providers/:provider_id", s.providerDelete)

	user.GET("/oauth2/providers/:provider_id/authorize", s.authorize)
	user.GET("/oauth2/callback", s.callback)

	user.GET("/oauth2/connections", s.connectionList)
	user.GET("/oauth2/connections/:connection_id", s.connectionGet)
	user.DELETE("/oauth2/connections/:connection_id", s.connectionDelete)
	user.GET("/oauth2/connections/:connection_id/token", s.connectionToken)

	user.GET("/resource_pools", s.poolList)
	user.GET("/resource_pools/:resource_pool_id", s.poolGet)
	admin.POST("/resource_pools", s.poolCreate)
	admin.PATCH("/resource_pools/:resource_pool_id", s.poolUpdate)
	admin.DELETE("/resource_pools/:resource_pool_id", s.poolDelete)
	admin.GET("/resource_pools/:resource_pool_id/users", s.poolViewerList)
	admin.POST("/resource_pools/:resource_pool_id/users", s.poolViewerAdd)
	admin.DELETE("/resource_pools/:resource_pool_id/users/:user_id", s.poolViewerRemove)
	return s
}

// ---- middleware ----

// UserFrom returns the authenticated user of a request.
func UserFrom(c echo.Context) *User {
	u, _ := c.Get("user").(*User)
	return u
}

func (s *Server) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		raw := ""
		if h := c.Request().Header.Get(echo.HeaderAuthorization); h != "" {
			scheme, token, ok := strings.Cut(h, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") {
				return errBadToken
			}
			raw = strings.TrimSpace(token)
		} else if ck, err := c.Cookie(s.cookie); err == nil {
			raw = ck.Value
		}
		user, err := s.auth.Authenticate(raw)
		if err != nil {
			return err
		}
		c.Set("user", user)
		return next(c)
	}
}

func requireAdmin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !UserFrom(c).Admin {
			return Errorf(EFORBIDDEN, "This needs the admin role.")
		}
		return next(c)
	}
}

func securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		return next(c)
	}
}

func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		route := c.Path() // the pattern, never the ids in it
		if route == "" {
			route = "unmatched"
		}
		method := c.Request().Method
		status := c.Response().Status
		s.httpReq.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
		s.httpDur.WithLabelValues(route, method).Observe(time.Since(start).Seconds())
		level := slog.LevelDebug
		probe := route == "/healthz" || route == "/readyz" || route == "/metrics"
		if status >= 500 && !probe {
			level = slog.LevelError
		} else if status >= 400 && !probe {
			level = slog.LevelInfo
		}
		s.logger.Log(c.Request().Context(), level, "request",
			"method", method, "route", route, "status", status,
			"duration_ms", float64(time.Since(start).Microseconds())/1000,
			"request_id", c.Response().Header().Get(echo.HeaderXRequestID))
		return nil
	}
}

// errorBody is the JSON shape of every error.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// handleError renders any error as JSON through the one code→status table.
// Internal errors are logged with their cause and shown as a generic message.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var body errorBody
	var he *echo.HTTPError
	switch {
	case errors.As(err, &he):
		body.Error.Code, body.Error.Message = echoErrorCode(he)
	default:
		body.Error.Code, body.Error.Message = ErrorCode(err), ErrorMessage(err)
	}
	status := StatusForCode(body.Error.Code)
	if status >= 500 {
		s.logger.Error("request failed", "error", err, "path", c.Path(),
			"request_id", c.Response().Header().Get(echo.HeaderXRequestID))
	}
	if body.Error.Code == EUNAUTHORIZED {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="tether"`)
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(status)
		return
	}
	_ = c.JSON(status, body)
}

func echoErrorCode(he *echo.HTTPError) (string, string) {
	switch he.Code {
	case http.StatusNotFound:
		return ENOTFOUND, "No such route."
	case http.StatusMethodNotAllowed:
		return EMETHOD, "Method not allowed on this route."
	case http.StatusRequestEntityTooLarge:
		return ETOOLARGE, "The body is too large."
	case http.StatusServiceUnavailable:
		return EUNAVAILABLE, "The request timed out; try again."
	case http.StatusUnauthorized:
		return EUNAUTHORIZED, "Authentication required."
	case http.StatusForbidden:
		return EFORBIDDEN, "Forbidden."
	}
	if he.Code >= 400 && he.Code < 500 {
		return EINVALID, http.StatusText(he.Code)
	}
	return EINTERNAL, "Internal error."
}

// ---- probes ----

func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

type readiness struct {
	Status   string `json:"status"`
	Postgres string `json:"postgres"`
	SpiceDB  string `json:"spicedb"`
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 3*time.Second)
	defer cancel()
	r := readiness{Status: "ok", Postgres: "ok", SpiceDB: "ok"}
	if err := s.service.DB.Ping(ctx); err != nil {
		r.Status, r.Postgres = "unavailable", "unreachable"
	}
	switch state, err := s.spicedb.CheckSchema(ctx); {
	case err != nil:
		r.Status, r.SpiceDB = "unavailable", "unreachable"
	case state != jobs.SchemaCurrent:
		r.Status, r.SpiceDB = "unavailable", "schema "+state.String()+" (run tether reconcile or tether migrate up)"
	}
	if r.Status != "ok" {
		return c.JSON(http.StatusServiceUnavailable, r)
	}
	return c.JSON(http.StatusOK, r)
}

// ---- handlers: bind, call, render ----

func providerIDParam(c echo.Context) (string, error) {
	id := c.Param("provider_id")
	if !slugPattern.MatchString(id) {
		return "", Errorf(ENOTFOUND, "No such provider.")
	}
	return id, nil
}

func poolIDParam(c echo.Context) (int64, error) {
	id, err := strconv.ParseInt(c.Param("resource_pool_id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, Errorf(ENOTFOUND, "No such resource pool.")
	}
	return id, nil
}

func connectionIDParam(c echo.Context) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param("connection_id"))
	if err != nil {
		return uuid.Nil, Errorf(ENOTFOUND, "No such connection.")
	}
	return id, nil
}

func (s *Server) providerList(c echo.Context) error {
	out, err := s.service.ProviderList(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) providerGet(c echo.Context) error {
	id, err := providerIDParam(c)
	if err != nil {
		return err
	}
	out, err := s.service.ProviderGet(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) providerCreate(c echo.Context) error {
	var in ProviderInput
	if err := DecodeJSON(c.Request(), &in); err != nil {
		return err
	}
	out, err := s.service.ProviderCreate(c.Request().Context(), &in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (s *Server) providerUpdate(c echo.Context) error {
	id, err := providerIDParam(c)
	if err != nil {
		return err
	}
	var in ProviderInput
	if err := DecodeJSON(c.Request(), &in); err != nil {
		return err
	}
	out, err := s.service.ProviderUpdate(c.Request().Context(), id, &in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) providerDelete(c echo.Context) error {
	id, err := providerIDParam(c)
	if err != nil {
		return err
	}
	if err := s.service.ProviderDelete(c.Request().Context(), id); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) connectionList(c echo.Context) error {
	out, err := s.service.ConnectionList(c.Request().Context(), UserFrom(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) connectionGet(c echo.Context) error {
	id, err := connectionIDParam(c)
	if err != nil {
		return err
	}
	out, err := s.service.ConnectionGet(c.Request().Context(), UserFrom(c), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) connectionDelete(c echo.Context) error {
	id, err := connectionIDParam(c)
	if err != nil {
		return err
	}
	if err := s.service.ConnectionDelete(c.Request().Context(), UserFrom(c), id); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) poolList(c echo.Context) error {
	out, err := s.service.PoolList(c.Request().Context(), UserFrom(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) poolGet(c echo.Context) error {
	id, err := poolIDParam(c)
	if err != nil {
		return err
	}
	out, err := s.service.PoolGet(c.Request().Context(), UserFrom(c), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) poolCreate(c echo.Context) error {
	var in PoolInput
	if err := DecodeJSON(c.Request(), &in); err != nil {
		return err
	}
	out, err := s.service.PoolCreate(c.Request().Context(), &in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (s *Server) poolUpdate(c echo.Context) error {
	id, err := poolIDParam(c)
	if err != nil {
		return err
	}
	var in PoolInput
	if err := DecodeJSON(c.Request(), &in); err != nil {
		return err
	}
	out, err := s.service.PoolUpdate(c.Request().Context(), id, &in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) poolDelete(c echo.Context) error {
	id, err := poolIDParam(c)
	if err != nil {
		return err
	}
	if err := s.service.PoolDelete(c.Request().Context(), id); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) poolViewerList(c echo.Context) error {
	id, err := poolIDParam(c)
	if err != nil {
		return err
	}
	out, err := s.service.PoolViewerList(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) poolViewerAdd(c echo.Context) error {
	id, err := poolIDParam(c)
	if err != nil {
		return err
	}
	var in []PoolViewer
	if err := DecodeJSON(c.Request(), &in); err != nil {
		return err
	}
	out, err := s.service.PoolViewerAdd(c.Request().Context(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (s *Server) poolViewerRemove(c echo.Context) error {
	id, err := poolIDParam(c)
	if err != nil {
		return err
	}
	userID := c.Param("user_id")
	if c.Request().URL.RawPath != "" {
		// Echo routes on the raw path when it differs from the default
		// encoding (as encodeURIComponent's "%40" does) and then leaves the
		// parameter escaped.
		unescaped, err := url.PathUnescape(userID)
		if err != nil {
			return Errorf(ENOTFOUND, "That user is not a viewer of pool %d.", id)
		}
		userID = unescaped
	}
	if err := ValidUserID(userID); err != nil {
		return Errorf(ENOTFOUND, "That user is not a viewer of pool %d.", id)
	}
	if err := s.service.PoolViewerRemove(c.Request().Context(), id, userID); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// BindingCookie binds an authorization to the browser that started it.
const BindingCookie = "tether_oauth_binding"

func (s *Server) secureCookies() bool {
	return s.service.OAuth != nil && s.service.OAuth.PublicURL.Scheme == "https"
}

func (s *Server) authorize(c echo.Context) error {
	id, err := providerIDParam(c)
	if err != nil {
		return err
	}
	binding := ""
	if ck, err := c.Cookie(BindingCookie); err == nil {
		binding = ck.Value
	}
	auth, err := s.service.Authorize(c.Request().Context(), UserFrom(c), id, c.QueryParam("next_url"), binding)
	if err != nil {
		return err
	}
	c.SetCookie(&http.Cookie{
		Name: BindingCookie, Value: auth.BrowserBinding, Path: "/api/data/oauth2/",
		MaxAge: int(StateTTL / time.Second), HttpOnly: true, Secure: s.secureCookies(),
		// Lax: the provider's redirect back is a cross-site top-level
		// navigation, which Strict would strip the cookie from.
		SameSite: http.SameSiteLaxMode,
	})
	return c.Redirect(http.StatusFound, auth.RedirectURL)
}

func (s *Server) callback(c echo.Context) error {
	binding := ""
	if ck, err := c.Cookie(BindingCookie); err == nil {
		binding = ck.Value
	}
	res, err := s.service.Callback(c.Request().Context(), UserFrom(c), binding,
		c.QueryParam("state"), c.QueryParam("code"), c.QueryParam("error"))
	if err != nil {
		return err
	}
	if res.NextURL != "" {
		return c.Redirect(http.StatusFound, res.NextURL)
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "OK"})
}

func (s *Server) connectionToken(c echo.Context) error {
	id, err := connectionIDParam(c)
	if err != nil {
		return err
	}
	out, err := s.service.ConnectionToken(c.Request().Context(), UserFrom(c), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}
