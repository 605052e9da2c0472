package oauthclient

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"golang.org/x/oauth2"
)

// ErrTemporary marks a provider failure worth retrying (network, 5xx, 429).
var ErrTemporary = errors.New("provider temporarily unavailable")

// IsInvalidGrant reports whether a token-endpoint error says the grant is
// gone (revoked, expired, rotated away): the user must reconnect.
func IsInvalidGrant(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && (re.ErrorCode == "invalid_grant" ||
		(re.ErrorCode == "" && re.Response != nil && re.Response.StatusCode == http.StatusBadRequest && strings.Contains(string(re.Body), "invalid_grant")))
}

// IsTemporary reports whether a token-endpoint error is worth retrying.
func IsTemporary(err error) bool {
	if errors.Is(err, ErrTemporary) {
		return true
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.Response != nil && (re.Response.StatusCode >= 500 || re.Response.StatusCode == http.StatusTooManyRequests)
	}
	return !errors.Is(err, ErrInsecureURL) && !tooLarge(err) // network errors
}

// tooLarge recognises ErrResponseTooLarge also where x/oauth2 wrapped it
// with %v (its "cannot fetch token" error keeps only the text).
func tooLarge(err error) bool {
	return errors.Is(err, ErrResponseTooLarge) || strings.Contains(err.Error(), ErrResponseTooLarge.Error())
}

// IsRedirect reports whether the provider answered with a redirect (which
// Tether never follows).
func IsRedirect(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && re.Response != nil && re.Response.StatusCode >= 300 && re.Response.StatusCode < 400
}

var errorCodePattern = regexp.MustCompile(`^[a-z_]{1,64}$`)

// Describe turns a token-endpoint error into one safe to log and to keep as
// a cause: the status and the RFC 6749 error code only. x/oauth2's own text
// holds the provider's whole answer (up to a megabyte, free text from a
// party Tether does not control, possibly echoing what was sent).
func Describe(err error) error {
	if err == nil {
		return nil
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		code := re.ErrorCode
		if !errorCodePattern.MatchString(code) {
			code = "none"
		}
		status := "no response"
		if re.Response != nil {
			status = re.Response.Status
		}
		if IsRedirect(err) {
			return fmt.Errorf("the token endpoint answered %s, a redirect Tether does not follow", status)
		}
		return fmt.Errorf("the token endpoint answered %s (error %s)", status, code)
	}
	switch {
	case errors.Is(err, ErrInsecureURL):
		return err
	case tooLarge(err):
		return ErrResponseTooLarge
	}
	return fmt.Errorf("the token request failed: %s", redactError(err))
}
