// Package faultproxy is a TCP proxy on loopback for fault tests: it forwards
// every connection to one upstream address and can, while it runs, delay each
// chunk of data, stall all traffic, reset the connections it carries, or
// refuse new ones. It is a small stand-in for Toxiproxy, with no dependency;
// it is never part of a production deployment.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards connections accepted on Addr to an upstream address.
type Proxy struct {
	upstream string
	ln       net.Listener

	latency   atomic.Int64 // nanoseconds added to every chunk, each direction
	rejecting atomic.Bool

	mu      sync.Mutex
	stalled bool
	resume  chan struct{} // closed when a stall ends
	conns   map[*link]struct{}
	closed  bool

	accepted atomic.Int64
	held     atomic.Int64
	wg       sync.WaitGroup
}

// link is one proxied connection: the client's side and the upstream side.
type link struct {
	client, server net.Conn
	once           sync.Once
	done           chan struct{}
}

// chunk is data read from one side, stamped with when it may be delivered.
type chunk struct {
	data []byte
	due  time.Time
}

// New starts a proxy on 127.0.0.1 (a free port) to upstream.
func New(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: error listening: %w", err)
	}
	p := &Proxy{upstream: upstream, ln: ln, conns: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the proxy's address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every chunk of data, in both directions, by d from the
// moment the proxy read it (a pure delay: chunks are pipelined, throughput is
// not limited). 0 removes the delay for chunks read from then on.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// Latency is the current added delay.
func (p *Proxy) Latency() time.Duration { return time.Duration(p.latency.Load()) }

// Stall stops forwarding data in both directions (connections stay open and
// new ones are accepted, but nothing arrives) until Resume.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stalled {
		p.stalled = true
		p.resume = make(chan struct{})
	}
}

// Resume ends a stall; held data is delivered.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled {
		p.stalled = false
		close(p.resume)
	}
}

// SetRejecting makes the proxy reset new connections at once (true), as a
// dead host behind a live load balancer would, or accept them again (false).
func (p *Proxy) SetRejecting(reject bool) { p.rejecting.Store(reject) }

// ResetAll resets every connection the proxy carries (TCP RST to both sides)
// and returns how many there were.
func (p *Proxy) ResetAll() int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.reset()
	}
	return len(links)
}

// Conns is the number of connections currently carried.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Held is how many chunks of data a stall has held so far: a signal that
// traffic reached the proxy and is stuck in it.
func (p *Proxy) Held() int64 { return p.held.Load() }

// Accepted is the number of connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Close stops listening, resets every connection and waits for the proxy's
// goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	if p.stalled {
		p.stalled = false
		close(p.resume)
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.ResetAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.accepted.Add(1)
		if p.rejecting.Load() {
			resetConn(c)
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		resetConn(client)
		return
	}
	l := &link{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.reset()
		return
	}
	p.conns[l] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, l)
		p.mu.Unlock()
	}()

	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); p.pipe(l, client, server) }()
	go func() { defer pipes.Done(); p.pipe(l, server, client) }()
	pipes.Wait()
	l.close()
}

// pipe forwards src to dst: a reader stamps each chunk with its due time, a
// writer delivers it then (and not while the proxy is stalled).
func (p *Proxy) pipe(l *link, src, dst net.Conn) {
	queue := make(chan chunk, 1024)
	var writer sync.WaitGroup
	writer.Add(1)
	go func() {
		defer writer.Done()
		for c := range queue {
			if !p.wait(l, c.due) {
				continue // the link is going: drain the queue
			}
			if _, err := dst.Write(c.data); err != nil {
				l.reset()
				continue
			}
		}
		// Source finished cleanly: pass the half-close on.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			data := make([]byte, n)
			copy(data, buf[:n])
			select {
			case queue <- chunk{data: data, due: time.Now().Add(p.Latency())}:
			case <-l.done:
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				l.reset()
			}
			break
		}
	}
	close(queue)
	writer.Wait()
}

// wait blocks until due and until no stall is in force; false if the link
// ends meanwhile.
func (p *Proxy) wait(l *link, due time.Time) bool {
	if d := time.Until(due); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-l.done:
			t.Stop()
			return false
		}
	}
	for {
		p.mu.Lock()
		stalled, resume := p.stalled, p.resume
		p.mu.Unlock()
		if !stalled {
			break
		}
		p.held.Add(1)
		select {
		case <-resume:
		case <-l.done:
			return false
		}
	}
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// reset ends both sides of the link with a TCP RST.
func (l *link) reset() {
	l.once.Do(func() {
		close(l.done)
		resetConn(l.client)
		resetConn(l.server)
	})
}

// close ends both sides of the link normally.
func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		_ = l.client.Close()
		_ = l.server.Close()
	})
}

func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // close sends RST instead of FIN
	}
	_ = c.Close()
}
