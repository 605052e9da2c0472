package jobs_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs/spicedb"
)

var spiceDBObjectID = regexp.MustCompile(`^[a-zA-Z0-9/_|\-=+]+$`)

func checkSubjectID(t *testing.T, userID string) {
	subject := spicedb.SubjectID(userID)
	require.Regexp(t, spiceDBObjectID, subject)
	require.LessOrEqual(t, len(subject), 1024)
	require.NotEqual(t, "*", subject)
	back, err := spicedb.UserIDFromSubjectID(subject)
	require.NoError(t, err)
	require.Equal(t, userID, back)
}

func TestSubjectID(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"alice", "f47ac10b-58cc-4372-a567-0e02b2c3d479", "alice@example.org", "*", "a/b", "/x",
		"user:1", "with space", "日本語", "a.b", "=+|-_", strings.Repeat("é", spicedb.MaxUserIDLen/2)} {
		checkSubjectID(t, id)
	}
	require.Equal(t, "alice", spicedb.SubjectID("alice"))
	require.Equal(t, "/YWxpY2VAZXhhbXBsZS5vcmc", spicedb.SubjectID("alice@example.org"))
	_, err := spicedb.UserIDFromSubjectID("/YWxpY2U") // "alice", which is never encoded
	require.Error(t, err)
	_, err = spicedb.UserIDFromSubjectID("a.b")
	require.Error(t, err)
}

// The SQL twin of SubjectID (used by the reconciler) must agree with Go.
func TestSubjectIDMatchesSQL(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t)
	ids := []string{"alice", "alice@example.org", "*", "a/b", "日本語", "tab\there", "x", "=+|-_", "ünïcödé", "a\u202eb",
		"very-long-" + strings.Repeat("z", 600), "𝕏 emoji 🎉", "quote'\"", "back\\slash"}
	for _, id := range ids {
		if !utf8.ValidString(id) || containsNUL(id) {
			continue
		}
		var sqlSubject string
		require.NoError(t, pool.QueryRow(context.Background(), "SELECT tether_subject_id($1)", id).Scan(&sqlSubject))
		require.Equal(t, spicedb.SubjectID(id), sqlSubject, "for %q", id)
	}
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

func FuzzSubjectID(f *testing.F) {
	for _, seed := range []string{"alice", "alice@example.org", "*", "/", "a/b", "日本語", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, userID string) {
		if userID == "" || len(userID) > spicedb.MaxUserIDLen {
			return
		}
		checkSubjectID(t, userID)
	})
}
