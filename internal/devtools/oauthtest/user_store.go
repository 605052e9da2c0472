package oauthtest

import (
	"fmt"

	"github.com/zitadel/oidc/v3/example/server/storage"
	"golang.org/x/text/language"
)

// exampleUsers are the accounts of the example's own user store
// (storage.NewUserStore), listed so that Provider.Users describes them.
var exampleUsers = []User{
	{Subject: "id1", Username: "test-user@localhost", Password: "verysecure", Email: "test-user@zitadel.ch"},
	{Subject: "id2", Username: "test-user2", Password: "verysecure", Email: "test-user2@zitadel.ch"},
}

// userStoreFor returns the OP's user store and the users it holds: the example's
// own store when Options.Users is empty, else a store of exactly those.
func userStoreFor(issuer string, listed []User) (storage.UserStore, []User, error) {
	if len(listed) == 0 {
		return storage.NewUserStore(issuer), append([]User(nil), exampleUsers...), nil
	}
	s, err := newUserStore(listed)
	if err != nil {
		return nil, nil, err
	}
	return s, listed, nil
}

// userStore is a storage.UserStore of Options.Users.
type userStore struct {
	byID       map[string]*storage.User
	byUsername map[string]*storage.User
}

func newUserStore(users []User) (userStore, error) {
	s := userStore{byID: map[string]*storage.User{}, byUsername: map[string]*storage.User{}}
	for i, u := range users {
		if u.Subject == "" || u.Username == "" {
			return s, fmt.Errorf("oauthtest: user %d needs a Subject and a Username", i)
		}
		if s.byID[u.Subject] != nil || s.byUsername[u.Username] != nil {
			return s, fmt.Errorf("oauthtest: duplicate user %q/%q", u.Subject, u.Username)
		}
		su := &storage.User{
			ID:                u.Subject,
			Username:          u.Username,
			Password:          u.Password,
			Email:             u.Email,
			EmailVerified:     u.Email != "",
			PreferredLanguage: language.English,
		}
		s.byID[u.Subject], s.byUsername[u.Username] = su, su
	}
	return s, nil
}

func (s userStore) GetUserByID(id string) *storage.User { return s.byID[id] }

func (s userStore) GetUserByUsername(username string) *storage.User { return s.byUsername[username] }

// ExampleClientID names the example's JWT-profile service user.
func (s userStore) ExampleClientID() string { return storage.ServiceUserID }
