package faultproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tetherhq/tether/internal/devtools/faultproxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer echoes every line back until the client closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, msg string) time.Duration {
	t.Helper()
	start := time.Now()
	_, err := c.Write([]byte(msg + "\n"))
	require.NoError(t, err)
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, msg+"\n", line)
	return time.Since(start)
}

func TestProxy(t *testing.T) {
	p, err := faultproxy.New(echoServer(t))
	require.NoError(t, err)
	defer p.Close()

	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	require.Less(t, roundTrip(t, c, r, "plain"), 100*time.Millisecond)
	require.Equal(t, 1, p.Conns())

	// Latency applies to both directions: a round trip takes twice as long.
	p.SetLatency(100 * time.Millisecond)
	d := roundTrip(t, c, r, "slow")
	require.GreaterOrEqual(t, d, 200*time.Millisecond)
	require.Less(t, d, time.Second)
	p.SetLatency(0)

	// A stall holds data until Resume, then delivers it.
	p.Stall()
	_, err = c.Write([]byte("held\n"))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	_, err = r.ReadString('\n')
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "nothing may arrive while stalled, got %v", err)
	require.NoError(t, c.SetReadDeadline(time.Time{}))
	r = bufio.NewReader(c) // the timed-out reader is sticky
	p.Resume()
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "held\n", line)

	// Reset ends the connection with an error on the client's side.
	require.Equal(t, 1, p.ResetAll())
	_, err = r.ReadString('\n')
	require.Error(t, err)
	require.Eventually(t, func() bool { return p.Conns() == 0 }, time.Second, 5*time.Millisecond)

	// Rejecting resets new connections at once; accepting again works.
	p.SetRejecting(true)
	// The reset may even beat the end of the client's connect.
	if c2, err := net.Dial("tcp", p.Addr()); err == nil {
		_, err = bufio.NewReader(c2).ReadString('\n')
		require.Error(t, err)
		c2.Close()
	}
	p.SetRejecting(false)
	c3, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c3.Close()
	roundTrip(t, c3, bufio.NewReader(c3), "again")
	require.EqualValues(t, 3, p.Accepted())
}

// Close must not hang on a stalled proxy with connections open.
func TestCloseWhileStalled(t *testing.T) {
	p, err := faultproxy.New(echoServer(t))
	require.NoError(t, err)
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	roundTrip(t, c, bufio.NewReader(c), "x")
	p.Stall()
	_, err = c.Write([]byte("stuck\n"))
	require.NoError(t, err)
	done := make(chan error)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs")
	}
}
