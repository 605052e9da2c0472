package app

import (
	"log/slog"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/trace"
)

// UserFrom returns the authenticated user of a request.
func UserFrom(c echo.Context) *User {
	u, _ := c.Get("user").(*User)
	return u
}

// authenticate verifies the bearer token or the auth cookie. A write
// authenticated by the cookie must come from Tether's own origin: the
// browser attaches the cookie to requests other sites make too.
func (s *Server) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		raw, byCookie, err := s.credentials(c.Request())
		if err != nil {
			return err
		}
		if byCookie && unsafeMethod(c.Request().Method) {
			if err := s.checkOrigin(c.Request()); err != nil {
				return err
			}
		}
		user, err := s.auth.Authenticate(c.Request().Context(), raw)
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
		attrs := []any{"method", method, "route", route, "status", status,
			"duration_ms", float64(time.Since(start).Microseconds()) / 1000,
			"request_id", c.Response().Header().Get(echo.HeaderXRequestID)}
		if sc := trace.SpanContextFromContext(c.Request().Context()); sc.IsValid() {
			attrs = append(attrs, "trace_id", sc.TraceID().String()) // find the request's trace from its log line
		}
		s.logger.Log(c.Request().Context(), level, "request", attrs...)
		return nil
	}
}
