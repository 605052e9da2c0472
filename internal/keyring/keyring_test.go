package keyring_test

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/internal/keyring"
)

func newKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(b)
}

func TestRoundTripAndBinding(t *testing.T) {
	t.Parallel()
	ring, err := keyring.Parse("k1:" + newKey(t))
	require.NoError(t, err)
	ct, err := ring.Encrypt([]byte("gho_secret"), []byte("row-1"))
	require.NoError(t, err)
	require.NotContains(t, string(ct), "gho_secret")
	plain, stale, err := ring.Decrypt(ct, []byte("row-1"))
	require.NoError(t, err)
	require.False(t, stale)
	require.Equal(t, "gho_secret", string(plain))

	_, _, err = ring.Decrypt(ct, []byte("row-2"))
	require.ErrorIs(t, err, keyring.ErrDecrypt, "a ciphertext moved to another row does not open")
	tampered := append([]byte(nil), ct...)
	tampered[len(tampered)-1] ^= 1
	_, _, err = ring.Decrypt(tampered, []byte("row-1"))
	require.ErrorIs(t, err, keyring.ErrDecrypt)
	for _, bad := range [][]byte{nil, {5}, {2, 'k', '1'}, {200}} {
		_, _, err = ring.Decrypt(bad, []byte("row-1"))
		require.ErrorIs(t, err, keyring.ErrDecrypt)
	}
	again, err := ring.Encrypt([]byte("gho_secret"), []byte("row-1"))
	require.NoError(t, err)
	require.NotEqual(t, ct, again, "a fresh nonce every time")
}

func TestRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKeyMaterial := newKey(t), newKey(t)
	old, err := keyring.Parse("old:" + oldKey)
	require.NoError(t, err)
	ct, err := old.Encrypt([]byte("token"), []byte("aad"))
	require.NoError(t, err)

	both, err := keyring.Parse("new:" + newKeyMaterial + ",old:" + oldKey)
	require.NoError(t, err)
	require.Equal(t, "new", both.PrimaryKeyID())
	plain, stale, err := both.Decrypt(ct, []byte("aad"))
	require.NoError(t, err)
	require.True(t, stale, "made with a key that is no longer primary")
	require.Equal(t, "token", string(plain))

	onlyNew, err := keyring.Parse("new:" + newKeyMaterial)
	require.NoError(t, err)
	_, _, err = onlyNew.Decrypt(ct, []byte("aad"))
	require.ErrorIs(t, err, keyring.ErrDecrypt)
}

func TestParseErrorsNeverShowKeyMaterial(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	short := base64.StdEncoding.EncodeToString([]byte("only-sixteen-byt"))
	for _, bad := range []string{"", "nocolon", "k1:not-base64!!", "k1:" + short, "k1:" + key + ",k1:" + key, "bad id:" + key, ":" + key} {
		_, err := keyring.Parse(bad)
		require.Error(t, err, "%q", bad)
		require.False(t, strings.Contains(err.Error(), key) || strings.Contains(err.Error(), short), "the error shows key material: %v", err)
	}
}
