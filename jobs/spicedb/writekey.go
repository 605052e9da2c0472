package spicedb

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// Transaction metadata that marks a SpiceDB write as Tether's own. SpiceDB
// stores it with the write's transaction and echoes it on every Watch event
// of that transaction, so the watcher can tell Tether's changes from anyone
// else's. A marker alone could be copied by anyone who can write to SpiceDB;
// so each write carries a fresh nonce, the time it was made and a MAC over
// both under a secret kept in Postgres (spicedb_write_key, handed in by
// SignWritesWith). The watcher accepts a nonce once per session and only
// when recent, so metadata copied from a Watch stream and replayed on
// another write is not accepted either.
const (
	metaVersionField = "tether"
	metaVersion      = "write/1"
	metaNonceField   = "n"
	metaTimeField    = "t"
	metaMACField     = "m"
)

// WriteKey signs and verifies Tether's write metadata.
type WriteKey struct{ secret []byte }

func (k *WriteKey) mac(nonce, at string) string {
	h := hmac.New(sha256.New, k.secret)
	h.Write([]byte(metaVersion + "|" + nonce + "|" + at))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:16])
}

// metadata returns fresh metadata for one write made at now.
func (k *WriteKey) metadata(now time.Time) (*structpb.Struct, error) {
	var raw [12]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("error drawing a write nonce: %w", err)
	}
	nonce := base64.RawURLEncoding.EncodeToString(raw[:])
	at := strconv.FormatInt(now.UnixMilli(), 10)
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		metaVersionField: structpb.NewStringValue(metaVersion),
		metaNonceField:   structpb.NewStringValue(nonce),
		metaTimeField:    structpb.NewStringValue(at),
		metaMACField:     structpb.NewStringValue(k.mac(nonce, at)),
	}}, nil
}

// SignedWrite is what verified metadata says.
type SignedWrite struct {
	Nonce string
	At    time.Time
}

// Verify reports whether meta is metadata this key signed (any nonce, any
// time: the watcher checks freshness and reuse).
func (k *WriteKey) Verify(meta *structpb.Struct) (SignedWrite, bool) {
	f := meta.GetFields()
	if f[metaVersionField].GetStringValue() != metaVersion {
		return SignedWrite{}, false
	}
	nonce, at, mac := f[metaNonceField].GetStringValue(), f[metaTimeField].GetStringValue(), f[metaMACField].GetStringValue()
	ms, err := strconv.ParseInt(at, 10, 64)
	if nonce == "" || err != nil || !hmac.Equal([]byte(mac), []byte(k.mac(nonce, at))) {
		return SignedWrite{}, false
	}
	return SignedWrite{Nonce: nonce, At: time.UnixMilli(ms)}, true
}

// writeKeySource loads the write key once and keeps it.
type writeKeySource struct {
	mu   sync.Mutex
	load func(context.Context) ([]byte, error)
	key  *WriteKey
}

var errNoWriteKey = errors.New("no SpiceDB write key: SignWritesWith was not called")

// SignWritesWith makes the client sign its writes with the secret load
// returns (called on first use, so a database that is down at start only
// delays it). A later call keeps the first loader.
func (s *Client) SignWritesWith(load func(context.Context) ([]byte, error)) {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	if s.keys.load == nil {
		s.keys.load = load
	}
}

// WriteKey returns the key writes are signed with.
func (s *Client) WriteKey(ctx context.Context) (*WriteKey, error) {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	if s.keys.key != nil {
		return s.keys.key, nil
	}
	if s.keys.load == nil {
		return nil, errNoWriteKey
	}
	secret, err := s.keys.load(ctx)
	if err != nil {
		return nil, fmt.Errorf("error reading the SpiceDB write key: %w", err)
	}
	if len(secret) < 16 {
		return nil, errors.New("the SpiceDB write key is too short")
	}
	s.keys.key = &WriteKey{secret: secret}
	return s.keys.key, nil
}

// writeMetadata is the metadata of one write call: signed when the client
// has a key source, none otherwise (a bare client in a tool or test; its
// writes look foreign to the watcher, which is safe).
func (s *Client) writeMetadata(ctx context.Context) (*structpb.Struct, error) {
	s.keys.mu.Lock()
	signs := s.keys.load != nil || s.keys.key != nil
	s.keys.mu.Unlock()
	if !signs {
		return nil, nil
	}
	key, err := s.WriteKey(ctx)
	if err != nil {
		return nil, err
	}
	return key.metadata(time.Now())
}
