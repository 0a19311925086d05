package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The command line's LoadAdmin reads the file without its tenants,
// devices, include and listeners (a fleet's config is mostly those), and
// gets what it needs (spool, http, log, sandbox) as the whole file gives
// it: for the shipped examples, for a file whose device list the bridge
// would refuse, and for one whose spool refers to an anchor in the
// device list (read whole then).
func TestLoadAdminSkipsTheFleet(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	paths, _ := filepath.Glob("../examples/*.yaml")
	if len(paths) < 2 {
		t.Fatalf("examples: %v", paths)
	}
	paths = append(paths,
		write("fleet.yaml", `# a fleet
hostname: bridge.example
listeners:
  - {name: lan, address: "127.0.0.1:2525"}
devices:
  - name: mfp
    password_hash: not a hash
    tenant: nowhere
  - {name: [broken
tenants: [
{name: a}
]
spool:
  dir: /var/lib/smtpbridge/spool
http: {address: "127.0.0.1:8025"}
log:
  audit_file: audit.log
`),
		write("anchor.yaml", `devices:
  - name: mfp
    x: &where /srv/spool
spool:
  dir: *where
`))
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			part, err := loadAdmin(p, true)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasSuffix(p, "fleet.yaml") || strings.HasSuffix(p, "anchor.yaml") {
				want := map[string]string{"fleet.yaml": "/var/lib/smtpbridge/spool", "anchor.yaml": "/srv/spool"}[filepath.Base(p)]
				if part.Spool.Dir != want {
					t.Errorf("spool.dir %q, want %q", part.Spool.Dir, want)
				}
				if filepath.Base(p) == "fleet.yaml" && (part.HTTP.Address != "127.0.0.1:8025" || part.Log.AuditFile != filepath.Join(dir, "audit.log")) {
					t.Errorf("http.address %q, log.audit_file %q", part.HTTP.Address, part.Log.AuditFile)
				}
				return
			}
			whole, err := loadAdmin(p, false)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"Spool", "HTTP", "Log", "Sandbox", "Hostname"} {
				a, b := reflect.ValueOf(*part).FieldByName(f).Interface(), reflect.ValueOf(*whole).FieldByName(f).Interface()
				if !reflect.DeepEqual(a, b) {
					t.Errorf("%s without the fleet: %+v; read whole: %+v", f, a, b)
				}
			}
		})
	}
}

// withoutFleet keeps every line's number and leaves files it cannot
// cut safely (flow style at the top, several documents) to be read
// whole.
func TestWithoutFleet(t *testing.T) {
	in := "# c\nspool:\n  dir: x\ndevices:\n  - a\n  - b\nlog: {level: info}\n"
	out, ok := withoutFleet([]byte(in))
	if want := "# c\nspool:\n  dir: x\n\n\n\nlog: {level: info}\n"; !ok || string(out) != want {
		t.Errorf("got %q %v, want %q", out, ok, want)
	}
	for _, in := range []string{"{spool: {dir: x}}\n", "spool: {dir: x}\n---\nlog: {}\n", "- a\n- b\n", ""} {
		if _, ok := withoutFleet([]byte(in)); ok {
			t.Errorf("%q: cut, want it read whole", in)
		}
	}
}
