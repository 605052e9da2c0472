package oauthtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/html"
)

// Login drives the provider's side of an authorization-code flow without a
// browser: it GETs authURL (made by oauth2.Config.AuthCodeURL for this
// provider), follows the redirects to the login page, submits user's
// username and password, and follows the provider's redirects until one
// leaves the provider. It returns that redirect's URL — the redirect URI
// with code and state, or with error and state — without requesting it.
//
// client supplies the transport and cookie jar (nil: http.DefaultClient);
// it is not modified, and its redirect policy is not used. A wrong password
// or a request the OP refuses without redirecting (an unregistered
// redirect_uri) is an error.
func (p *Provider) Login(ctx context.Context, client *http.Client, authURL string, user User) (callbackURL *url.URL, err error) {
	issuer, err := url.Parse(p.Issuer)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(authURL)
	if err != nil {
		return nil, fmt.Errorf("oauthtest: login: %w", err)
	}
	if !atHost(u, issuer) {
		return nil, fmt.Errorf("oauthtest: login: %s is not at this provider (%s)", authURL, p.Issuer)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	l := &login{client: noRedirects(client), issuer: issuer, user: user}
	for hop := 0; hop < 20; hop++ {
		if req, callbackURL, err = l.step(ctx, req); err != nil || callbackURL != nil {
			return callbackURL, err
		}
	}
	return nil, errors.New("oauthtest: login: too many redirects")
}

// noRedirects copies client (nil: http.DefaultClient) with a policy that
// returns each redirect instead of following it: Login must see every hop
// to stop at the first one that leaves the provider.
func noRedirects(client *http.Client) *http.Client {
	if client == nil {
		client = http.DefaultClient
	}
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

// atHost reports whether u is on the provider's scheme and host.
func atHost(u, issuer *url.URL) bool { return u.Scheme == issuer.Scheme && u.Host == issuer.Host }

// login is one Login in progress.
type login struct {
	client *http.Client // follows no redirect
	issuer *url.URL
	user   User
	// submitted is set once the credentials are posted: the login page
	// seen again after that means they were refused.
	submitted bool
}

// step sends req and returns the request to send next or, when the
// provider redirects away from itself, that redirect's URL.
func (l *login) step(ctx context.Context, req *http.Request) (next *http.Request, callbackURL *url.URL, err error) {
	resp, err := l.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("oauthtest: login: %w", err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("oauthtest: login: %s: %w", req.URL, err)
	}
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		loc, err := resp.Location()
		if err != nil {
			return nil, nil, fmt.Errorf("oauthtest: login: %s: %d without Location", req.URL, resp.StatusCode)
		}
		if !atHost(loc, l.issuer) {
			return nil, loc, nil
		}
		next, err = http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
		return next, nil, err
	case resp.StatusCode == http.StatusOK && req.URL.Path == "/"+LoginPath:
		next, err = l.submit(ctx, req.URL, body)
		return next, nil, err
	default:
		return nil, nil, fmt.Errorf("oauthtest: login: %s %s: %s: %s", req.Method, req.URL, resp.Status, strings.TrimSpace(string(body)))
	}
}

// submit fills in the login page served at page with the user's username
// and password and returns the form's POST.
func (l *login) submit(ctx context.Context, page *url.URL, body []byte) (*http.Request, error) {
	f, err := parseLoginForm(body)
	if err != nil {
		return nil, fmt.Errorf("oauthtest: login: %s: %w", page, err)
	}
	if l.submitted {
		// The OP renders the form again, with a message, when
		// the credentials are wrong.
		return nil, fmt.Errorf("oauthtest: login as %q refused: %s", l.user.Username, f.message)
	}
	action, err := page.Parse(f.action)
	if err != nil {
		return nil, fmt.Errorf("oauthtest: login: form action %q: %w", f.action, err)
	}
	form := url.Values{}
	for k, v := range f.hidden {
		form.Set(k, v)
	}
	form.Set(f.usernameField, l.user.Username)
	form.Set(f.passwordField, l.user.Password)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	l.submitted = true
	return req, nil
}

type loginForm struct {
	action                       string
	hidden                       map[string]string
	usernameField, passwordField string
	message                      string // the error paragraph, if any
}

// parseLoginForm reads the example OP's login page: a POST form with a
// hidden "id" (the auth request ID), a text input "username", a password
// input "password", and a red <p> holding the last error.
func parseLoginForm(page []byte) (loginForm, error) {
	doc, err := html.Parse(strings.NewReader(string(page)))
	if err != nil {
		return loginForm{}, err
	}
	f := loginForm{hidden: map[string]string{}}
	var inForm, found bool
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "form":
				if !found && strings.EqualFold(attr(n, "method"), http.MethodPost) {
					found, inForm = true, true
					f.action = attr(n, "action")
					for c := n.FirstChild; c != nil; c = c.NextSibling {
						walk(c)
					}
					inForm = false
					return
				}
			case "input":
				if inForm {
					name := attr(n, "name")
					switch strings.ToLower(attr(n, "type")) {
					case "hidden":
						f.hidden[name] = attr(n, "value")
					case "password":
						f.passwordField = name
					case "", "text", "email":
						f.usernameField = name
					}
				}
			case "p":
				if inForm {
					f.message = strings.TrimSpace(text(n))
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	switch {
	case !found:
		return f, errors.New("no login form")
	case f.usernameField == "" || f.passwordField == "":
		return f, errors.New("login form without username or password input")
	}
	return f, nil
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}
