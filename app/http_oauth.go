package app

import (
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
)

func connectionIDParam(c echo.Context) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param("connection_id"))
	if err != nil {
		return uuid.Nil, Errorf(ENOTFOUND, "No such connection.")
	}
	return id, nil
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

func (s *Server) authorize(c echo.Context) error {
	id, err := providerIDParam(c)
	if err != nil {
		return err
	}
	// The binding cookie binds an authorization to the browser that started
	// it; a planted second one makes the flow fail, never succeed for the
	// planter.
	binding, err := cookieValue(c.Request(), s.bindingCookieName())
	if err != nil {
		return errInvalidState
	}
	from := InitiatorOwnPage
	if site := c.Request().Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		from = InitiatorOtherSite
	}
	auth, err := s.service.Authorize(c.Request().Context(), UserFrom(c), id, c.QueryParam("next_url"), binding, from)
	if err != nil {
		return err
	}
	c.SetCookie(&http.Cookie{
		Name: s.bindingCookieName(), Value: auth.BrowserBinding, Path: s.bindingCookiePath(),
		MaxAge: int(StateTTL / time.Second), HttpOnly: true, Secure: s.secureCookies(),
		// Lax: the provider's redirect back is a cross-site top-level
		// navigation, which Strict would strip the cookie from.
		SameSite: http.SameSiteLaxMode,
	})
	return c.Redirect(http.StatusFound, auth.RedirectURL)
}

func (s *Server) callback(c echo.Context) error {
	binding, err := cookieValue(c.Request(), s.bindingCookieName())
	if err != nil {
		return errInvalidState
	}
	in := CallbackInput{State: c.QueryParam("state"), Code: c.QueryParam("code"), Error: c.QueryParam("error")}
	if c.QueryParams().Has("iss") {
		iss := c.QueryParam("iss")
		in.Issuer = &iss
	}
	res, err := s.service.Callback(c.Request().Context(), UserFrom(c), binding, in)
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
