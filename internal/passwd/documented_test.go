package passwd

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestDocumented(t *testing.T) {
	if !IsDocumented([]byte("scan-to-mail")) || IsDocumented([]byte("scan-to-mail ")) || IsDocumented(nil) {
		t.Error("IsDocumented")
	}
	fresh, err := NewArgon2id([]byte("scan-to-mail"))
	if err != nil {
		t.Fatal(err)
	}
	own, _ := NewArgon2id([]byte("a password of its own"))
	for enc, want := range map[string]bool{fresh: true, own: false} {
		h, err := Parse(enc)
		if err != nil {
			t.Fatal(err)
		}
		if got := VerifiesDocumented(h); got != want {
			t.Errorf("VerifiesDocumented(%s) = %v", enc, got)
		}
		if IsDocumentedHash(enc) {
			t.Errorf("a fresh hash is one the project ships: %s", enc)
		}
	}
}

// Every password hash in the repository's documentation and examples
// that verifies a documented password is in documentedHashes, so that a
// config copied from them is refused at no cost; and each listed hash
// does verify one.
func TestDocumentedHashesInStep(t *testing.T) {
	root := filepath.Join("..", "..")
	hashRE := regexp.MustCompile(`\$(argon2id|2[aby])\$[A-Za-z0-9$=,./+]+`)
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); name == ".git" || name == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".yaml") && !strings.HasSuffix(path, ".yml") && !strings.HasSuffix(path, ".md") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, enc := range hashRE.FindAllString(string(data), -1) {
			if seen[enc] {
				continue
			}
			seen[enc] = true
			h, err := Parse(enc)
			if err != nil {
				continue // a placeholder or a shortened example
			}
			if VerifiesDocumented(h) && !IsDocumentedHash(enc) {
				t.Errorf("%s: %s verifies a documented password; add it to documentedHashes", path, enc)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for enc := range documentedHashes {
		h, err := Parse(enc)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, d := range documented {
			found = found || h.Verify([]byte(d))
		}
		if !found {
			t.Errorf("%s is listed but verifies no documented password", enc)
		}
	}
}
