package app

import (
	"context"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"
)

// What the connected-accounts page shows, computed from the service's
// answers: one row per provider with its status in words, the access it
// grants and how far that is applied, the pools, and a message about what
// just happened.

type pageData struct {
	User     *User
	CSRF     string
	RiverUI  bool
	Flash    *flash
	Accounts []accountView
	Pools    []poolView
	// Refresh reloads the page after this many seconds (0: never) while
	// something is on its way: no script needed, CSP-safe.
	Refresh int
}

// flash is a message about the last action: success, info or error.
type flash struct {
	Kind string
	Text string
}

type accountView struct {
	Provider *Provider
	Conn     *Connection // nil: not connected
	// State is the row's state for styling and tests: none, authorizing,
	// connected, broken.
	State  string
	Status string     // the state in words
	Note   string     // a re-authorization in flight, or when a sign-in expires
	Until  *time.Time // when the authorization in flight expires
	Access *accessView
	// Connect is Connect or Reconnect; ConnectURL starts the flow and comes
	// back to this page with the provider named (for the result message).
	Connect    string
	ConnectURL string
}

// accessView says how far the access of a connection (or its removal) is
// applied: Class is granted, granting, removing, removed or retrying.
type accessView struct {
	Class string
	Text  string
	Since string // "since" or "at": how At reads after Text
	At    *time.Time
}

type poolView struct {
	*Pool
	Via   string // the provider it comes through, by name
	Ready bool
	Text  string
}

// refreshWhilePending is how often the page reloads while access is on its
// way.
const refreshWhilePending = 2

func (s *Server) pageData(ctx context.Context, user *User, query url.Values) (*pageData, error) {
	providers, err := s.service.ProviderList(ctx)
	if err != nil {
		return nil, err
	}
	conns, err := s.service.ConnectionList(ctx, user)
	if err != nil {
		return nil, err
	}
	keys, err := s.service.ConnectionKeys(ctx, user)
	if err != nil {
		return nil, err
	}
	pools, err := s.service.PoolList(ctx, user)
	if err != nil {
		return nil, err
	}
	byProvider := make(map[string]*Connection, len(conns))
	for _, conn := range conns {
		byProvider[conn.ProviderID] = conn
	}
	d := &pageData{User: user, RiverUI: s.ui.riverUI && user.Admin}
	names := map[string]string{}
	for _, p := range providers {
		names[p.ID] = p.DisplayName
		d.Accounts = append(d.Accounts, accountRow(p, byProvider[p.ID], keys[p.ID]))
	}
	d.Pools = poolRows(pools, byProvider, names)
	d.Flash = flashFrom(query, names, byProvider, keys)
	d.Refresh = refreshAfter(d, time.Now())
	return d, nil
}

// accountRow describes one provider: connection, status and access.
func accountRow(p *Provider, conn *Connection, key KeySync) accountView {
	v := accountView{Provider: p, State: "none", Status: "Not connected", Connect: "Connect",
		ConnectURL: "/api/data/oauth2/providers/" + p.ID + "/authorize?next_url=" + url.QueryEscape("/ui/?provider="+p.ID)}
	switch {
	case conn == nil || conn.Status == "pending":
		if conn != nil && conn.AuthorizingUntil != nil {
			v.State, v.Status, v.Until = "authorizing", "Waiting for you to sign in at "+p.DisplayName, conn.AuthorizingUntil
			v.Note = "This sign-in expires at " + formatTime(*conn.AuthorizingUntil) + "."
		}
		if key.Revoking || key.Sync.State == "pending" || key.Sync.State == "retrying" {
			v.Access = removalView(key.Sync)
		}
		return v
	case conn.Status == "error":
		v.State, v.Status = "broken", "Needs reconnecting: "+p.DisplayName+" no longer accepts this connection"
		v.Access = removalView(conn.Sync)
	default:
		v.State, v.Status = "connected", "Connected"
		v.Access = grantView(conn.Sync)
	}
	v.Conn, v.Connect = conn, "Reconnect"
	if conn.AuthorizingUntil != nil {
		v.Until = conn.AuthorizingUntil
		v.Note = "Reconnecting: finish signing in at " + p.DisplayName + " by " + formatTime(*conn.AuthorizingUntil) +
			". Until then the current connection stays as it is."
	}
	return v
}

func grantView(st SyncStatus) *accessView {
	switch st.State {
	case "synced", "none":
		return &accessView{Class: "granted", Text: "Granted", Since: "in effect since", At: st.AppliedAt}
	case "retrying":
		return &accessView{Class: "retrying", Text: "Being granted: " + retryReason(st.LastError) + " Tether keeps trying."}
	}
	return &accessView{Class: "granting", Text: "Being granted…"}
}

func removalView(st SyncStatus) *accessView {
	switch st.State {
	case "synced", "none":
		return &accessView{Class: "removed", Text: "Removed", Since: "at", At: st.AppliedAt}
	case "retrying":
		return &accessView{Class: "retrying", Text: "Being removed: " + retryReason(st.LastError) + " Tether keeps trying."}
	}
	return &accessView{Class: "removing", Text: "Being removed…"}
}

// retryReason says in words why the last attempt failed: the stored error
// is a gRPC code and message, for operators.
func retryReason(lastError *string) string {
	if lastError != nil {
		for _, code := range []string{"Unavailable", "DeadlineExceeded", "connection refused"} {
			if strings.Contains(*lastError, code) {
				return "the permission service cannot be reached right now."
			}
		}
	}
	return "the last attempt failed."
}

// poolRows says of each pool whether its access is in effect everywhere yet:
// the pool's own relationships and, for a pool reached through a provider,
// the user's connection to it.
func poolRows(pools []*Pool, conns map[string]*Connection, names map[string]string) []poolView {
	out := make([]poolView, 0, len(pools))
	for _, p := range pools {
		v := poolView{Pool: p, Ready: true, Text: "Ready"}
		waiting := p.Sync
		if p.Remote != nil {
			v.Via = names[p.Remote.ProviderID]
			if c := conns[p.Remote.ProviderID]; c != nil && c.Status == "connected" && !p.Public && waiting.State == "synced" {
				waiting = c.Sync
			}
		}
		switch waiting.State {
		case "pending":
			v.Ready, v.Text = false, "Awaiting access…"
		case "retrying":
			v.Ready, v.Text = false, "Awaiting access: "+retryReason(waiting.LastError)
		}
		out = append(out, v)
	}
	return out
}

// refreshAfter reloads the page while anything is on its way: every few
// seconds while access is applied, and when a sign-in in flight expires.
func refreshAfter(d *pageData, now time.Time) int {
	refresh := 0
	soonest := func(seconds int) {
		if refresh == 0 || seconds < refresh {
			refresh = seconds
		}
	}
	for _, a := range d.Accounts {
		if a.Access != nil && a.Access.Class != "granted" && a.Access.Class != "removed" {
			soonest(refreshWhilePending)
		}
		if a.Until != nil {
			soonest(max(refreshWhilePending, min(60, int(a.Until.Sub(now).Seconds())+1)))
		}
	}
	for _, p := range d.Pools {
		if !p.Ready {
			soonest(refreshWhilePending)
		}
	}
	return refresh
}

// confirmPage asks before a disconnect.
type confirmPage struct {
	Account accountView
	Conn    *Connection
	Pools   []poolView // pools that come through this provider
	CSRF    string
}

func (s *Server) confirmData(ctx context.Context, user *User, id uuid.UUID) (*confirmPage, error) {
	conn, err := s.service.ConnectionGet(ctx, user, id)
	if err != nil {
		return nil, err
	}
	provider, err := s.service.ProviderGet(ctx, conn.ProviderID)
	if err != nil {
		return nil, err
	}
	pools, err := s.service.PoolList(ctx, user)
	if err != nil {
		return nil, err
	}
	d := &confirmPage{Account: accountRow(provider, conn, KeySync{}), Conn: conn}
	for _, p := range poolRows(pools, nil, map[string]string{provider.ID: provider.DisplayName}) {
		if p.Remote != nil && p.Remote.ProviderID == provider.ID && !p.Public {
			d.Pools = append(d.Pools, p)
		}
	}
	return d, nil
}

// messagePage is a page with one message and a way on.
type messagePage struct {
	Title, Message string
	Link, LinkText string
	Status         int
}
