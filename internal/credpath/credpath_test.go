package credpath

import (
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	set := func(string) (string, bool) { return "/run/credentials/sealrun-secrets.service/", true }
	unset := func(string) (string, bool) { return "", false }
	for _, tc := range []struct {
		name, in string
		lookup   func(string) (string, bool)
		want     string // expanded path, or a substring of the error
		wantErr  bool
	}{
		{"plain path untouched", "/etc/sealrun/master.key", unset, "/etc/sealrun/master.key", false},
		{"credential", "${CREDENTIALS_DIRECTORY}/master.key", set, "/run/credentials/sealrun-secrets.service/master.key", false},
		{"unset", "${CREDENTIALS_DIRECTORY}/master.key", unset, "is not set", true},
		{"other variable", "$HOME/master.key", set, "only ${CREDENTIALS_DIRECTORY}", true},
		{"braced other variable", "${STATE_DIRECTORY}/x", set, "only ${CREDENTIALS_DIRECTORY}", true},
		{"unbraced form", "$CREDENTIALS_DIRECTORY/x", set, "only ${CREDENTIALS_DIRECTORY}", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := expand(tc.in, tc.lookup)
			switch {
			case tc.wantErr && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("expand(%q) = %q, %v; want error mentioning %q", tc.in, got, err, tc.want)
			case !tc.wantErr && (err != nil || got != tc.want):
				t.Fatalf("expand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestExpandFieldsNamesTheField(t *testing.T) {
	t.Setenv(Var, "/creds")
	key, empty, bad := "${CREDENTIALS_DIRECTORY}/k", "", "$X"
	if err := ExpandFields(Field{"a", &key}, Field{"b", &empty}, Field{"c", nil}); err != nil || key != "/creds/k" {
		t.Fatalf("ExpandFields: %v, key %q", err, key)
	}
	if err := ExpandFields(Field{"secrets.vault.token_file", &bad}); err == nil || !strings.HasPrefix(err.Error(), "secrets.vault.token_file: ") {
		t.Fatalf("error %v does not name the field", err)
	}
}
