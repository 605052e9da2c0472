// Package spicedb is Tether's client of SpiceDB: the schema it owns, the
// relationships and updates it writes, how it reads them back, the error
// classes its callers act on (transient, schema missing), and the reversible
// encoding of user ids into SpiceDB object ids.
package spicedb

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/authzed/authzed-go/v1"
	"github.com/authzed/grpcutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Schema is the SpiceDB schema of the contract: indirection, not fan-out. One
// relationship per connection (oauth2_client#connected) and one per pool link
// (resource_pool#provider).
const Schema = `definition user {}

definition oauth2_client {
    relation connected: user
}

definition resource_pool {
    relation viewer: user | user:*
    relation provider: oauth2_client
    permission view = viewer + provider->connected
}
`

// Object types and relations of Schema.
const (
	TypeUser         = "user"
	TypeOAuth2Client = "oauth2_client"
	TypeResourcePool = "resource_pool"
	RelConnected     = "connected"
	RelViewer        = "viewer"
	RelProvider      = "provider"
	PermissionView   = "view"
	Wildcard         = "*"
)

// MaxUpdatesPerWrite is SpiceDB's default limit of updates in one
// WriteRelationships call.
const MaxUpdatesPerWrite = 1000

// Config says how to reach SpiceDB.
type Config struct {
	Endpoint string
	Token    string
	Insecure bool
	// DialOptions are added last; tests use them to inject faults.
	DialOptions []grpc.DialOption
}

// SpiceDB is Tether's client of SpiceDB: the projection it writes.
type Client struct {
	client *authzed.Client
	// keys signs every write as Tether's (see writekey.go).
	keys writeKeySource
	// hooks, if set, hear what calls find out about the store (hooks.go).
	hooks atomic.Pointer[Hooks]
	// lastTouch is when a write of this client carrying a TOUCH was last
	// acknowledged (unix ns): a change any live Watch stream delivers.
	lastTouch atomic.Int64
}

// LastTouch is when SpiceDB last acknowledged a write of this client that
// carried a TOUCH (zero: never). A TOUCH always makes a change, even of a
// relationship that exists already; a DELETE of one that does not exist
// changes nothing. The watcher checks its stream against it.
func (s *Client) LastTouch() time.Time {
	if ns := s.lastTouch.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// New connects lazily (gRPC dials on first use).
func New(cfg Config) (*Client, error) {
	opts := []grpc.DialOption{}
	if cfg.Insecure {
		opts = append(opts,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpcutil.WithInsecureBearerToken(cfg.Token))
	} else {
		certs, err := grpcutil.WithSystemCerts(grpcutil.VerifyCA)
		if err != nil {
			return nil, fmt.Errorf("error loading system certificates: %w", err)
		}
		opts = append(opts, certs, grpcutil.WithBearerToken(cfg.Token))
	}
	// gRPC's default reconnect backoff grows to two minutes: after an outage
	// Tether would keep failing long after SpiceDB is back. Cap it at a
	// quarter second: a dial to a SpiceDB that is down is refused at once,
	// so trying four times a second costs nothing, while a 2 s cap left the
	// healer's probe failing up to 2.4 s after SpiceDB was back — a third
	// of the heal after a 60 s outage (bench scenario 7). (Calling
	// ResetConnectBackoff from the probe instead races inside grpc-go
	// v1.85: it ranges over the connection's subchannels unlocked.)
	opts = append(opts, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
		MinConnectTimeout: 5 * time.Second,
	}))
	opts = append(opts, cfg.DialOptions...)
	client, err := authzed.NewClient(cfg.Endpoint, opts...)
	if err != nil {
		return nil, fmt.Errorf("error creating SpiceDB client for %q: %w", cfg.Endpoint, err)
	}
	return &Client{client: client}, nil
}

// Client exposes the underlying client for reads (checks, lookups) in tests and tools.
func (s *Client) Authzed() *authzed.Client { return s.client }

// Close closes the connection.
func (s *Client) Close() error { return s.client.Close() }

var fullyConsistent = &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}}

// SchemaState reports whether SpiceDB holds exactly Tether's schema.
type SchemaState int

const (
	SchemaCurrent SchemaState = iota
	SchemaMissing
	SchemaDifferent
)

func (s SchemaState) String() string {
	switch s {
	case SchemaCurrent:
		return "current"
	case SchemaMissing:
		return "missing"
	default:
		return "different"
	}
}

// CheckSchema compares SpiceDB's schema with Schema, ignoring white space.
func (s *Client) CheckSchema(ctx context.Context) (SchemaState, error) {
	resp, err := s.client.ReadSchema(ctx, &v1.ReadSchemaRequest{})
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return SchemaMissing, nil
		}
		return 0, fmt.Errorf("error reading SpiceDB schema: %w", err)
	}
	if normalizeSchema(resp.GetSchemaText()) == normalizeSchema(Schema) {
		return SchemaCurrent, nil
	}
	return SchemaDifferent, nil
}

// normalizeSchema makes schemas comparable: SpiceDB returns the definitions
// sorted by name and re-indented.
func normalizeSchema(s string) string {
	defs := strings.Split(strings.Join(strings.Fields(s), " "), "definition ")
	for i := range defs {
		defs[i] = strings.TrimSpace(defs[i])
	}
	slices.Sort(defs)
	return strings.Join(defs, "\n")
}

// WriteSchema writes Schema.
func (s *Client) WriteSchema(ctx context.Context) error {
	if _, err := s.client.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: Schema}); err != nil {
		return fmt.Errorf("error writing SpiceDB schema: %w", err)
	}
	return nil
}

// Relationship is one SpiceDB relationship in Tether's flat form (subjects
// never carry a relation in Tether's schema).
type Relationship struct {
	ResourceType string
	ResourceID   string
	Relation     string
	SubjectType  string
	SubjectID    string
}

func (r Relationship) String() string {
	return r.ResourceType + ":" + r.ResourceID + "#" + r.Relation + "@" + r.SubjectType + ":" + r.SubjectID
}

// CompareRelationships orders relationships field by field in byte order:
// the order in which SpiceDB's ExportBulkRelationships streams them from its
// memory datastore, and from its Postgres datastore when that database
// collates in byte order (C or C.UTF-8); the reconciler checks, and does not
// rely on it.
func CompareRelationships(a, b Relationship) int {
	return cmp.Or(
		cmp.Compare(a.ResourceType, b.ResourceType),
		cmp.Compare(a.ResourceID, b.ResourceID),
		cmp.Compare(a.Relation, b.Relation),
		cmp.Compare(a.SubjectType, b.SubjectType),
		cmp.Compare(a.SubjectID, b.SubjectID),
	)
}

func (r Relationship) proto() *v1.Relationship {
	return &v1.Relationship{
		Resource: &v1.ObjectReference{ObjectType: r.ResourceType, ObjectId: r.ResourceID},
		Relation: r.Relation,
		Subject:  &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: r.SubjectType, ObjectId: r.SubjectID}},
	}
}

func relationshipFromProto(r *v1.Relationship) Relationship {
	return Relationship{
		ResourceType: r.GetResource().GetObjectType(),
		ResourceID:   r.GetResource().GetObjectId(),
		Relation:     r.GetRelation(),
		SubjectType:  r.GetSubject().GetObject().GetObjectType(),
		SubjectID:    r.GetSubject().GetObject().GetObjectId(),
	}
}

// Update is a TOUCH (Delete false) or DELETE of one relationship.
type Update struct {
	Relationship Relationship
	Delete       bool
}

// Write applies updates in calls of at most MaxUpdatesPerWrite, sorted (so
// concurrent writers take SpiceDB's row locks in one order and never
// deadlock) and with each relationship at most once (SpiceDB refuses a
// request that names a relationship twice; the last update wins). It returns
// the ZedToken of the last call. TOUCH and DELETE are idempotent, so a failed
// call can simply be retried.
func (s *Client) Write(ctx context.Context, updates []Update) (string, error) {
	updates = NormalizeUpdates(updates)
	var token string
	for chunk := range slices.Chunk(updates, MaxUpdatesPerWrite) {
		meta, err := s.writeMetadata(ctx)
		if err != nil {
			return "", err
		}
		req := &v1.WriteRelationshipsRequest{Updates: make([]*v1.RelationshipUpdate, len(chunk)), OptionalTransactionMetadata: meta}
		for i, u := range chunk {
			op := v1.RelationshipUpdate_OPERATION_TOUCH
			if u.Delete {
				op = v1.RelationshipUpdate_OPERATION_DELETE
			}
			req.Updates[i] = &v1.RelationshipUpdate{Operation: op, Relationship: u.Relationship.proto()}
		}
		resp, err := s.client.WriteRelationships(ctx, req)
		if err != nil {
			s.reportFailure(err)
			return "", fmt.Errorf("error writing %d relationships to SpiceDB: %w", len(chunk), err)
		}
		token = resp.GetWrittenAt().GetToken()
		if slices.ContainsFunc(chunk, func(u Update) bool { return !u.Delete }) {
			s.lastTouch.Store(time.Now().UnixNano())
		}
	}
	return token, nil
}

func NormalizeUpdates(updates []Update) []Update {
	sorted := slices.Clone(updates)
	// Stable, so that among updates of one relationship the last one given
	// stays last and wins below.
	slices.SortStableFunc(sorted, func(a, b Update) int { return CompareRelationships(a.Relationship, b.Relationship) })
	out := sorted[:0]
	for _, u := range sorted {
		if n := len(out); n > 0 && out[n-1].Relationship == u.Relationship {
			out[n-1] = u
			continue
		}
		out = append(out, u)
	}
	return out
}

// ReadResource returns every relationship of one resource, fully consistent.
func (s *Client) ReadResource(ctx context.Context, resourceType, resourceID string) ([]Relationship, error) {
	stream, err := s.client.ReadRelationships(ctx, &v1.ReadRelationshipsRequest{
		Consistency:        fullyConsistent,
		RelationshipFilter: &v1.RelationshipFilter{ResourceType: resourceType, OptionalResourceId: resourceID},
	})
	if err != nil {
		return nil, fmt.Errorf("error reading relationships of %s:%s: %w", resourceType, resourceID, err)
	}
	var rels []Relationship
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return rels, nil
		}
		if err != nil {
			return nil, fmt.Errorf("error reading relationships of %s:%s: %w", resourceType, resourceID, err)
		}
		rels = append(rels, relationshipFromProto(resp.GetRelationship()))
	}
}

// Export streams every relationship, fully consistent, a page at a time. The
// page slice is reused between calls of fn.
func (s *Client) Export(ctx context.Context, fn func(page []Relationship) error) error {
	stream, err := s.client.ExportBulkRelationships(ctx, &v1.ExportBulkRelationshipsRequest{
		Consistency:   fullyConsistent,
		OptionalLimit: 10_000,
	})
	if err != nil {
		return fmt.Errorf("error exporting relationships: %w", err)
	}
	var page []Relationship
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("error exporting relationships: %w", err)
		}
		page = page[:0]
		for _, r := range resp.GetRelationships() {
			page = append(page, relationshipFromProto(r))
		}
		if err := fn(page); err != nil {
			return err
		}
	}
}

// IsTransient reports whether a SpiceDB error is worth retrying: the server
// was unreachable, overloaded, timed out, or hit a conflict. TOUCH and DELETE
// are idempotent, so retrying after a write that did land is harmless.
func IsTransient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	st, ok := status.FromError(UnwrapStatus(err))
	if !ok {
		return true // a network error without a gRPC status
	}
	switch st.Code() {
	// Canceled: the call was abandoned (a shutdown, or a shared batched
	// write cancelled for another job), never a verdict on the request.
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal, codes.Unknown, codes.Canceled:
		return true
	}
	return false
}

// UnwrapStatus finds the gRPC status error in a chain of wrapped errors.
func UnwrapStatus(err error) error {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if _, ok := e.(interface{ GRPCStatus() *status.Status }); ok {
			return e
		}
	}
	return err
}

// IsSchemaMissing reports whether SpiceDB refused a call because it does not
// know Tether's definitions, as after a store was wiped.
func IsSchemaMissing(err error) bool {
	st, ok := status.FromError(UnwrapStatus(err))
	if !ok {
		return false
	}
	if st.Code() == codes.NotFound {
		return true
	}
	msg := st.Message()
	return st.Code() == codes.FailedPrecondition &&
		(strings.Contains(msg, "not found") || strings.Contains(msg, "definition"))
}

// ScrubError renders an error for storage and display: the gRPC code and a
// bounded message. SpiceDB and Postgres errors carry no credentials, but they
// are bounded anyway so a runaway message cannot fill a row.
func ScrubError(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	if st, ok := status.FromError(UnwrapStatus(err)); ok {
		msg = st.Code().String() + ": " + st.Message()
	}
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return msg
}
