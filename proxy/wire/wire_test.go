package wire

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"strings"
	"testing"
)

// What WriteEvent writes, ReadEvents reads back, pings and all.
func TestEventsRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	want := Event{Type: "put", Path: Root + "a/b", Revision: 7}
	WriteEvent(&buf, EventReady, struct{}{})
	io.WriteString(&buf, Ping)
	WriteEvent(&buf, EventChange, want)
	WriteEvent(&buf, EventError, ErrorBody{Error: "watch ended"})
	var names []string
	var got Event
	var eb ErrorBody
	err := ReadEvents(&buf, func(name string, data []byte) bool {
		names = append(names, name)
		switch name {
		case EventChange:
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatal(err)
			}
		case EventError:
			json.Unmarshal(data, &eb)
			return false
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "ready,change,error" || got != want || eb.Error != "watch ended" {
		t.Errorf("read %v %+v %+v", names, got, eb)
	}
	if got.Name() != "a/b" {
		t.Errorf("Name() = %q", got.Name())
	}
	if !reflect.DeepEqual(buf.Len(), 0) {
		t.Errorf("%d bytes unread", buf.Len())
	}
}
