package main

import (
	"context"
	"fmt"
	"io"

	"github.com/tetherhq/tether/internal/config"
)

// runKeys re-encrypts secrets at rest under the first key of
// TETHER_ENCRYPTION_KEYS (rotation: put the new key first, run this, then
// drop the old key).
func runKeys(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) != 1 || args[0] != "rotate" {
		return &exitError{code: 2, err: fmt.Errorf("usage: tether keys rotate")}
	}
	if getenv("TETHER_ENCRYPTION_KEYS") == "" {
		return &config.Error{Variable: "TETHER_ENCRYPTION_KEYS", Problem: "required to re-encrypt secrets"}
	}
	d, err := open(ctx, getenv, config.ScopeDatabase, true)
	if err != nil {
		return err
	}
	defer d.close()
	cfg := d.cfg
	r, err := d.engine.Service.RotateKeys(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "checked %d secrets, re-encrypted %d under key %q", r.Checked, r.ReEncrypted, cfg.EncryptionKeys.PrimaryKeyID())
	if r.Undecryptable > 0 {
		fmt.Fprintf(stdout, "; %d decrypt with no configured key (left alone)\n", r.Undecryptable)
		return &exitError{code: 1, err: fmt.Errorf("%d secrets decrypt with no configured key", r.Undecryptable)}
	}
	fmt.Fprintln(stdout)
	return nil
}
