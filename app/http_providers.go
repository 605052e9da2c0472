package app

import (
	"net/http"

	"github.com/labstack/echo/v4"
)

func providerIDParam(c echo.Context) (string, error) {
	id := c.Param("provider_id")
	if !slugPattern.MatchString(id) {
		return "", Errorf(ENOTFOUND, "No such provider.")
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
