package runner

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sealrun/sealrun/envelope"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	// The well-known types reports.proto imports, registered globally.
	_ "google.golang.org/protobuf/types/known/anypb"
	_ "google.golang.org/protobuf/types/known/timestamppb"
	_ "google.golang.org/protobuf/types/known/wrapperspb"
)

// studiomlReportsProto is proto/reports.proto of leaf-ai/studio-go-runner
// (commit d357150e6fb6d206c09b377466834ef02c2d02d5), the schema StudioML
// consumers parse response-queue reports with.
//
//go:embed testdata/studioml_reports.proto
var studiomlReportsProto string

// studiomlReportDescriptor is reports.proto as a descriptor, built by hand
// (no protoc here) and checked field by field against the .proto text by
// TestStudioMLDescriptorMatchesProto.
func studiomlReportDescriptor(t testing.TB) protoreflect.MessageDescriptor {
	t.Helper()
	str := proto.String
	i32 := proto.Int32
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	rep := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	msg := descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	enum := descriptorpb.FieldDescriptorProto_TYPE_ENUM.Enum()
	field := func(name string, num int32, typ *descriptorpb.FieldDescriptorProto_Type, typeName string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: str(name), Number: i32(num), Label: opt, Type: typ,
			JsonName: str(jsonName(name))}
		if typeName != "" {
			f.TypeName = str(typeName)
		}
		return f
	}
	oneof := func(f *descriptorpb.FieldDescriptorProto) *descriptorpb.FieldDescriptorProto {
		f.OneofIndex = i32(0)
		return f
	}
	const pkg = ".dev.studio_go_runner.reports."
	ts, sv := ".google.protobuf.Timestamp", ".google.protobuf.StringValue"
	str32 := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	fd := &descriptorpb.FileDescriptorProto{
		Name:       str("proto/reports.proto"),
		Package:    str("dev.studio_go_runner.reports"),
		Syntax:     str("proto3"),
		Dependency: []string{"google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto", "google/protobuf/any.proto"},
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: str("Report"), Field: []*descriptorpb.FieldDescriptorProto{
				field("time", 1, msg, ts), field("experiment_id", 2, msg, sv), field("unique_id", 3, msg, sv),
				field("executor_id", 4, msg, sv),
				oneof(field("proto_any", 10, msg, ".google.protobuf.Any")), oneof(field("text", 11, msg, sv)),
				oneof(field("logging", 12, msg, pkg+"LogEntry")), oneof(field("progress", 13, msg, pkg+"Progress")),
			}, OneofDecl: []*descriptorpb.OneofDescriptorProto{{Name: str("payload")}}},
			{Name: str("LogEntry"), Field: []*descriptorpb.FieldDescriptorProto{
				field("time", 1, msg, ts), field("severity", 2, enum, pkg+"LogSeverity"), field("message", 3, msg, sv),
				{Name: str("fields"), Number: i32(4), Label: rep, Type: msg, TypeName: str(pkg + "LogEntry.FieldsEntry"), JsonName: str("fields")},
			}, NestedType: []*descriptorpb.DescriptorProto{{Name: str("FieldsEntry"),
				Field:   []*descriptorpb.FieldDescriptorProto{field("key", 1, str32, ""), field("value", 2, str32, "")},
				Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)}}}},
			{Name: str("Progress"), Field: []*descriptorpb.FieldDescriptorProto{
				field("time", 1, msg, ts), field("json", 2, msg, sv), field("state", 3, enum, pkg+"TaskState"),
				field("error", 4, msg, pkg+"Progress.Error"),
			}, NestedType: []*descriptorpb.DescriptorProto{{Name: str("Error"), Field: []*descriptorpb.FieldDescriptorProto{
				field("msg", 20, msg, sv), field("code", 21, descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum(), ""),
			}}}},
		},
		EnumType: []*descriptorpb.EnumDescriptorProto{
			enumOf("LogSeverity", "Default", 0, "Trace", 100, "Debug", 200, "Info", 300, "Warning", 400, "Error", 500, "Fatal", 600),
			enumOf("TaskState", "Prestart", 0, "Started", 1, "Stopping", 2, "Failed", 20, "Success", 21),
		},
	}
	f, err := protodesc.NewFile(fd, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatalf("build the StudioML report descriptor: %v", err)
	}
	return f.Messages().ByName("Report")
}

func enumOf(name string, vals ...any) *descriptorpb.EnumDescriptorProto {
	e := &descriptorpb.EnumDescriptorProto{Name: proto.String(name)}
	for i := 0; i < len(vals); i += 2 {
		e.Value = append(e.Value, &descriptorpb.EnumValueDescriptorProto{Name: proto.String(vals[i].(string)),
			Number: proto.Int32(int32(vals[i+1].(int)))})
	}
	return e
}

func jsonName(s string) string {
	parts := strings.Split(s, "_")
	for i := 1; i < len(parts); i++ {
		parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
	}
	return strings.Join(parts, "")
}

// TestStudioMLDescriptorMatchesProto checks every field and enum value of
// the hand-built descriptor against the .proto text, and that the .proto
// declares nothing the descriptor lacks.
func TestStudioMLDescriptorMatchesProto(t *testing.T) {
	md := studiomlReportDescriptor(t)
	src := regexp.MustCompile(`//[^\n]*`).ReplaceAllString(studiomlReportsProto, "")
	norm := regexp.MustCompile(`\s+`).ReplaceAllString(src, " ")
	typeName := func(fd protoreflect.FieldDescriptor) string {
		switch {
		case fd.IsMap():
			return "map<string, string>"
		case fd.Kind() == protoreflect.MessageKind:
			n := string(fd.Message().FullName())
			return strings.TrimPrefix(strings.TrimPrefix(n, "dev.studio_go_runner.reports."), "Progress.")
		case fd.Kind() == protoreflect.EnumKind:
			return string(fd.Enum().Name())
		}
		return fd.Kind().String()
	}
	fields, values := 0, 0
	seen := map[protoreflect.FullName]bool{}
	var walk func(m protoreflect.MessageDescriptor)
	walk = func(m protoreflect.MessageDescriptor) {
		if seen[m.FullName()] || m.IsMapEntry() || !strings.HasPrefix(string(m.FullName()), "dev.") {
			return
		}
		seen[m.FullName()] = true
		for i := 0; i < m.Fields().Len(); i++ {
			fd := m.Fields().Get(i)
			decl := regexp.MustCompile(regexp.QuoteMeta(typeName(fd)) + ` ` + string(fd.Name()) + ` ?= ?` + fmt.Sprint(fd.Number()) + ` ?;`)
			if !decl.MatchString(norm) {
				t.Errorf("%s: the .proto has no %q", m.FullName(), decl)
			}
			fields++
			if fd.Enum() != nil {
				for j := 0; j < fd.Enum().Values().Len(); j++ {
					v := fd.Enum().Values().Get(j)
					if !regexp.MustCompile(`\b` + string(v.Name()) + ` = ` + fmt.Sprint(v.Number()) + `;`).MatchString(norm) {
						t.Errorf("enum %s: the .proto has no %s = %d", fd.Enum().Name(), v.Name(), v.Number())
					}
					values++
				}
			}
			if fd.Message() != nil {
				walk(fd.Message())
			}
		}
	}
	walk(md)
	// Every "name = number;" in the .proto is a field or an enum value above.
	if got := len(regexp.MustCompile(`\w+ ?= ?\d+ ?;`).FindAllString(norm, -1)); got != fields+values {
		t.Errorf("the .proto declares %d fields and values, the descriptor %d fields + %d values", got, fields, values)
	}
}

// parseStudioML parses a report as a StudioML consumer does: protojson,
// unknown fields refused, against reports.proto.
func parseStudioML(t testing.TB, plain []byte) protoreflect.Message {
	t.Helper()
	m := dynamicpb.NewMessage(studiomlReportDescriptor(t))
	if err := protojson.Unmarshal(plain, m); err != nil {
		t.Fatalf("StudioML cannot parse the report %s: %v", plain, err)
	}
	return m
}

// studiomlState is a parsed report's progress.state name, or "".
func studiomlState(m protoreflect.Message) string {
	p := m.Descriptor().Fields().ByName("progress")
	if !m.Has(p) {
		return ""
	}
	pm := m.Get(p).Message()
	sf := pm.Descriptor().Fields().ByName("state")
	return string(sf.Enum().Values().ByNumber(pm.Get(sf).Enum()).Name())
}

// TestReportsParseAsStudioML builds each report a job sends and parses it
// against StudioML's schema.
func TestReportsParseAsStudioML(t *testing.T) {
	r := &Runner{cfg: &Config{RunnerID: "runner-1"}}
	job := Job{Queue: "rmq_q", ID: "amqp-1", Request: []byte(`{"experiment":{"key":"exp-1"}}`)}
	ok := &Result{Output: []byte("epoch 1\n{\"loss\": 0.5}\n{\"loss\": 0.25}\ndone\n"), Duration: 1500 * time.Millisecond}
	bad := &Result{ExitStatus: 3, Output: []byte("boom\n"), Truncated: true, Duration: time.Second}
	cases := []struct {
		name  string
		json  []byte
		state string
	}{
		{"started", mustJSON(t, r.startedReport(job)), "Started"},
		{"success", mustJSON(t, r.finalReport(job, ok)), "Success"},
		{"failed", mustJSON(t, r.finalReport(job, bad)), "Failed"},
		{"stop log", mustJSON(t, r.stopReport(job, bad)), ""},
	}
	for _, c := range cases {
		m := parseStudioML(t, c.json)
		if got := studiomlState(m); got != c.state {
			t.Errorf("%s: state %q, want %q", c.name, got, c.state)
		}
		f := m.Descriptor().Fields()
		if got := m.Get(f.ByName("experiment_id")).Message(); got.Get(got.Descriptor().Fields().ByName("value")).String() != "exp-1" {
			t.Errorf("%s: experiment_id not exp-1: %s", c.name, c.json)
		}
	}
	succ := parseStudioML(t, cases[1].json)
	pm := succ.Get(succ.Descriptor().Fields().ByName("progress")).Message()
	js := pm.Get(pm.Descriptor().Fields().ByName("json")).Message()
	if got := js.Get(js.Descriptor().Fields().ByName("value")).String(); got != `{"loss": 0.25}` {
		t.Errorf("progress.json %q, want the experiment's last JSON line", got)
	}
	stop := parseStudioML(t, cases[3].json)
	lm := stop.Get(stop.Descriptor().Fields().ByName("logging")).Message()
	sev := lm.Descriptor().Fields().ByName("severity")
	if got := sev.Enum().Values().ByNumber(lm.Get(sev).Enum()).Name(); got != "Error" {
		t.Errorf("stop log severity %s, want Error", got)
	}
	fm := lm.Get(lm.Descriptor().Fields().ByName("fields")).Map()
	for k, want := range map[string]string{"success": "False", "exit_status": "3", "output": "boom\n", "output_truncated": "True", "duration": "1s"} {
		if got := fm.Get(protoreflect.ValueOfString(k).MapKey()); !got.IsValid() || got.String() != want {
			t.Errorf("stop log field %s = %v, want %q", k, got, want)
		}
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzReports: whatever a job prints (the experiment's output is untrusted)
// and however it ends, its reports parse as StudioML reports, and
// progress.json is valid JSON or absent.
func FuzzReports(f *testing.F) {
	f.Add([]byte("{\"a\": 1}\n"), 0, false)
	f.Add([]byte("\xff\xfe{\"bad utf8\": \"\xff\"}\n[1,2]\n"), 3, true)
	f.Add([]byte("[\n{"), -1, false)
	md := studiomlReportDescriptor(f)
	r := &Runner{cfg: &Config{RunnerID: "r"}}
	f.Fuzz(func(t *testing.T, out []byte, exit int, timedOut bool) {
		job := Job{Queue: "q", ID: "id", Request: out}
		res := &Result{Output: out, ExitStatus: exit, TimedOut: timedOut}
		for _, rep := range []*envelope.Report{r.startedReport(job), r.stopReport(job, res), r.finalReport(job, res)} {
			b := mustJSON(t, rep)
			if err := protojson.Unmarshal(b, dynamicpb.NewMessage(md)); err != nil {
				t.Fatalf("report %s does not parse as StudioML's: %v", b, err)
			}
			if rep.Progress != nil && rep.Progress.JSON != "" && !json.Valid([]byte(rep.Progress.JSON)) {
				t.Fatalf("progress.json %q is not JSON", rep.Progress.JSON)
			}
		}
	})
}
