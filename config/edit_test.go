package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// deviceNames parses text and returns its devices' names.
func deviceNames(t *testing.T, text []byte) []string {
	t.Helper()
	var doc struct {
		Devices []struct{ Name string } `yaml:"devices"`
	}
	if err := yaml.Unmarshal(text, &doc); err != nil {
		t.Fatalf("the edited file does not parse: %v\n%s", err, text)
	}
	var names []string
	for _, d := range doc.Devices {
		names = append(names, d.Name)
	}
	return names
}

// The device commands' edits of the shipped example keep every line they
// do not change byte for byte: an added device is a block of new lines
// after the list's last item, a new password one changed line, a removed
// device its own lines gone.
func TestEditKeepsTheRestOfTheFile(t *testing.T) {
	orig, err := os.ReadFile("../examples/smtpbridge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "smtpbridge.yaml")
	if err := os.WriteFile(path, orig, 0o640); err != nil {
		t.Fatal(err)
	}
	before := strings.SplitAfter(string(orig), "\n")
	e, err := OpenEdit(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.AddDevice(DeviceEntry{Name: "mfp-3f", Username: "mfp-3f", PasswordHash: "$argon2id$v=19$m=7168,t=5,p=1$c2FsdA$aGFzaA",
		Tenant: "contoso", Mailbox: "scans@contoso.com", Networks: []string{"10.20.0.0/24"}}); err != nil {
		t.Fatal(err)
	}
	after := strings.SplitAfter(string(e.Text()), "\n")
	added := len(after) - len(before)
	if added != 6 {
		t.Fatalf("%d lines added, want 6:\n%s", added, e.Text())
	}
	at := 0
	for at < len(before) && before[at] == after[at] {
		at++
	}
	if strings.Join(after[:at], "")+strings.Join(after[at+added:], "") != string(orig) {
		t.Fatalf("the lines around the new device changed")
	}
	if !strings.HasPrefix(after[at], "  - name: \"mfp-3f\"") {
		t.Errorf("the new device starts with %q", after[at])
	}
	if names := deviceNames(t, e.Text()); strings.Join(names, ",") != "mfp-2f,erp,alarm-panel,mfp-3f" {
		t.Errorf("devices after add: %v", names)
	}

	if err := e.SetPasswordHash("erp", "$argon2id$v=19$m=7168,t=5,p=1$bmV3$bmV3aGFzaA"); err != nil {
		t.Fatal(err)
	}
	changed := 0
	now := strings.SplitAfter(string(e.Text()), "\n")
	for i := range now {
		if now[i] != after[i] {
			changed++
			if !strings.Contains(now[i], `password_hash: "$argon2id$v=19$m=7168,t=5,p=1$bmV3$bmV3aGFzaA"`) {
				t.Errorf("changed line %q", now[i])
			}
		}
	}
	if changed != 1 || len(now) != len(after) {
		t.Errorf("a new password changed %d lines (and %d → %d lines), want 1", changed, len(after), len(now))
	}

	if err := e.RemoveDevice("erp"); err != nil {
		t.Fatal(err)
	}
	rem := strings.SplitAfter(string(e.Text()), "\n")
	if names := deviceNames(t, e.Text()); strings.Join(names, ",") != "mfp-2f,alarm-panel,mfp-3f" {
		t.Errorf("devices after remove: %v", names)
	}
	i := 0
	for i < len(rem) && rem[i] == now[i] {
		i++
	}
	gone := len(now) - len(rem)
	if strings.Join(now[:i], "")+strings.Join(now[i+gone:], "") != string(e.Text()) || !strings.Contains(now[i], "name: erp") {
		t.Errorf("remove took more than erp's lines: from %q, %d lines", now[i], gone)
	}
	if err := e.RemoveDevice("erp"); !errors.Is(err, ErrNoDevice) {
		t.Errorf("removing a device twice: %v", err)
	}

	// Someone else edits the file meanwhile: nothing is written.
	other := append([]byte("# edited by hand\n"), orig...)
	if err := os.WriteFile(path, other, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Commit(); !errors.Is(err, ErrChanged) {
		t.Fatalf("commit over another edit: %v, want ErrChanged", err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(other) {
		t.Error("the other edit was overwritten")
	}
	e2, _ := OpenEdit(path)
	e2.AddDevice(DeviceEntry{Name: "x", Username: "x", PasswordHash: "h", Tenant: "contoso", Mailbox: "x@contoso.com"})
	backup, err := e2.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(backup); string(got) != string(other) {
		t.Error("the backup is not the file as it was")
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o640 {
		t.Errorf("the config's mode became %v", info.Mode().Perm())
	}
}

// A list of flow items gets a flow item; a file without devices gets
// the list; a flow list is refused with the fix.
func TestEditListStyles(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ in, wantLine, err string }{
		{"devices:\n  - {name: a, tenant: t}\n  - {name: b, tenant: t}  # b\nspool: {dir: s}\n", `  - {name: "c", username: "c", password_hash: "h", tenant: "t", mailbox: "c@t.example"}`, ""},
		{"spool: {dir: s}", "devices:", ""},
		{"devices: [{name: a}]\n", "", "flow list"},
	} {
		p := filepath.Join(dir, "c.yaml")
		os.WriteFile(p, []byte(tc.in), 0o600)
		e, _ := OpenEdit(p)
		err := e.AddDevice(DeviceEntry{Name: "c", Username: "c", PasswordHash: "h", Tenant: "t", Mailbox: "c@t.example"})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		text := string(e.Text())
		kept := strings.Replace(text, tc.wantLine+"\n", "", 1)
		if !strings.Contains(text, tc.wantLine+"\n") || kept != tc.in && !strings.HasPrefix(text, tc.in) {
			t.Errorf("%q became:\n%s", tc.in, e.Text())
		}
		if names := deviceNames(t, e.Text()); names[len(names)-1] != "c" {
			t.Errorf("%q: devices %v", tc.in, names)
		}
	}
}

// The env file the service reads: comments, quotes, export; a line that
// is not KEY=VALUE names its line, not its content.
func TestReadEnvFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secrets.env")
	os.WriteFile(p, []byte("# secrets\nCONTOSO_SECRET=abc~123\nexport B=\"two words\"\nC='x y'\n; other\n"), 0o600)
	vars, err := ReadEnvFile(p)
	if err != nil || vars["CONTOSO_SECRET"] != "abc~123" || vars["B"] != "two words" || vars["C"] != "x y" {
		t.Errorf("%v %v", vars, err)
	}
	os.WriteFile(p, []byte("A=1\nsecret-value-without-key\n"), 0o600)
	if _, err := ReadEnvFile(p); err == nil || !strings.Contains(err.Error(), ":2:") || strings.Contains(err.Error(), "secret-value") {
		t.Errorf("a bad line: %v", err)
	}
}
