package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// Optional is a JSON field that tells "absent" (Set false) from null (Set
// true, Value nil), as PATCH needs for remote.
type Optional[T any] struct {
	Set   bool
	Value *T
}

func (o *Optional[T]) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Value = nil
		return nil
	}
	var v T
	if err := strictUnmarshal(b, &v); err != nil {
		return err
	}
	o.Value = &v
	return nil
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// DecodeJSON reads one JSON value from a request body into v: the media type
// must be application/json (415 otherwise), unknown fields and trailing data
// are refused, and every other problem is an EINVALID (400) naming what is
// wrong.
//
// A missing Content-Type is refused too: a browser sends none for a Blob
// body, and text/plain for a string, both without a CORS preflight, so
// parsing them as JSON would let another site's fetch(…, {mode: "no-cors"})
// write with the user's cookie.
func DecodeJSON(r *http.Request, v any) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return Errorf(EUNSUPPORTED, "The body must be sent as Content-Type: application/json.")
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		if isTooLarge(err) {
			return Errorf(ETOOLARGE, "The body is larger than %d bytes.", MaxBodyBytes)
		}
		return Errorf(EINVALID, "The body could not be read.")
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return Errorf(EINVALID, "The body is empty; a JSON value is required.")
	}
	if trimmed[0] != '{' && trimmed[0] != '[' {
		return Errorf(EINVALID, "The body must be a JSON object or array.")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(EINVALID, "Invalid JSON: %s", describeJSONError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Errorf(EINVALID, "Invalid JSON: more than one value in the body.")
	}
	return nil
}

func describeJSONError(err error) string {
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("syntax error at byte %d", syntaxErr.Offset)
	case errors.As(err, &typeErr):
		if typeErr.Field != "" {
			return fmt.Sprintf("field %q must be %s", typeErr.Field, jsonTypeName(typeErr.Type.Kind().String()))
		}
		return fmt.Sprintf("expected %s", jsonTypeName(typeErr.Type.Kind().String()))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of input"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	}
	return "malformed body"
}

func jsonTypeName(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "int", "int64", "int32", "uint", "uint64", "float64":
		return "a number"
	case "slice", "array":
		return "an array"
	case "struct", "map", "ptr":
		return "an object"
	}
	return "of another type"
}

// isTooLarge recognises the body-limit errors of net/http and of echo's
// BodyLimit middleware (which a chunked body without Content-Length hits
// while being read).
func isTooLarge(err error) bool {
	var maxErr *http.MaxBytesError
	var he *echo.HTTPError
	return errors.As(err, &maxErr) || (errors.As(err, &he) && he.Code == http.StatusRequestEntityTooLarge)
}
