//go:build linux

package tokenstore

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/cache"
)

const nobody = 65534

type sealedTokens []byte

func (s sealedTokens) Marshal() ([]byte, error) { return s, nil }

// The token cache's file work as root (sudo smtpbridge tenant login,
// were it not to drop to the bridge's user) against the user who owns
// the spool: a racer running as nobody swaps every temporary cache file
// for a link to a file of root's, and the token directory for a link to
// a directory of root's, as fast as it can. However the race goes, root
// never gives its files away.
func TestCacheSymlinkRace(t *testing.T) {
	if dir := os.Getenv("CACHE_RACER_SPOOL"); dir != "" {
		race(dir, os.Getenv("CACHE_RACER_TARGET"))
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("the race is against root's file work, and this test runs as a user; CI runs it as root")
	}
	base := t.TempDir()
	os.Chmod(filepath.Dir(base), 0o755) // nobody must reach its files
	os.Chmod(base, 0o755)
	spool := filepath.Join(base, "spool")
	target := filepath.Join(base, "shadow")
	os.Mkdir(spool, 0o700)
	os.Chown(spool, nobody, nobody)
	os.WriteFile(target, []byte("root's"), 0o640)
	os.Mkdir(target+".d", 0o700)
	racer := filepath.Join(base, "racer")
	if err := copyFile(os.Args[0], racer); err != nil {
		t.Fatal(err)
	}
	stop := filepath.Join(spool, "stop")
	cmd := exec.Command(racer, "-test.run=^TestCacheSymlinkRace$")
	cmd.Env = append(os.Environ(), "CACHE_RACER_SPOOL="+spool, "CACHE_RACER_TARGET="+target)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	ctx := context.Background()
	tokens := filepath.Join(spool, "tokens")
	exports, refused := 0, 0
	for i := range 400 {
		if i%4 == 0 {
			// Make the directory again: the race is on its creation too.
			os.RemoveAll(tokens)
		}
		fc, err := newFileCache(&Cache{Dir: tokens, Key: []byte(strings.Repeat("k", 32))}, Tenant{Name: "contoso"}, "")
		if err != nil {
			refused++
			continue
		}
		if fc.Export(ctx, sealedTokens("tokens"), cache.ExportHints{}) == nil {
			exports++
		}
	}
	os.WriteFile(stop, nil, 0o644)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("racer: %v\n%s", err, out.String())
	}
	var swaps int
	for _, line := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "swaps="); ok {
			swaps, _ = strconv.Atoi(v)
		}
	}
	t.Logf("400 rounds: %d exports written, %d refused at the directory check; the racer made %d swaps", exports, refused, swaps)
	if swaps == 0 {
		t.Fatalf("the racer never swapped anything, so nothing was tested:\n%s", out.String())
	}
	for _, p := range []string{target, target + ".d"} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s now belongs to %d:%d: root was led to give it away", p, st.Uid, st.Gid)
		}
	}
	if exports == 0 {
		t.Error("no export succeeded at all in 400 rounds")
	}
}

// race is the racer: until the stop file appears, it swaps the
// temporary cache files, and the token directory when root made it,
// for links to target, then prints how many swaps it made.
func race(spool, target string) {
	tokens := filepath.Join(spool, "tokens")
	swaps := 0
	for n := 0; ; n++ {
		if _, err := os.Stat(filepath.Join(spool, "stop")); err == nil {
			break
		}
		if fi, err := os.Lstat(tokens); err == nil && fi.IsDir() {
			if st := fi.Sys().(*syscall.Stat_t); st.Uid == 0 && os.Rename(tokens, fmt.Sprintf("%s.old%d", tokens, n)) == nil {
				if os.Symlink(target+".d", tokens) == nil {
					swaps++
				}
			}
		}
		entries, _ := os.ReadDir(tokens)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".tmp-") && e.Type().IsRegular() {
				p := filepath.Join(tokens, e.Name())
				if os.Remove(p) == nil && os.Symlink(target, p) == nil {
					swaps++
				}
			}
		}
	}
	fmt.Printf("swaps=%d\n", swaps)
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}
