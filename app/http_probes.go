package app

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/tetherhq/tether/jobs/spicedb"
)

func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

type readiness struct {
	Status   string `json:"status"`
	Postgres string `json:"postgres"`
	SpiceDB  string `json:"spicedb"`
	// Auth is whether tokens can be verified (the issuer's keys are at
	// hand); only where the API is served.
	Auth string `json:"auth,omitempty"`
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 3*time.Second)
	defer cancel()
	r := readiness{Status: "ok", Postgres: "ok", SpiceDB: "ok"}
	if err := s.service.Ping(ctx); err != nil {
		r.Status, r.Postgres = "unavailable", "unreachable"
	}
	switch state, err := s.spicedb.Probe(ctx); {
	case err != nil:
		r.Status, r.SpiceDB = "unavailable", "unreachable"
	case state != spicedb.SchemaCurrent:
		r.Status, r.SpiceDB = "unavailable", "schema "+state.String()+" (being restored from Postgres)"
	}
	if s.api {
		r.Auth = "ok"
		if err := s.auth.Ready(ctx); err != nil {
			r.Status, r.Auth = "unavailable", "the token issuer's signing keys cannot be fetched"
		}
	}
	if r.Status != "ok" {
		return c.JSON(http.StatusServiceUnavailable, r)
	}
	return c.JSON(http.StatusOK, r)
}
