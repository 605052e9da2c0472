package spicedb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// ownedRelations are the relations Tether owns, the Watch's filter.
var ownedRelations = []*v1.RelationshipFilter{
	{ResourceType: TypeOAuth2Client, OptionalRelation: RelConnected},
	{ResourceType: TypeResourcePool, OptionalRelation: RelProvider},
	{ResourceType: TypeResourcePool, OptionalRelation: RelViewer},
}

// maxWatchMessage bounds one Watch message: a transaction with many changes
// (a bulk import) arrives as one.
const maxWatchMessage = 256 << 20

// WatchMessage is one message of a Watch stream: the changes of one
// revision, a checkpoint, or news of a schema change.
type WatchMessage struct {
	// Changes: TOUCH (Delete false) or DELETE of a relationship on an owned
	// relation.
	Changes []Update
	// Metadata is the transaction metadata of every transaction at this
	// revision (one, unless the datastore groups several).
	Metadata []*structpb.Struct
	// Token is the revision through which the stream has delivered
	// everything: where to resume.
	Token         string
	SchemaUpdated bool
}

// WatchStream is an open Watch.
type WatchStream struct {
	stream grpc.ServerStreamingClient[v1.WatchResponse]
}

// Watch streams the changes to Tether's relations after revision start (a
// ZedToken; empty: from now), with checkpoints and schema changes.
func (s *Client) Watch(ctx context.Context, start string) (*WatchStream, error) {
	req := &v1.WatchRequest{
		OptionalRelationshipFilters: ownedRelations,
		OptionalUpdateKinds: []v1.WatchKind{v1.WatchKind_WATCH_KIND_INCLUDE_RELATIONSHIP_UPDATES,
			v1.WatchKind_WATCH_KIND_INCLUDE_SCHEMA_UPDATES, v1.WatchKind_WATCH_KIND_INCLUDE_CHECKPOINTS},
	}
	if start != "" {
		req.OptionalStartCursor = &v1.ZedToken{Token: start}
	}
	stream, err := s.client.Watch(ctx, req, grpc.MaxCallRecvMsgSize(maxWatchMessage))
	if err != nil {
		return nil, fmt.Errorf("error starting the SpiceDB watch: %w", err)
	}
	return &WatchStream{stream: stream}, nil
}

// Recv returns the next message.
func (w *WatchStream) Recv() (*WatchMessage, error) {
	resp, err := w.stream.Recv()
	if err != nil {
		return nil, err
	}
	m := &WatchMessage{Token: resp.GetChangesThrough().GetToken(), Metadata: resp.GetFullRevisionMetadata(),
		SchemaUpdated: resp.GetSchemaUpdated(), Changes: make([]Update, len(resp.GetUpdates()))}
	for i, u := range resp.GetUpdates() {
		m.Changes[i] = Update{Relationship: relationshipFromProto(u.GetRelationship()),
			Delete: u.GetOperation() == v1.RelationshipUpdate_OPERATION_DELETE}
	}
	return m, nil
}

// WatchErrorKind says what a failed Watch means for its caller.
type WatchErrorKind int

const (
	// WatchTransient: reconnect and resume.
	WatchTransient WatchErrorKind = iota
	// WatchUnavailable: SpiceDB cannot watch (on its Postgres datastore,
	// track_commit_timestamp is off: v1.56 then registers no Watch service).
	WatchUnavailable
	// WatchUnresumable: the start revision is unknown, expired (outside the
	// GC window) or another datastore's (a store replaced).
	WatchUnresumable
	// WatchSchemaMissing: the store lacks Tether's definitions.
	WatchSchemaMissing
)

// ClassifyWatchError reads a Watch error as SpiceDB v1.56 reports it.
func ClassifyWatchError(err error) WatchErrorKind {
	st, ok := status.FromError(UnwrapStatus(err))
	if !ok {
		return WatchTransient
	}
	msg := st.Message()
	switch {
	case st.Code() == codes.Unimplemented,
		st.Code() == codes.FailedPrecondition && strings.Contains(msg, "watch is currently disabled"):
		return WatchUnavailable
	case st.Code() == codes.OutOfRange, // "invalid zedtoken": expired or indeterminate
		st.Code() == codes.InvalidArgument && (strings.Contains(msg, "start revision") || strings.Contains(msg, "datastore")):
		return WatchUnresumable
	case IsSchemaMissing(err):
		return WatchSchemaMissing
	}
	return WatchTransient
}

// SchemaAt reads the schema's state and the (head) revision it was read at.
func (s *Client) SchemaAt(ctx context.Context) (SchemaState, string, error) {
	resp, err := s.client.ReadSchema(ctx, &v1.ReadSchemaRequest{})
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return SchemaMissing, "", nil
		}
		return 0, "", fmt.Errorf("error reading SpiceDB schema: %w", err)
	}
	state := SchemaDifferent
	if normalizeSchema(resp.GetSchemaText()) == normalizeSchema(Schema) {
		state = SchemaCurrent
	}
	return state, resp.GetReadAt().GetToken(), nil
}

// WriteSchemaAt writes Schema and returns the revision it was written at.
func (s *Client) WriteSchemaAt(ctx context.Context) (string, error) {
	resp, err := s.client.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: Schema})
	if err != nil {
		return "", fmt.Errorf("error writing SpiceDB schema: %w", err)
	}
	return resp.GetWrittenAt().GetToken(), nil
}

// HasRelationships reports whether SpiceDB holds any relationship on a
// resource of type resourceType (fully consistent).
func (s *Client) HasRelationships(ctx context.Context, resourceType string) (bool, error) {
	stream, err := s.client.ReadRelationships(ctx, &v1.ReadRelationshipsRequest{
		Consistency: fullyConsistent, RelationshipFilter: &v1.RelationshipFilter{ResourceType: resourceType}, OptionalLimit: 1,
	})
	if err != nil {
		return false, fmt.Errorf("error reading SpiceDB: %w", err)
	}
	_, err = stream.Recv()
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, io.EOF):
		return false, nil
	}
	return false, fmt.Errorf("error reading SpiceDB: %w", err)
}

// Import creates rels with ImportBulkRelationships: one transaction for the
// whole call (a COPY on SpiceDB's Postgres datastore), create-only — a
// relationship that exists fails the call and nothing is written. It
// carries no transaction metadata (the API has none): the watcher checks
// such changes against Postgres, where a restore's agree.
func (s *Client) Import(ctx context.Context, rels []Relationship) error {
	stream, err := s.client.ImportBulkRelationships(ctx)
	if err != nil {
		return fmt.Errorf("error starting a bulk import: %w", err)
	}
	for chunk := range slices.Chunk(rels, 1000) {
		req := &v1.ImportBulkRelationshipsRequest{Relationships: make([]*v1.Relationship, len(chunk))}
		for i, r := range chunk {
			req.Relationships[i] = r.proto()
		}
		if err := stream.Send(req); err != nil {
			if errors.Is(err, io.EOF) { // the server ended the call: its error comes with the answer
				break
			}
			return fmt.Errorf("error importing relationships: %w", err)
		}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		s.reportFailure(err)
		return fmt.Errorf("error importing %d relationships: %w", len(rels), err)
	}
	return nil
}
