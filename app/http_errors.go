package app

import (
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"
)

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
	if s.pageError(c, err, body.Error.Code, body.Error.Message, status) {
		return
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
