package envelope

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"testing"
)

// The table is the one place a sentinel is described: every sentinel in
// errors.go has exactly one row, labels are distinct, and the helpers read
// the row through any wrapping.
func TestRejectionTable(t *testing.T) {
	src, err := os.ReadFile("errors.go")
	if err != nil {
		t.Fatal(err)
	}
	declared := regexp.MustCompile(`(?m)^\s+(Err\w+)\s*=\s*errors\.New`).FindAllSubmatch(src, -1)
	if len(declared) != len(Rejections) {
		t.Errorf("errors.go declares %d sentinels, Rejections has %d rows", len(declared), len(Rejections))
	}
	labels := map[string]bool{}
	for _, r := range Rejections {
		if r.Label == "" || r.Label == "other" || labels[r.Label] {
			t.Errorf("%v: label %q is empty, reserved or repeated", r.Err, r.Label)
		}
		labels[r.Label] = true
		if r.KeyDependent && !r.Permanent {
			t.Errorf("%v: key-dependent but not permanent", r.Err)
		}
		wrapped := fmt.Errorf("opening: %w", reject(r.Err, "detail"))
		if Reason(wrapped) != r.Label || Permanent(wrapped) != r.Permanent || KeyDependent(wrapped) != r.KeyDependent {
			t.Errorf("%v: helpers disagree with its row: %q %v %v", r.Err, Reason(wrapped), Permanent(wrapped), KeyDependent(wrapped))
		}
	}
	other := errors.New("replay store down")
	if Reason(other) != "other" || Permanent(other) || KeyDependent(other) {
		t.Errorf("an unknown error is %q permanent=%v key-dependent=%v", Reason(other), Permanent(other), KeyDependent(other))
	}
}
