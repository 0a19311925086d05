//go:build windows

package secret

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/windows"
)

// broad are the groups a secret must not be readable by: every user of
// the machine or the domain, and guests.
var broad = []windows.WELL_KNOWN_SID_TYPE{
	windows.WinWorldSid,             // Everyone
	windows.WinBuiltinUsersSid,      // BUILTIN\Users
	windows.WinAuthenticatedUserSid, // Authenticated Users
	windows.WinBuiltinGuestsSid,     // BUILTIN\Guests
	windows.WinAnonymousSid,         // ANONYMOUS LOGON
	windows.WinInteractiveSid,       // INTERACTIVE
}

// readRights are the access rights that let a holder read a file's data.
const readRights = windows.FILE_READ_DATA | windows.GENERIC_READ | windows.GENERIC_ALL

// Exposed says whether the file's ACL lets a broad group (Everyone,
// Users, Authenticated Users, Guests) read it, and how to fix it, for
// the warnings about files holding secrets: the service account and
// Administrators should be the only readers. A file whose ACL cannot be
// read is not reported.
func Exposed(path string) (exposed bool, fix string) {
	sd, err := windows.GetNamedSecurityInfo(path, windows.SE_FILE_OBJECT, windows.DACL_SECURITY_INFORMATION)
	if err != nil {
		return false, ""
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		return false, ""
	}
	if dacl == nil {
		// No DACL at all: everyone has every right.
		return true, fixACL(path)
	}
	for i := uint32(0); i < uint32(dacl.AceCount); i++ {
		var ace *windows.ACCESS_ALLOWED_ACE
		if err := windows.GetAce(dacl, i, &ace); err != nil || ace.Header.AceType != windows.ACCESS_ALLOWED_ACE_TYPE {
			continue
		}
		if ace.Mask&readRights == 0 {
			continue
		}
		sid := (*windows.SID)(unsafe.Pointer(&ace.SidStart))
		for _, k := range broad {
			if sid.IsWellKnown(k) {
				return true, fixACL(path)
			}
		}
	}
	return false, ""
}

func fixACL(path string) string {
	return fmt.Sprintf(`icacls "%s" /inheritance:r /grant:r SYSTEM:F Administrators:F`, path)
}
