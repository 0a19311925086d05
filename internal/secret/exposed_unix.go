//go:build !windows

package secret

import (
	"fmt"
	"os"
)

// Exposed says whether users other than the file's owner, its group
// and root can read the file at path, and how to fix it, for the
// warnings about files holding secrets. An unreadable file is not
// exposed.
func Exposed(path string) (exposed bool, fix string) {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o004 == 0 {
		return false, ""
	}
	return true, fmt.Sprintf("chmod o-r %s", path)
}
