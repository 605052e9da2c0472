// Package app is Tether's API, in layers one file prefix each:
//
//   - http*.go and ui*.go: routes, handlers (bind, call, render), the one
//     table that maps error codes to HTTP statuses, and the user page;
//   - api*.go: the types the API shows and accepts, and their validation;
//   - service*.go: the service, one exported method per operation, each one
//     transaction that also inserts the River jobs of its change;
//   - auth.go and oauth*.go: who is calling, and the OAuth2 flow.
//
// SQL lives in db/queries (sqlc generates db/dbsqlc); configuration in
// internal/config; the wiring of a process in internal/engine.
package app
