package main

import (
	"fmt"
	"io"
	"time"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
)

func runToken(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token", stderr)
	sub := fs.String("sub", "", "user id (the JWT sub)")
	admin := fs.Bool("admin", false, "include the admin role")
	ttl := fs.Duration("ttl", 12*time.Hour, "lifetime")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sub == "" {
		return &exitError{code: 2, err: fmt.Errorf("token: --sub is required")}
	}
	secret := getenv("TETHER_AUTH_HMAC_SECRET")
	if len(secret) < 32 {
		return &config.Error{Variable: "TETHER_AUTH_HMAC_SECRET", Problem: "required (at least 32 characters) to sign tokens"}
	}
	role := getenv("TETHER_AUTH_ADMIN_ROLE")
	if role == "" {
		role = "tether-admin"
	}
	var roles []string
	if *admin {
		roles = []string{role}
	}
	tok, err := app.SignDevToken([]byte(secret), *sub, roles, *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
