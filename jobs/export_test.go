package jobs

import (
	"context"

	"github.com/tetherhq/tether/jobs/spicedb"
)

// SetReconcileExport replaces how r reads SpiceDB's relationships: tests
// inject faults into the stream's order.
func SetReconcileExport(r *Reconciler, export func(ctx context.Context, fn func(page []spicedb.Relationship) error) error) {
	r.export = export
}
