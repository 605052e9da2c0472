package spicedb

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"
)

func newKey(t *testing.T, secret []byte) *WriteKey {
	t.Helper()
	c, err := New(Config{Endpoint: "127.0.0.1:1", Insecure: true}) // never dialled: no call is made
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	c.SignWritesWith(func(context.Context) ([]byte, error) { return secret, nil })
	key, err := c.WriteKey(context.Background())
	require.NoError(t, err)
	return key
}

// Metadata verifies under the key that signed it, with its nonce and time;
// under another key, or with any field changed, it does not.
func TestWriteKeySignsAndVerifies(t *testing.T) {
	t.Parallel()
	key := newKey(t, bytes.Repeat([]byte{1}, 32))
	other := newKey(t, bytes.Repeat([]byte{2}, 32))
	now := time.UnixMilli(time.Now().UnixMilli())
	meta, err := key.metadata(now)
	require.NoError(t, err)

	w, ok := key.Verify(meta)
	require.True(t, ok)
	require.Equal(t, now, w.At)
	require.NotEmpty(t, w.Nonce)
	_, ok = other.Verify(meta)
	require.False(t, ok, "another deployment's key")

	again, err := key.metadata(now)
	require.NoError(t, err)
	w2, _ := key.Verify(again)
	require.NotEqual(t, w.Nonce, w2.Nonce, "every write has its own nonce")

	for _, field := range []string{metaNonceField, metaTimeField, metaMACField, metaVersionField} {
		tampered := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for k, v := range meta.GetFields() {
			tampered.Fields[k] = v
		}
		tampered.Fields[field] = structpb.NewStringValue("1" + meta.GetFields()[field].GetStringValue())
		_, ok := key.Verify(tampered)
		require.False(t, ok, "field %s changed", field)
	}
	_, ok = key.Verify(nil)
	require.False(t, ok, "no metadata")
}

// A client without a key source writes unsigned; a short secret is refused.
func TestWriteKeySource(t *testing.T) {
	t.Parallel()
	c, err := New(Config{Endpoint: "127.0.0.1:1", Insecure: true})
	require.NoError(t, err)
	defer c.Close()
	meta, err := c.writeMetadata(context.Background())
	require.NoError(t, err)
	require.Nil(t, meta)
	_, err = c.WriteKey(context.Background())
	require.Error(t, err)

	c.SignWritesWith(func(context.Context) ([]byte, error) { return []byte("short"), nil })
	_, err = c.writeMetadata(context.Background())
	require.ErrorContains(t, err, "too short")
}
