package app

import (
	_ "embed"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/tetherhq/tether/jobs/spicedb"
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
	spicedb  *spicedb.Client
	cookie   string
	httpReq  *prometheus.CounterVec
	httpDur  *prometheus.HistogramVec
	gatherer prometheus.Gatherer
	ui       uiState
	api      bool
}

// ServerDeps are what the server is built from.
type ServerDeps struct {
	Service  *Service
	Auth     *Authenticator
	Logger   *slog.Logger
	SpiceDB  *spicedb.Client
	Cookie   string
	Registry *prometheus.Registry
	// API serves the /api/data routes and the user page; without it (role
	// worker) only the probes and metrics are served.
	API bool
	UI  UIConfig
	// RiverUI, if set, is mounted at /riverui/ for admins.
	RiverUI http.Handler
	// Tracer, if set, traces every request but the probes and /metrics.
	Tracer trace.TracerProvider
}

// NewServer wires every route in one place, so the surface can be audited
// (and checked against the OpenAPI document) at a glance.
func NewServer(d ServerDeps) *Server {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	s := &Server{Echo: e, service: d.Service, auth: d.Auth, logger: d.Logger, spicedb: d.SpiceDB, cookie: d.Cookie, gatherer: d.Registry, api: d.API}
	s.registerMetrics(d.Registry)
	e.HTTPErrorHandler = s.handleError
	if d.Tracer != nil {
		e.Use(traceRequests(d.Tracer))
	}
	e.Use(middleware.RequestIDWithConfig(middleware.RequestIDConfig{}))
	e.Use(s.observe)
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisableStackAll: true, LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
		s.logger.Error("panic in handler", "error", err, "stack", string(stack), "request_id", c.Response().Header().Get(echo.HeaderXRequestID))
		return err
	}}))
	e.Use(middleware.BodyLimit(strconv.Itoa(MaxBodyBytes)))
	e.Use(middleware.ContextTimeoutWithConfig(middleware.ContextTimeoutConfig{Timeout: 30 * time.Second}))
	e.Use(s.securityHeaders)

	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(d.Registry, promhttp.HandlerOpts{})))

	if !d.API {
		return s
	}
	s.registerUI(d.UI, d.RiverUI != nil)
	if d.RiverUI != nil {
		// River UI shows job args and errors and can cancel or retry jobs:
		// admins only, with the same token (bearer or cookie).
		e.Any("/riverui*", echo.WrapHandler(d.RiverUI), s.authenticate, requireAdmin)
	}
	s.registerAPI(e.Group("/api/data"))
	return s
}

// registerAPI wires the JSON API's routes.
func (s *Server) registerAPI(api *echo.Group) {
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
}

// registerMetrics creates the HTTP metrics on reg.
func (s *Server) registerMetrics(reg *prometheus.Registry) {
	s.httpReq = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_http_requests_total", Help: "HTTP requests by route, method and status.",
	}, []string{"route", "method", "status"})
	s.httpDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "tether_http_request_duration_seconds", Help: "HTTP request latency by route and method.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"route", "method"})
	reg.MustRegister(s.httpReq, s.httpDur)
}
