package migrate

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"
)

// Results an item can end with.
const (
	ResultCreated     = "created"
	ResultUpdated     = "updated"
	ResultUnchanged   = "unchanged"
	ResultSkipped     = "skipped"
	ResultInvalid     = "invalid"
	ResultConflict    = "conflict"
	ResultFailed      = "failed"
	ResultNotRun      = "not-run"      // the run stopped before this item
	ResultWouldCreate = "would-create" // dry run
	ResultWouldUpdate = "would-update" // dry run
)

// ItemResult is one item's outcome. It names the item; it never holds its value.
type ItemResult struct {
	Kind    string `json:"kind"`
	Key     string `json:"key"`
	Origin  string `json:"origin,omitempty"`
	Planned Action `json:"planned"`
	Result  string `json:"result"`
	Reason  string `json:"reason,omitempty"`
	// Failed marks results that make the run exit non-zero.
	Failed        bool `json:"failed,omitempty"`
	Verified      bool `json:"verified,omitempty"`
	SourceDeleted bool `json:"source_deleted,omitempty"`
	// PreviousRun is what an interrupted earlier run recorded for the item
	// (e.g. "created"), when this run resumed from its checkpoint.
	PreviousRun string `json:"previous_run,omitempty"`
}

// Report is the outcome of a migration, for people and for --report.
type Report struct {
	From     string         `json:"from"`
	To       string         `json:"to"`
	RunID    string         `json:"run_id,omitempty"`
	DryRun   bool           `json:"dry_run"`
	Resumed  bool           `json:"resumed"`
	Started  time.Time      `json:"started"`
	Finished time.Time      `json:"finished"`
	Total    int            `json:"total"`
	Counts   map[string]int `json:"counts"`
	Failed   int            `json:"failed"`
	Items    []ItemResult   `json:"items"`
}

// Failures lists the items that failed.
func (r *Report) Failures() []ItemResult {
	var out []ItemResult
	for _, it := range r.Items {
		if it.Failed {
			out = append(out, it)
		}
	}
	return out
}

// Summary is a one-line count of results, e.g. "3 created, 1 unchanged".
func (r *Report) Summary() string {
	keys := make([]string, 0, len(r.Counts))
	for k := range r.Counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%d %s", r.Counts[k], k)
	}
	if s == "" {
		s = "nothing to migrate"
	}
	return s
}

func (r *Report) tally() {
	r.Counts = map[string]int{}
	r.Failed = 0
	for _, it := range r.Items {
		r.Counts[it.Result]++
		if it.Failed {
			r.Failed++
		}
	}
	r.Total = len(r.Items)
}

// WriteFile writes the report as indented JSON, mode 0600 (names of secrets
// can be sensitive too).
func (r *Report) WriteFile(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
