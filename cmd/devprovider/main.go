// Command devprovider runs a local OAuth2/OIDC provider for `make run` only:
// the zitadel/oidc example OP (package internal/devtools/oauthtest) with one
// confidential client and two test users, all in memory, so that Tether's
// "connect an account" flow can be tried without a real provider. It is not
// a provider to deploy: its users, passwords and signing key are throwaway
// and everything is lost when it stops.
//
// Settings, from the environment:
//
//	TETHER_DEVPROVIDER_ADDR           listen address (default localhost:5556)
//	TETHER_DEVPROVIDER_CLIENT_SECRET  client secret of client "tether-dev" (default tether-dev-secret)
//	TETHER_DEVPROVIDER_REDIRECT_URI   the client's one redirect URI
//	                                  (default http://127.0.0.1:8080/api/data/oauth2/callback)
//
// The issuer is http://localhost:<port>/ (OIDC discovery at
// /.well-known/openid-configuration). It stops on SIGINT or SIGTERM.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tetherhq/tether/internal/devtools/oauthtest"
)

const clientID = "tether-dev"

func main() {
	os.Exit(run())
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	p, err := oauthtest.Start(ctx, oauthtest.Options{
		Addr:         env("TETHER_DEVPROVIDER_ADDR", "localhost:5556"),
		ClientID:     clientID,
		ClientSecret: env("TETHER_DEVPROVIDER_CLIENT_SECRET", "tether-dev-secret"),
		RedirectURIs: []string{env("TETHER_DEVPROVIDER_REDIRECT_URI", "http://127.0.0.1:8080/api/data/oauth2/callback")},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "devprovider:", err)
		return 1
	}
	defer p.Close()

	fmt.Printf("Dev OAuth2/OIDC provider (for `make run` only)\n")
	fmt.Printf("  issuer:        %s\n", p.Issuer)
	fmt.Printf("  discovery:     %s\n", p.DiscoveryURL)
	fmt.Printf("  authorize:     %s\n", p.AuthURL)
	fmt.Printf("  token:         %s\n", p.TokenURL)
	fmt.Printf("  revocation:    %s\n", p.RevocationURL)
	fmt.Printf("  client id:     %s\n", p.ClientID)
	fmt.Printf("  client secret: %s\n", p.ClientSecret)
	fmt.Printf("  redirect URI:  %s\n", p.RedirectURIs[0])
	fmt.Printf("  scopes:        openid profile offline_access (refresh tokens need offline_access, the account name profile; PKCE S256)\n")
	fmt.Printf("Test users (username / password):\n")
	for _, u := range p.Users {
		fmt.Printf("  %s / %s\n", u.Username, u.Password)
	}
	fmt.Printf("Ctrl-C to stop.\n")

	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "devprovider: stopping")
	return 0
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
