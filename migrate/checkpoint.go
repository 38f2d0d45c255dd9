package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// KindCheckpoint is the registered kind of Checkpoint.
const KindCheckpoint = "migrate-checkpoint"

// Checkpoint records the progress of one migration run (one source into one
// destination) in the state store, so a run that crashed can be resumed and
// its report still accounts for what the crashed run wrote.
//
// It is a plain registered model, not a Raw under a reserved name: it holds
// names only (never values or value hashes, which would let anyone reading
// the state store test guesses of a low-entropy passphrase), so it belongs in
// the state backend, and a Raw would route it to the secret backend and into
// the namespace that is being migrated.
type Checkpoint struct {
	RunID   string    `json:"run_id"`
	From    string    `json:"from"`
	To      string    `json:"to"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	// Done maps item ids (kind/key) to their result (created, updated,
	// unchanged) once written and verified.
	Done map[string]string `json:"done"`
	// Truncated says Done stopped growing at maxCheckpointItems. Resuming
	// is still correct (a rerun re-plans and finds finished items
	// unchanged); only the report's attribution to the earlier run is
	// partial.
	Truncated bool `json:"truncated,omitempty"`
}

// maxCheckpointItems keeps a checkpoint well under etcd's 1.5 MiB request
// limit (ids are kind/key, typically under 64 bytes).
const maxCheckpointItems = 15000

// Kind implements secrets.Model.
func (*Checkpoint) Kind() string { return KindCheckpoint }

// Key implements secrets.Model.
func (c *Checkpoint) Key() string { return c.RunID }

// LogValue prints the run id only.
func (c *Checkpoint) LogValue() slog.Value { return slog.StringValue("checkpoint " + c.RunID) }

// Register adds Checkpoint to r, which the destination store must route by.
func Register(r *secrets.Registry) {
	r.Register(KindCheckpoint, func(k string) secrets.Model { return &Checkpoint{RunID: k} })
}

// RunID names the run moving from into to: the same pair resumes the same
// checkpoint.
func RunID(from, to string) string {
	sum := sha256.Sum256([]byte(from + "\x00" + to))
	return hex.EncodeToString(sum[:12])
}

// checkpointer saves a Checkpoint with compare-and-set, so two migrations
// of the same pair running at once notice each other instead of
// interleaving.
type checkpointer struct {
	store Store
	mu    sync.Mutex
	cp    Checkpoint
	rev   int64
	dirty int
	every int
}

// loadCheckpoint returns the stored checkpoint of runID, or a fresh one.
func loadCheckpoint(ctx context.Context, st Store, runID, from, to string, every int) (*checkpointer, bool, error) {
	c := &checkpointer{store: st, every: max(every, 1)}
	c.cp = Checkpoint{RunID: runID}
	rev, err := st.Get(ctx, &c.cp)
	switch storage.Code(err) {
	case driver.OK:
		c.rev = rev
		if c.cp.Done == nil {
			c.cp.Done = map[string]string{}
		}
		return c, true, nil
	case driver.NotFound:
		c.cp = Checkpoint{RunID: runID, From: from, To: to, Started: time.Now().UTC(), Done: map[string]string{}}
		return c, false, nil
	}
	return nil, false, fmt.Errorf("read migration checkpoint %s (is the destination's registry missing migrate.Register?): %w", runID, err)
}

// previous returns what an earlier run recorded for id.
func (c *checkpointer) previous(id string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cp.Done[id]
}

// done records ids with their results and saves once c.every records are
// unsaved. A batch is recorded in one call, so a save never splits it.
func (c *checkpointer) done(ctx context.Context, ids, results []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, id := range ids {
		result := results[i]
		if _, ok := c.cp.Done[id]; ok {
			if result != string(Unchanged) {
				c.cp.Done[id] = result
			}
		} else if len(c.cp.Done) < maxCheckpointItems {
			c.cp.Done[id] = result
		} else {
			c.cp.Truncated = true
		}
	}
	c.dirty += len(ids)
	if c.dirty < c.every {
		return nil
	}
	return c.saveLocked(ctx)
}

// flush saves unsaved progress.
func (c *checkpointer) flush(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dirty == 0 {
		return nil
	}
	return c.saveLocked(ctx)
}

func (c *checkpointer) saveLocked(ctx context.Context) error {
	c.cp.Updated = time.Now().UTC()
	opts := driver.PutOptions{IfRevision: c.rev, IfAbsent: c.rev == 0}
	rev, err := c.store.Put(ctx, &c.cp, opts)
	if storage.Code(err) == driver.Conflict {
		return fmt.Errorf("migration checkpoint %s changed under us: is another migrate of the same source and destination running?", c.cp.RunID)
	}
	if err != nil {
		return fmt.Errorf("save migration checkpoint %s: %w", c.cp.RunID, err)
	}
	c.rev, c.dirty = rev, 0
	return nil
}

// remove deletes the checkpoint once a run has completed.
func (c *checkpointer) remove(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rev == 0 {
		return nil
	}
	err := c.store.Delete(ctx, KindCheckpoint, c.cp.RunID, driver.DeleteOptions{IfRevision: c.rev})
	if err != nil && storage.Code(err) != driver.NotFound {
		return fmt.Errorf("remove migration checkpoint %s: %w", c.cp.RunID, err)
	}
	c.rev = 0
	return nil
}
