// Package e2e holds end-to-end fault tests: a whole Tether (HTTP API,
// service, River workers, reconciler) on real Postgres and a real SpiceDB
// binary, with no mocks, under traffic while a fault strikes — Postgres
// restarted (fast and immediate shutdown), an in-memory SpiceDB restarted
// (wiped), the network to SpiceDB slowed past the job timeout and reset, a
// worker process killed with many jobs in flight. After each fault every
// acknowledged change must be present in Postgres, the engine must recover
// without a restart, and, once drained, a reconcile dry run must find no
// drift.
//
// The package holds tests only; run it with the rest: make test, or
// bin/devstack --test -- go test -race ./e2e/.
package e2e
