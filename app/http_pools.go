package app

import (
	"net/http"
	"net/url"
	"strconv"

	"github.com/labstack/echo/v4"
)

func poolIDParam(c echo.Context) (int64, error) {
	id, err := strconv.ParseInt(c.Param("resource_pool_id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, Errorf(ENOTFOUND, "No such resource pool.")
	}
	return id, nil
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
