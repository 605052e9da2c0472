// Package keyring encrypts secrets at rest (client secrets, OAuth2 tokens) with
// AES-256-GCM under a rotatable ring of keys.
package keyring

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Ring encrypts secrets at rest (client secrets, OAuth2 tokens) with
// AES-256-GCM. The first key encrypts; every key decrypts, so keys can be
// rotated by putting a new one first and re-encrypting.
//
// Ciphertext layout: len(keyID) (1 byte) | keyID | nonce (12) | sealed data.
// The caller's associated data (the row's identity) binds a ciphertext to its
// row: one copied into another row does not decrypt.
type Ring struct {
	primary string
	aeads   map[string]cipher.AEAD
}

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// Parse parses "id:base64(32 bytes),id2:…". Key material never
// appears in errors.
func Parse(s string) (*Ring, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("required: comma-separated id:base64(32 random bytes), e.g. k1:$(openssl rand -base64 32)")
	}
	ring := &Ring{aeads: map[string]cipher.AEAD{}}
	for i, part := range strings.Split(s, ",") {
		id, material, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok || !keyIDPattern.MatchString(id) {
			return nil, fmt.Errorf("entry %d: want id:base64key with an id of letters, digits, - or _", i+1)
		}
		if _, dup := ring.aeads[id]; dup {
			return nil, fmt.Errorf("entry %d: key id %q appears twice", i+1, id)
		}
		key, err := base64.StdEncoding.DecodeString(material)
		if err != nil {
			key, err = base64.RawURLEncoding.DecodeString(material)
		}
		if err != nil || len(key) != 32 {
			return nil, fmt.Errorf("entry %d (key %q): the key must be 32 bytes in base64", i+1, id)
		}
		block, _ := aes.NewCipher(key)
		aead, _ := cipher.NewGCM(block)
		ring.aeads[id] = aead
		if i == 0 {
			ring.primary = id
		}
	}
	return ring, nil
}

// ErrNoKey is returned by a ring with no keys (commands run without
// TETHER_ENCRYPTION_KEYS, which never touch secrets).
var ErrNoKey = errors.New("no encryption key configured (TETHER_ENCRYPTION_KEYS)")

// Empty is a ring with no keys: it encrypts and decrypts nothing.
func Empty() *Ring { return &Ring{aeads: map[string]cipher.AEAD{}} }

// PrimaryKeyID is the id of the key that encrypts.
func (r *Ring) PrimaryKeyID() string { return r.primary }

// Encrypt seals plaintext with the primary key.
func (r *Ring) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	aead, ok := r.aeads[r.primary]
	if !ok {
		return nil, ErrNoKey
	}
	out := make([]byte, 0, 1+len(r.primary)+aead.NonceSize()+len(plaintext)+aead.Overhead())
	out = append(out, byte(len(r.primary)))
	out = append(out, r.primary...)
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("error reading random nonce: %w", err)
	}
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plaintext, associatedData), nil
}

// ErrDecrypt is returned for any ciphertext that does not open.
var ErrDecrypt = errors.New("secret does not decrypt with the configured keys")

// Decrypt opens a ciphertext made by Encrypt with any key of the ring. It
// also reports whether the ciphertext used a key other than the primary one
// (so the caller can re-encrypt it).
func (r *Ring) Decrypt(ciphertext, associatedData []byte) (plaintext []byte, stale bool, err error) {
	if len(ciphertext) < 1 {
		return nil, false, ErrDecrypt
	}
	n := int(ciphertext[0])
	if len(ciphertext) < 1+n {
		return nil, false, ErrDecrypt
	}
	id := string(ciphertext[1 : 1+n])
	aead, ok := r.aeads[id]
	if !ok {
		return nil, false, fmt.Errorf("%w: unknown key id %q", ErrDecrypt, id)
	}
	rest := ciphertext[1+n:]
	if len(rest) < aead.NonceSize()+aead.Overhead() {
		return nil, false, ErrDecrypt
	}
	plaintext, err = aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], associatedData)
	if err != nil {
		return nil, false, ErrDecrypt
	}
	return plaintext, id != r.primary, nil
}

// Binding is the one scheme that binds a ciphertext to the row (and column)
// holding it, as associated data: "table/id[/column]". A ciphertext copied
// into another row, or another column, does not decrypt. The formats are
// stored with every secret at rest: never change them.
func Binding(table, id, column string) []byte {
	if column == "" {
		return []byte(table + "/" + id)
	}
	return []byte(table + "/" + id + "/" + column)
}

// ClientSecretAAD binds a provider's encrypted client secret to the provider.
func ClientSecretAAD(providerID string) []byte {
	return Binding("oauth2_provider", providerID, "client_secret")
}

// TokenAAD binds a connection's encrypted tokens to the connection.
func TokenAAD(connectionID string) []byte {
	return Binding("oauth2_connection", connectionID, "token")
}

// StateAAD binds an authorization state's PKCE verifier to the state (by
// the hash under which the state is stored).
func StateAAD(stateHash []byte) []byte {
	return Binding("oauth2_state", base64.RawURLEncoding.EncodeToString(stateHash), "code_verifier")
}

// RevocationAAD binds a token awaiting revocation to its revocation row.
func RevocationAAD(revocationID string) []byte {
	return Binding("oauth2_token_revocation", revocationID, "")
}
