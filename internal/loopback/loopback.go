// Package loopback tells loopback hosts (localhost, 127.0.0.0/8, ::1) from
// every other host. Tether relaxes two rules for them only: provider URLs may
// be plain http, and dev mode may be on.
package loopback

import (
	"net"
	"net/netip"
	"strings"
)

// Host reports whether host (a name or an IP literal, brackets allowed) is
// localhost, in 127.0.0.0/8 or ::1. Names other than localhost are not
// resolved: a name that merely points at 127.0.0.1 today may not tomorrow.
func Host(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return false
	}
	return ip.Unmap().IsLoopback()
}

// Addr reports whether a listen address host:port binds a loopback
// interface only. ":8080" (every interface), "0.0.0.0:8080" and "[::]:8080"
// do not.
func Addr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		return false
	}
	return Host(host)
}
