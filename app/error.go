package app

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes. Each maps to one HTTP status in errorStatus.
const (
	ECONFLICT      = "conflict"
	EFORBIDDEN     = "forbidden"
	EINTERNAL      = "internal"
	EINVALID       = "invalid"
	ENOTFOUND      = "not_found"
	ETOOLARGE      = "too_large"
	EUNAUTHORIZED  = "unauthorized"
	EUNAVAILABLE   = "unavailable"
	EUNPROCESSABLE = "unprocessable"
	EUNSUPPORTED   = "unsupported_media_type"
	EMETHOD        = "method_not_allowed"
	// EBADGATEWAY: a provider answered something Tether refuses to use (a
	// redirect, an oversized or malformed answer): the fault is upstream.
	EBADGATEWAY = "bad_gateway"
)

// errorStatus is the one table from error codes to HTTP statuses.
var errorStatus = map[string]int{
	ECONFLICT:      http.StatusConflict,
	EFORBIDDEN:     http.StatusForbidden,
	EINTERNAL:      http.StatusInternalServerError,
	EINVALID:       http.StatusBadRequest,
	ENOTFOUND:      http.StatusNotFound,
	ETOOLARGE:      http.StatusRequestEntityTooLarge,
	EUNAUTHORIZED:  http.StatusUnauthorized,
	EUNAVAILABLE:   http.StatusServiceUnavailable,
	EUNPROCESSABLE: http.StatusUnprocessableEntity,
	EUNSUPPORTED:   http.StatusUnsupportedMediaType,
	EMETHOD:        http.StatusMethodNotAllowed,
	EBADGATEWAY:    http.StatusBadGateway,
}

// Error is an application error with a code and a message safe to show.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// Errorf returns an application error.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of an application error, EINTERNAL otherwise.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the message of an application error; other errors
// (which may carry internals) become a generic message.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "Internal error."
}

// StatusForCode maps an error code to its HTTP status.
func StatusForCode(code string) int {
	if s, ok := errorStatus[code]; ok {
		return s
	}
	return http.StatusInternalServerError
}
