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
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 3*time.Second)
	defer cancel()
	r := readiness{Status: "ok", Postgres: "ok", SpiceDB: "ok"}
	if err := s.service.Ping(ctx); err != nil {
		r.Status, r.Postgres = "unavailable", "unreachable"
	}
	switch state, err := s.spicedb.CheckSchema(ctx); {
	case err != nil:
		r.Status, r.SpiceDB = "unavailable", "unreachable"
	case state != spicedb.SchemaCurrent:
		r.Status, r.SpiceDB = "unavailable", "schema "+state.String()+" (run tether reconcile or tether migrate up)"
	}
	if r.Status != "ok" {
		return c.JSON(http.StatusServiceUnavailable, r)
	}
	return c.JSON(http.StatusOK, r)
}
