// Package privdrop lets a command an admin runs as root (sudo smtpbridge
// tenant login; smtpbridge queue on a stopped bridge's spool) do its file
// work as the bridge's own user, the owner of the directory it works in.
//
// Root writing into a directory another user owns is the classic way to
// lose a machine: that user can swap a name for a symbolic link between
// root's create and its chown or open, and root then changes /etc/shadow.
// Dropping to the directory's owner before any file work removes the
// whole class: the process can do no more than that user could anyway,
// and what it writes is that user's from the start.
package privdrop

// User is who the process became; the zero value means it did not
// change.
type User struct {
	UID, GID int
}

// Changed says whether the process changed user.
func (u User) Changed() bool { return u != User{} }
