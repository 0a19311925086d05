// Command release builds everything a release ships into dist/:
//
//	go run ./tools/release VERSION
//
// the binaries for linux/amd64, linux/arm64 and windows/amd64 with the
// version stamped, an archive of each with the README and the examples,
// the .deb and .rpm of each Linux architecture (nfpm, run through go
// run), the Windows .msi (wixl, from Debian's wixl package), a CycloneDX
// SBOM of the Go modules in the binaries, and SHA256SUMS over them all.
// It prints each step and ends with a summary.
package main

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// nfpmModule is the nfpm the packages are built with.
const nfpmModule = "github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2"

type target struct{ goos, goarch string }

var targets = []target{{"linux", "amd64"}, {"linux", "arm64"}, {"windows", "amd64"}}

// versionRE is what VERSION may be: semantic versioning, which the
// package formats all take.
var versionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$`)

func main() {
	out := flag.String("out", "dist", "the `DIR` to write to (emptied first)")
	skipMSI := flag.Bool("skip-msi", false, "build no .msi (where wixl is not installed)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: go run ./tools/release [--out DIR] [--skip-msi] VERSION\n\nVERSION is e.g. 1.2.0 or 1.2.0-rc.1.\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	r := &release{version: flag.Arg(0), out: *out, msi: !*skipMSI, log: os.Stdout}
	if err := r.run(); err != nil {
		fmt.Fprintf(os.Stderr, "release: %v\n", err)
		os.Exit(1)
	}
}

type release struct {
	version string
	out     string
	msi     bool
	log     io.Writer
	root    string   // the repository
	tools   string   // where the tools it builds go (not out)
	made    []string // the artifacts, relative to out
	started time.Time
}

func (r *release) step(format string, args ...any) {
	fmt.Fprintf(r.log, "==> "+format+"\n", args...)
}

func (r *release) run() error {
	r.started = time.Now()
	if !versionRE.MatchString(r.version) {
		return fmt.Errorf("version %q: give a semantic version such as 1.2.0 or 1.2.0-rc.1 (no leading v)", r.version)
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	r.root = root
	if !filepath.IsAbs(r.out) {
		r.out = filepath.Join(root, r.out)
	}
	if r.msi {
		if _, err := exec.LookPath("wixl"); err != nil {
			return errors.New("wixl is not installed (apt-get install wixl msitools), or pass --skip-msi")
		}
	}
	if err := os.RemoveAll(r.out); err != nil {
		return err
	}
	if r.tools, err = os.MkdirTemp("", "release-tools"); err != nil {
		return err
	}
	defer os.RemoveAll(r.tools)
	if err := os.MkdirAll(r.out, 0o755); err != nil {
		return err
	}
	bins := map[target]string{}
	for _, t := range targets {
		bin, err := r.build(t)
		if err != nil {
			return err
		}
		bins[t] = bin
		if err := r.archive(t, bin); err != nil {
			return err
		}
	}
	for _, t := range targets {
		if t.goos != "linux" {
			continue
		}
		for _, format := range []string{"deb", "rpm"} {
			if err := r.pkg(t, bins[t], format); err != nil {
				return err
			}
		}
	}
	if r.msi {
		if err := r.buildMSI(bins[target{"windows", "amd64"}]); err != nil {
			return err
		}
	}
	if err := r.sbom(bins[target{"linux", "amd64"}]); err != nil {
		return err
	}
	if err := r.checksums(); err != nil {
		return err
	}
	r.summary()
	return nil
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("find the module's directory (run from the repository): %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// base is an artifact's name stem: smtpbridge_1.2.0_linux_amd64.
func (r *release) base(t target) string {
	return fmt.Sprintf("smtpbridge_%s_%s_%s", r.version, t.goos, t.goarch)
}

func (r *release) build(t target) (string, error) {
	r.step("building %s/%s", t.goos, t.goarch)
	name := "smtpbridge"
	if t.goos == "windows" {
		name += ".exe"
	}
	bin := filepath.Join(r.out, "bin", t.goos+"_"+t.goarch, name)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+r.version, "-o", bin, "./cmd/smtpbridge")
	cmd.Dir = r.root
	cmd.Env = append(os.Environ(), "GOOS="+t.goos, "GOARCH="+t.goarch, "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build for %s/%s: %v\n%s", t.goos, t.goarch, err, out)
	}
	rel, _ := filepath.Rel(r.out, bin)
	r.made = append(r.made, filepath.ToSlash(rel))
	return bin, nil
}

// archived are the files each archive carries besides the binary.
var archived = []string{"README.md", "examples/smtpbridge.yaml", "examples/sandbox.yaml", "examples/prometheus/alerts.yml",
	"examples/grafana/dashboards/smtpbridge.json"}

func (r *release) archive(t target, bin string) error {
	files := map[string]string{filepath.Base(bin): bin}
	for _, f := range archived {
		files[f] = filepath.Join(r.root, f)
	}
	if t.goos == "linux" {
		files["smtpbridge.service"] = filepath.Join(r.root, "deploy", "systemd", "smtpbridge.service")
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	dir := r.base(t)
	if t.goos == "windows" {
		name := r.base(t) + ".zip"
		r.step("archiving %s", name)
		return r.write(name, func(w io.Writer) error {
			z := zip.NewWriter(w)
			for _, n := range names {
				if err := addZip(z, dir+"/"+n, files[n]); err != nil {
					return err
				}
			}
			return z.Close()
		})
	}
	name := r.base(t) + ".tar.gz"
	r.step("archiving %s", name)
	return r.write(name, func(w io.Writer) error {
		gz := gzip.NewWriter(w)
		tw := tar.NewWriter(gz)
		for _, n := range names {
			if err := addTar(tw, dir+"/"+n, files[n]); err != nil {
				return err
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		return gz.Close()
	})
}

// write creates an artifact in out through fill.
func (r *release) write(name string, fill func(io.Writer) error) error {
	f, err := os.Create(filepath.Join(r.out, name))
	if err != nil {
		return err
	}
	if err := fill(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	r.made = append(r.made, name)
	return nil
}

func addTar(tw *tar.Writer, name, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	mode := int64(0o644)
	if fi.Mode()&0o111 != 0 {
		mode = 0o755
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: fi.Size(), ModTime: fi.ModTime().Truncate(time.Second), Format: tar.FormatPAX}); err != nil {
		return err
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}

func addZip(z *zip.Writer, name, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	h, err := zip.FileInfoHeader(fi)
	if err != nil {
		return err
	}
	h.Name, h.Method = name, zip.Deflate
	w, err := z.CreateHeader(h)
	if err != nil {
		return err
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// pkg builds a .deb or .rpm with nfpm from packaging/nfpm.yaml, its
// ${VERSION}, ${ARCH} and ${BINARY} filled in.
func (r *release) pkg(t target, bin, format string) error {
	r.step("packaging %s for %s", format, t.goarch)
	nfpm, err := r.nfpm()
	if err != nil {
		return err
	}
	tmpl, err := os.ReadFile(filepath.Join(r.root, "packaging", "nfpm.yaml"))
	if err != nil {
		return err
	}
	vars := map[string]string{"VERSION": r.version, "ARCH": t.goarch, "BINARY": bin}
	cfg := os.Expand(string(tmpl), func(k string) string { return vars[k] })
	cfgFile := filepath.Join(r.out, "nfpm-"+t.goarch+".yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		return err
	}
	defer os.Remove(cfgFile)
	name := fmt.Sprintf("smtpbridge_%s_%s.%s", r.version, t.goarch, format)
	cmd := exec.Command(nfpm, "package", "--config", cfgFile, "--packager", format, "--target", filepath.Join(r.out, name))
	cmd.Dir = r.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nfpm %s for %s: %v\n%s", format, t.goarch, err, out)
	}
	r.made = append(r.made, name)
	return nil
}

// nfpm builds nfpm once, from the Go module proxy.
func (r *release) nfpm() (string, error) {
	bin := filepath.Join(r.tools, "nfpm")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	r.step("building %s", nfpmModule)
	cmd := exec.Command("go", "install", nfpmModule)
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Dir(bin), "GOFLAGS=", "GOOS=", "GOARCH=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %v\n%s", nfpmModule, err, out)
	}
	return bin, nil
}

// buildMSI builds the .msi with wixl from packaging/windows/smtpbridge.wxs,
// then marks the config's components Permanent and NeverOverwrite (kept
// on uninstall, never replaced by an upgrade), which wixl does not take
// from the .wxs.
func (r *release) buildMSI(exe string) error {
	name := fmt.Sprintf("smtpbridge_%s_windows_amd64.msi", r.version)
	r.step("building %s", name)
	stage, err := os.MkdirTemp("", "msi")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for src, dst := range map[string]string{exe: "smtpbridge.exe", filepath.Join(r.root, "examples", "smtpbridge.yaml"): "smtpbridge.yaml",
		filepath.Join(r.root, "examples", "sandbox.yaml"): "sandbox.yaml"} {
		if err := copyFile(src, filepath.Join(stage, dst)); err != nil {
			return err
		}
	}
	// The MSI's ProductVersion takes numbers only.
	numeric := strings.SplitN(r.version, "-", 2)[0]
	msi := filepath.Join(r.out, name)
	cmd := exec.Command("wixl", "-a", "x64", "-D", "Version="+numeric, "-D", "Exe=smtpbridge.exe", "-D", "Config=smtpbridge.yaml",
		"-D", "Sandbox=sandbox.yaml", "-o", msi, filepath.Join(r.root, "packaging", "windows", "smtpbridge.wxs"))
	cmd.Dir = stage
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("wixl: %v\n%s", err, out)
	}
	// 256 64-bit, 16 Permanent, 128 NeverOverwrite.
	q := "UPDATE `Component` SET `Attributes` = 400 WHERE `Component` = 'Config' OR `Component` = 'Sandbox'"
	if out, err := exec.Command("msibuild", msi, "-q", q).CombinedOutput(); err != nil {
		return fmt.Errorf("msibuild: %v\n%s", err, out)
	}
	r.made = append(r.made, name)
	return nil
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

func (r *release) checksums() error {
	r.step("checksums")
	slices.Sort(r.made)
	var b strings.Builder
	for _, name := range r.made {
		f, err := os.Open(filepath.Join(r.out, name))
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), name)
	}
	if err := os.WriteFile(filepath.Join(r.out, "SHA256SUMS"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	return nil
}

func (r *release) summary() {
	fmt.Fprintf(r.log, "\nsmtpbridge %s in %s (%s):\n", r.version, r.out, time.Since(r.started).Round(time.Second))
	for _, name := range append(slices.Clone(r.made), "SHA256SUMS") {
		fi, err := os.Stat(filepath.Join(r.out, name))
		if err != nil {
			continue
		}
		fmt.Fprintf(r.log, "  %-50s %8.1f MiB\n", name, float64(fi.Size())/(1<<20))
	}
	fmt.Fprintf(r.log, "Check them with: cd %s && sha256sum -c SHA256SUMS\n", r.out)
}
