package envelope

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// ResponseQueue is where progress and results for queue go (spec §5).
func ResponseQueue(queue string) string { return queue + "_response" }

// ResponseRoutingKey is the StudioML.topic routing key for a queue (§5b).
func ResponseRoutingKey(queue string) string {
	q := ResponseQueue(queue)
	if strings.HasPrefix(q, "StudioML.") {
		return q
	}
	return "StudioML." + q
}

// Report mirrors dev.studio_go_runner.reports.Report as protojson writes it
// (lowerCamelCase names, RFC 3339 timestamps, one of the payload fields set).
type Report struct {
	Time         time.Time `json:"time"`
	ExperimentID string    `json:"experimentId,omitempty"`
	UniqueID     string    `json:"uniqueId,omitempty"`
	ExecutorID   string    `json:"executorId,omitempty"`
	Text         *string   `json:"text,omitempty"`
	Logging      *LogEntry `json:"logging,omitempty"`
	Progress     *Progress `json:"progress,omitempty"`
}

// LogEntry is a log line forwarded to the experimenter.
type LogEntry struct {
	Time     time.Time         `json:"time"`
	Severity string            `json:"severity,omitempty"`
	Message  string            `json:"message,omitempty"`
	Fields   map[string]string `json:"fields,omitempty"`
}

// Progress reports a state change of the experiment.
type Progress struct {
	Time  time.Time      `json:"time"`
	JSON  string         `json:"json,omitempty"`
	State string         `json:"state,omitempty"`
	Error *ProgressError `json:"error,omitempty"`
}

// ProgressError says why an experiment failed.
type ProgressError struct {
	Msg  string `json:"msg,omitempty"`
	Code int32  `json:"code,omitempty"`
}

// SealResponse seals a report for queue's response queue with the RSA key
// whose prefix best matches "<queue>_response".
func SealResponse(keys *ResponseKeys, queue string, r *Report) (string, error) {
	rq := ResponseQueue(queue)
	_, pub, ok := keys.Lookup(rq)
	if !ok {
		return "", fmt.Errorf("%w: nothing is bound to a prefix of %q", ErrNoResponseKey, rq)
	}
	n := 0
	for _, set := range []bool{r.Text != nil, r.Logging != nil, r.Progress != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return "", fmt.Errorf("a report carries exactly one of text, logging or progress, got %d", n)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	return SealPayload(pub, b)
}
