//go:build !unix

package privdrop

// ToOwnerOf does nothing where a process has no Unix user to change:
// on Windows, files inherit their directory's ACL, and no link can be
// put in the service's directory by its user without the privilege to
// make symbolic links.
func ToOwnerOf(string) (User, error) { return User{}, nil }
