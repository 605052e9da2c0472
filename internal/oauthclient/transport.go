package oauthclient

import (
	"errors"
	"fmt"
	"io"
	"net/http"
)

// maxResponseBytes bounds what Tether reads of any provider answer: a token
// response is a few kilobytes; a hostile or broken provider's error page
// must not be read (or logged) in full.
const maxResponseBytes = 128 << 10

// ErrResponseTooLarge is returned by reads past maxResponseBytes.
var ErrResponseTooLarge = fmt.Errorf("the provider's answer is larger than %d bytes", maxResponseBytes)

// ErrInsecureURL refuses a request over plain http to a host that is not a
// loopback host (outside dev mode).
var ErrInsecureURL = errors.New("refusing plain http to a provider that is not on a loopback host")

// guardedTransport enforces the outbound rules on every request, whatever
// URL a provider or its discovery document supplied.
type guardedTransport struct {
	base      http.RoundTripper
	allowHTTP bool
}

func (t *guardedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !AllowsURL(req.URL.String(), t.allowHTTP) {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, ErrInsecureURL
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{ReadCloser: resp.Body, left: maxResponseBytes}
	return resp, nil
}

// limitedBody fails a read past its bound instead of truncating silently
// (a truncated token response must not parse).
type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells "exactly at the bound" from "past it".
		var one [1]byte
		n, err := b.ReadCloser.Read(one[:])
		if n > 0 {
			return 0, ErrResponseTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
