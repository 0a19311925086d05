//go:build windows

package secret

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/windows"

	"github.com/smtpbridge/smtpbridge/internal/tempdir"
)

func setACL(t *testing.T, path, sddl string) {
	t.Helper()
	sd, err := windows.SecurityDescriptorFromString(sddl)
	if err != nil {
		t.Fatal(err)
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		t.Fatal(err)
	}
	if err := windows.SetNamedSecurityInfo(path, windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.PROTECTED_DACL_SECURITY_INFORMATION, nil, nil, dacl, nil); err != nil {
		t.Fatal(err)
	}
}

// A secret readable by SYSTEM and Administrators only is not exposed;
// one that Everyone or Users may read is, with the icacls that fixes it.
//
// Wine keeps no ACLs: it makes a file's from its Unix mode. Under Wine,
// tools/wine's test makes a 0600 file (no Everyone entry) and a 0644 one
// (Everyone may read) and names their directory in SECRET_ACL_DIR.
func TestExposedACL(t *testing.T) {
	if dir := os.Getenv("SECRET_ACL_DIR"); dir != "" {
		if exposed, fix := Exposed(filepath.Join(dir, "private.txt")); exposed {
			t.Errorf("a file for its owner only: exposed, fix %q", fix)
		}
		if exposed, fix := Exposed(filepath.Join(dir, "public.txt")); !exposed || !strings.Contains(fix, "icacls") {
			t.Errorf("a file Everyone may read: exposed %v, fix %q", exposed, fix)
		}
		return
	}
	path := filepath.Join(tempdir.New(t), "client secret.txt")
	if err := os.WriteFile(path, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	setACL(t, path, "D:P(A;;FA;;;SY)(A;;FA;;;BA)")
	if exposed, fix := Exposed(path); exposed {
		t.Errorf("SYSTEM and Administrators only: exposed, fix %q", fix)
	}
	for _, sddl := range []string{"D:P(A;;FA;;;SY)(A;;FR;;;WD)", "D:P(A;;FA;;;SY)(A;;GA;;;BU)"} {
		setACL(t, path, sddl)
		exposed, fix := Exposed(path)
		if !exposed || !strings.Contains(fix, "icacls") || !strings.Contains(fix, path) {
			t.Errorf("%s: exposed %v, fix %q", sddl, exposed, fix)
		}
	}
	setACL(t, path, "D:P(A;;FA;;;SY)(A;;FA;;;BA)") // so that the cleanup may remove it
}
