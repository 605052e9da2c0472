package loopback_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/internal/loopback"
)

func TestHost(t *testing.T) {
	t.Parallel()
	for _, h := range []string{"localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1"} {
		require.True(t, loopback.Host(h), h)
	}
	for _, h := range []string{"", "0.0.0.0", "::", "[::]", "10.0.0.1", "192.168.1.1", "169.254.169.254", "localhost.evil.example",
		"evil.localhost.example", "127.0.0.1.nip.io", "fe80::1%lo", "example.org", "localhost."} {
		require.False(t, loopback.Host(h), h)
	}
}

func TestAddr(t *testing.T) {
	t.Parallel()
	for _, a := range []string{"127.0.0.1:8080", "localhost:0", "[::1]:80"} {
		require.True(t, loopback.Addr(a), a)
	}
	for _, a := range []string{":8080", "0.0.0.0:8080", "[::]:8080", "192.168.1.2:8080", "tether.example:443", "127.0.0.1", ""} {
		require.False(t, loopback.Addr(a), a)
	}
}
