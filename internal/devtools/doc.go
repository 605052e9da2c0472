// Package devtools holds what develops and tests Tether and never runs in
// production: devstack (the local Postgres and SpiceDB of `make run`,
// `make test` and the bench), testenv (per-test databases, stores and
// engines), oauthtest (a real OAuth2/OIDC provider in-process) and
// faultproxy (a TCP proxy that injects network faults). Production code
// under internal/ (config, engine, keyring, oauthclient) never imports it.
package devtools
