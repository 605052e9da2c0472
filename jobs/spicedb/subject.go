package spicedb

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// maxPlainSubjectLen is SpiceDB's object id limit.
const maxPlainSubjectLen = 1024

// MaxUserIDLen bounds user ids (JWT subs, manual viewers) so that their encoded
// form always fits SpiceDB's 1024-byte object id limit.
const MaxUserIDLen = 512

// SubjectID maps a user id (a JWT sub) to a SpiceDB object id. Ids made only
// of [A-Za-z0-9_|=+-] are used unchanged; anything else becomes '/' followed by
// the unpadded base64url encoding of its bytes. A plain id never contains '/',
// so the mapping is reversible (see UserIDFromSubjectID), and a sub such as
// "*" can never become SpiceDB's wildcard. The SQL function tether_subject_id
// does the same; a test keeps the two in step.
func SubjectID(userID string) string {
	if isPlainSubject(userID) {
		return userID
	}
	return "/" + base64.RawURLEncoding.EncodeToString([]byte(userID))
}

// UserIDFromSubjectID reverses SubjectID.
func UserIDFromSubjectID(subjectID string) (string, error) {
	encoded, ok := strings.CutPrefix(subjectID, "/")
	if !ok {
		if !isPlainSubject(subjectID) {
			return "", fmt.Errorf("subject id %q is not an encoded user id", subjectID)
		}
		return subjectID, nil
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(encoded)
	if err != nil {
		return "", fmt.Errorf("error decoding subject id: %w", err)
	}
	userID := string(raw)
	if isPlainSubject(userID) {
		// SubjectID would not have encoded it: not a canonical encoding.
		return "", errors.New("subject id is not in canonical form")
	}
	return userID, nil
}

func isPlainSubject(s string) bool {
	if s == "" || len(s) > maxPlainSubjectLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '_' || c == '|' || c == '=' || c == '+' || c == '-':
		default:
			return false
		}
	}
	return true
}
