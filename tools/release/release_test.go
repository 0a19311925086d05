//go:build packaging

package main

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func sh(t *testing.T, wantErr bool, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if (err != nil) != wantErr {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The release command, as a maintainer runs it, then its artifacts as
// users meet them: the checksums, the SBOM, the MSI's tables, and the
// .deb through the README's Linux steps (linuxWalkthrough).
func TestRelease(t *testing.T) {
	dist := t.TempDir()
	var log bytes.Buffer
	r := &release{version: "0.9.1-test.1", out: dist, msi: true, log: &log}
	if err := r.run(); err != nil {
		t.Fatalf("release: %v\n%s", err, log.String())
	}
	t.Logf("%s", log.String())
	want := []string{"bin/linux_amd64/smtpbridge", "bin/linux_arm64/smtpbridge", "bin/windows_amd64/smtpbridge.exe",
		"smtpbridge_0.9.1-test.1_linux_amd64.tar.gz", "smtpbridge_0.9.1-test.1_linux_arm64.tar.gz", "smtpbridge_0.9.1-test.1_windows_amd64.zip",
		"smtpbridge_0.9.1-test.1_amd64.deb", "smtpbridge_0.9.1-test.1_arm64.deb", "smtpbridge_0.9.1-test.1_amd64.rpm", "smtpbridge_0.9.1-test.1_arm64.rpm",
		"smtpbridge_0.9.1-test.1_windows_amd64.msi", "smtpbridge_0.9.1-test.1.cdx.json"}
	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range want {
		data, err := os.ReadFile(filepath.Join(dist, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		sum := sha256.Sum256(data)
		if !strings.Contains(string(sums), hex.EncodeToString(sum[:])+"  "+name+"\n") {
			t.Errorf("SHA256SUMS lacks %s's checksum", name)
		}
	}
	if out := sh(t, false, filepath.Join(dist, "bin", "linux_amd64", "smtpbridge"), "version"); !strings.HasPrefix(out, "smtpbridge 0.9.1-test.1 ") {
		t.Errorf("the binary's version: %q", out)
	}

	// Release binaries are stripped (no symbol table, no DWARF) and
	// carry no path of the machine that built them (-trimpath).
	bin := filepath.Join(dist, "bin", "linux_amd64", "smtpbridge")
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, sec := range ef.Sections {
		if sec.Name == ".symtab" || strings.HasPrefix(sec.Name, ".debug_") || strings.HasPrefix(sec.Name, ".zdebug_") {
			t.Errorf("the release binary has %s: not stripped (-ldflags \"-s -w\")", sec.Name)
		}
	}
	ef.Close()
	// Its size: the release binaries were 23.7 MiB (linux/amd64) with
	// go-redis, which linked every command of every kind of client; the
	// first day's promise is a quarter less. A new dependency that
	// brings as much back fails here, where it can be weighed.
	const before, most = 23.7 * (1 << 20), 0.75
	if fi, err := os.Stat(bin); err != nil {
		t.Error(err)
	} else if float64(fi.Size()) > most*before {
		t.Errorf("the release binary is %.1f MiB, more than %.0f%% of the 23.7 MiB before internal/redis: see what a new dependency links with `go tool nm -size -sort size`",
			float64(fi.Size())/(1<<20), most*100)
	}
	root, _ := filepath.Abs("../..")
	if data, err := os.ReadFile(bin); err != nil || bytes.Contains(data, []byte(root+"/")) {
		t.Errorf("the release binary holds this checkout's path %s (build with -trimpath): %v", root, err)
	}

	// The SBOM names the required modules with their versions, and
	// smtpbridge's licence.
	var bom struct {
		BOMFormat  string `json:"bomFormat"`
		Components []struct{ Name, Version, Purl string }
		Metadata   struct {
			Component struct {
				Licenses []struct {
					License struct{ ID string } `json:"license"`
				} `json:"licenses"`
			} `json:"component"`
		} `json:"metadata"`
	}
	data, _ := os.ReadFile(filepath.Join(dist, "smtpbridge_0.9.1-test.1.cdx.json"))
	if err := json.Unmarshal(data, &bom); err != nil || bom.BOMFormat != "CycloneDX" {
		t.Fatalf("SBOM: %v", err)
	}
	if l := bom.Metadata.Component.Licenses; len(l) != 1 || l[0].License.ID != "Apache-2.0" {
		t.Errorf("the SBOM's licence: %+v, want Apache-2.0", l)
	}
	deb := filepath.Join(dist, "smtpbridge_0.9.1-test.1_amd64.deb")
	if lic := strings.TrimSpace(sh(t, false, "dpkg-deb", "-f", deb, "License")); lic != "Apache-2.0" {
		t.Errorf("dpkg-deb -f License: %q, want Apache-2.0", lic)
	}
	if list := sh(t, false, "dpkg-deb", "-c", deb); !strings.Contains(list, "./usr/share/doc/smtpbridge/copyright") {
		t.Errorf("the .deb has no copyright file:\n%s", list)
	}
	names := map[string]bool{}
	for _, c := range bom.Components {
		names[c.Name] = c.Version != "" && strings.HasPrefix(c.Purl, "pkg:golang/")
	}
	for _, m := range []string{"github.com/emersion/go-smtp", "golang.org/x/oauth2", "github.com/AzureAD/microsoft-authentication-library-for-go",
		"github.com/prometheus/client_golang", "github.com/rs/zerolog", "stdlib"} {
		if !names[m] {
			t.Errorf("the SBOM lacks %s (with a version and purl)", m)
		}
	}

	// The MSI: the service, the files and where they go.
	msi := filepath.Join(dist, "smtpbridge_0.9.1-test.1_windows_amd64.msi")
	svc := sh(t, false, "msiinfo", "export", msi, "ServiceInstall")
	for _, w := range []string{"smtpbridge", "LocalSystem", `service run --config "[CommonAppDataFolder]smtpbridge\smtpbridge.yaml"`, "\t3\t"} {
		if !strings.Contains(svc, w) {
			t.Errorf("ServiceInstall lacks %q (3: started on demand, not at install):\n%s", w, svc)
		}
	}
	files := sh(t, false, "msiinfo", "export", msi, "File")
	dirs := sh(t, false, "msiinfo", "export", msi, "Directory")
	comps := sh(t, false, "msiinfo", "export", msi, "Component")
	for _, w := range []string{"smtpbridge.exe\tBinary", "smtpbridge.yaml\tConfig", "sandbox.yaml\tSandbox"} {
		if !strings.Contains(files, w) {
			t.Errorf("File lacks %q:\n%s", w, files)
		}
	}
	for _, w := range []string{"INSTALLDIR\tProgramFiles64Folder\tsmtpbridge", "DATADIR\tCommonAppDataFolder\tsmtpbridge"} {
		if !strings.Contains(dirs, w) {
			t.Errorf("Directory lacks %q:\n%s", w, dirs)
		}
	}
	if !strings.Contains(comps, "DATADIR\t400\t") {
		t.Errorf("the config's components are not Permanent and NeverOverwrite (400):\n%s", comps)
	}
	if svcCtl := sh(t, false, "msiinfo", "export", msi, "ServiceControl"); !strings.Contains(svcCtl, "smtpbridge\t162") {
		t.Errorf("ServiceControl: want stop on install and uninstall, remove on uninstall (162):\n%s", svcCtl)
	}
	if _, err := exec.LookPath("rpm"); err != nil {
		t.Error("rpm is not installed (apt-get install rpm): the .rpm is not checked")
	} else {
		list := sh(t, false, "rpm", "-qlp", filepath.Join(dist, "smtpbridge_0.9.1-test.1_amd64.rpm"))
		for _, w := range []string{"/usr/bin/smtpbridge", "/usr/lib/systemd/system/smtpbridge.service", "/etc/smtpbridge/smtpbridge.yaml"} {
			if !strings.Contains(list, w) {
				t.Errorf("the .rpm lacks %s:\n%s", w, list)
			}
		}
		if cfg := sh(t, false, "rpm", "-qcp", filepath.Join(dist, "smtpbridge_0.9.1-test.1_amd64.rpm")); !strings.Contains(cfg, "/etc/smtpbridge/smtpbridge.yaml") {
			t.Errorf("the .rpm does not mark the config as a config file:\n%s", cfg)
		}
	}

	linuxWalkthrough(t, filepath.Join(dist, "smtpbridge_0.9.1-test.1_amd64.deb"))
}
