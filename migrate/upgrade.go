package migrate

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/custodia"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/overlay"
)

// UpgradeCustodia rewrites the Custodia API's values and containers still in
// sealrun's older form (JSON models raw/<name> and custodia-container/<path>
// among the typed models under secretUnder) into Custodia's own records in
// ns, and removes the older copies. Where a record of the name already
// exists in ns it wins (it is what readers see) and only the older copy
// goes. Every step is conditional on the revision read, so a concurrent
// write is never lost; rerunning resumes. It returns how many it rewrote.
func UpgradeCustodia(ctx context.Context, secretUnder driver.Driver, ring *overlay.KeyRing, ns *custodia.Namespace) (int, error) {
	// Encrypt protection only to also read unpinned older values: a pin, when
	// present, is still checked, and nothing is written through ov.
	ov := overlay.New(secretUnder, ring, overlay.Encrypt)
	n := 0
	for _, kind := range []string{secrets.KindRaw, secrets.KindContainer} {
		keys, err := secretUnder.List(ctx, kind)
		if err != nil {
			return n, fmt.Errorf("upgrade %s records: list: %w", kind, err)
		}
		for _, k := range keys {
			name := strings.TrimPrefix(k, kind+"/")
			e, err := ov.Get(ctx, k)
			if secretUnder.ErrorCode(err) == driver.NotFound {
				continue
			}
			if err != nil {
				return n, fmt.Errorf("upgrade %s %q: %w", kind, name, err)
			}
			if kind == secrets.KindRaw {
				var m secrets.Raw
				if err := json.Unmarshal(e.Value, &m); err != nil || m.Name != name {
					return n, fmt.Errorf("upgrade raw %q: not a wrapped value: %w", name, driver.ErrIntegrity)
				}
				_, err = ns.PutValue(ctx, name, m.Value, driver.PutOptions{IfAbsent: true})
				clear(m.Value)
			} else {
				_, err = ns.Span(ctx, name)
			}
			if err != nil && ns.ErrorCode(err) != driver.Conflict {
				return n, fmt.Errorf("upgrade %s %q: write: %w", kind, name, err)
			}
			if err := secretUnder.Delete(ctx, k, driver.DeleteOptions{IfRevision: e.Revision}); err != nil && secretUnder.ErrorCode(err) != driver.NotFound {
				return n, fmt.Errorf("upgrade %s %q: remove the older copy: %w", kind, name, err)
			}
			n++
		}
	}
	return n, nil
}
