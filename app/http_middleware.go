package app

import (
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

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
