package app

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"
)

// Messages in plain language: what happened after Connect or Disconnect, and
// errors that reach a person's browser (which gets a page, not JSON).

// Error codes the OAuth2 flow sends the browser back to the page with, on
// top of the provider's own (RFC 6749 §4.1.2.1: access_denied, …).
const (
	flowExpired             = "authorization_expired"
	flowInvalidState        = "invalid_state"
	flowExchangeFailed      = "exchange_failed"
	flowUnknownProvider     = "unknown_provider"
	flowProviderUnavailable = "provider_unavailable"
	flowFailed              = "failed"
)

// flashFrom reads the result of the last action from the page's URL:
// ?provider=P after a connect (with &error=… when it failed),
// ?disconnected=P after a disconnect, ?error=… alone when the flow could not
// tell which provider it was for.
func flashFrom(query url.Values, names map[string]string, conns map[string]*Connection, keys map[string]KeySync) *flash {
	name := func(id string) (string, bool) {
		n, ok := names[id]
		return n, ok && ValidProviderID(id)
	}
	errCode := query.Get("error")
	if errCode != "" {
		if !providerErrorPattern.MatchString(errCode) {
			errCode = flowFailed
		}
		provider, ok := name(query.Get("provider"))
		start := provider // how a sentence starts with it
		if !ok {
			provider, start = "the service", "The service"
		}
		return &flash{Kind: "error", Text: flowErrorText(errCode, provider, start)}
	}
	if provider, ok := name(query.Get("disconnected")); ok {
		key := keys[query.Get("disconnected")]
		if key.Revoking || key.Sync.State == "pending" || key.Sync.State == "retrying" {
			return &flash{Kind: "info", Text: "Disconnected " + provider + ". Its access is being removed; this page updates by itself."}
		}
		text := "Disconnected " + provider + ". Its access is removed."
		if key.Sync.AppliedAt != nil {
			text = "Disconnected " + provider + ". Its access was removed at " + formatTime(*key.Sync.AppliedAt) + "."
		}
		return &flash{Kind: "success", Text: text}
	}
	if provider, ok := name(query.Get("provider")); ok {
		if c := conns[query.Get("provider")]; c != nil && c.Status == "connected" {
			text := "Connected " + provider
			if c.Account != nil {
				text += " as " + *c.Account
			}
			return &flash{Kind: "success", Text: text + "."}
		}
	}
	return nil
}

// flowErrorText says what a flow's error code means; provider names the
// provider within a sentence, start at its beginning.
func flowErrorText(code, provider, start string) string {
	switch code {
	case "access_denied":
		return "You declined access at " + provider + ". Nothing was connected."
	case flowExpired:
		return "The sign-in at " + provider + " took too long and expired. Nothing was connected: connect again."
	case flowInvalidState:
		return "That sign-in could not be completed: it was used already, or was started in another browser or by another user. Nothing was connected: connect again."
	case flowExchangeFailed:
		return start + " did not accept the sign-in. Nothing was connected: try again."
	case flowUnknownProvider:
		return "That service is not configured in Tether (any more)."
	case flowProviderUnavailable:
		return start + " cannot be reached right now. Nothing was connected: try again in a minute."
	case "temporarily_unavailable", "server_error":
		return start + " had a problem (" + code + "). Nothing was connected: try again in a minute."
	case "invalid_request", "unauthorized_client", "unsupported_response_type", "invalid_scope":
		// RFC 6749 §4.1.2.1: the provider refused the request Tether made.
		return start + " refused the connection (" + code + "): an administrator needs to check its settings. Nothing was connected."
	}
	// flowFailed, and any code no one defined: not echoed, since a link to
	// the page could carry any words in it.
	return "The connection did not complete. Nothing was connected: try again."
}

// wantsPage tells a person's browser navigating to a page (which should see
// a page) from an API client (which gets JSON).
func wantsPage(r *http.Request) bool {
	if dest := r.Header.Get("Sec-Fetch-Dest"); dest != "" {
		return dest == "document"
	}
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

const (
	routeAuthorize = "/api/data/oauth2/providers/:provider_id/authorize"
	routeCallback  = "/api/data/oauth2/callback"
)

// pageError answers an error for a browser, and reports whether it did: the
// OAuth2 flow sends it back to the page with a message; a page under /ui/
// shows the message with a way back. Everyone else gets the JSON error.
func (s *Server) pageError(c echo.Context, err error, code, message string, status int) bool {
	r := c.Request()
	if !s.ui.registered || !wantsPage(r) {
		return false
	}
	if route := c.Path(); (route == routeAuthorize || route == routeCallback) && r.Method == http.MethodGet {
		_ = c.Redirect(http.StatusSeeOther, flowErrorURL(c, err, code))
		return true
	}
	if !strings.HasPrefix(r.URL.Path, "/ui/") {
		return false
	}
	page := messagePage{Title: "That did not work", Message: message, Link: "/ui/", LinkText: "Back to your connected accounts", Status: status}
	switch {
	case code == EUNAUTHORIZED:
		page.Title, page.Message = "You are not signed in", "Sign in to see your connected accounts."
		page.LinkText = "Sign in"
		if s.ui.DevLogin {
			page.Link = "/ui/dev/login"
		}
	case code == ENOTFOUND:
		page.Title = "Not found"
	case status >= 500:
		page.Title = "Something went wrong on our side"
	}
	_ = render(c, status, "message.html", page)
	return true
}

// flowErrorURL is where a failed authorize or callback sends the browser.
func flowErrorURL(c echo.Context, err error, code string) string {
	var appErr *Error
	errors.As(err, &appErr)
	reason := flowFailed
	switch {
	case appErr == errInvalidState:
		reason = flowInvalidState
	case appErr == errStateExpired:
		reason = flowExpired
	case code == EUNAUTHORIZED:
		return "/ui/"
	case code == ENOTFOUND:
		reason = flowUnknownProvider
	case code == EUNAVAILABLE:
		reason = flowProviderUnavailable
	}
	target := "/ui/?error=" + reason
	if id := c.Param("provider_id"); c.Path() == routeAuthorize && ValidProviderID(id) && reason != flowUnknownProvider {
		target = fmt.Sprintf("/ui/?provider=%s&error=%s", id, reason)
	}
	return target
}
