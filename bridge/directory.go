package bridge

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

// AuthResult says why a login failed, for logs and metrics. The device
// itself always gets the same 535 reply, so that it learns nothing about
// which usernames exist or where they may log in from.
type AuthResult string

// Login outcomes.
const (
	AuthSuccess        AuthResult = "success"
	AuthBadCredentials AuthResult = "bad_credentials"
	AuthUnknownUser    AuthResult = "unknown_user"
	AuthNetworkDenied  AuthResult = "network_denied"
	// AuthDocumentedPassword: the right password, but one the project
	// documents (the sandbox's), which anyone may know.
	AuthDocumentedPassword AuthResult = "documented_password"
)

// ErrLoginFailed is returned by Authenticate for any failed login.
var ErrLoginFailed = errors.New("login failed")

// Directory finds devices by username or source address and checks their
// passwords.
type Directory struct {
	byUser map[string]*inventory.Device
	// byNet are the devices without AUTH, most specific network first.
	byNet []netDevice
	// dummy is verified for an unknown username, so that it costs as much
	// as a wrong password for a known one.
	dummy passwd.Hash
	// hashing bounds concurrent password checks to the cores: each
	// argon2id check holds its memory cost until done, and more at once
	// than there are cores would only take longer each.
	hashing chan struct{}
	// logins are the logins verified recently; a reload passes them on.
	logins *loginCache
	// documentedOK lets devices log in with a documented password
	// (sandbox mode only).
	documentedOK bool
}

type netDevice struct {
	prefix netip.Prefix
	dev    *inventory.Device
}

// NewDirectory indexes the devices. Every device with a Username needs a
// PasswordHash; every one without needs Networks.
func NewDirectory(devices []inventory.Device) (*Directory, error) {
	d := &Directory{byUser: map[string]*inventory.Device{}, hashing: make(chan struct{}, runtime.GOMAXPROCS(0)),
		logins: newLoginCache()}
	costs := map[string]int{}
	var common passwd.Hash
	for i := range devices {
		dev := &devices[i]
		if dev.Unauthenticated {
			if len(dev.Networks) == 0 {
				return nil, fmt.Errorf("device %s: a device without AUTH needs networks", dev.Name)
			}
			for _, p := range dev.Networks {
				d.byNet = append(d.byNet, netDevice{p, dev})
			}
			continue
		}
		if dev.Username == "" || dev.PasswordHash == nil {
			return nil, fmt.Errorf("device %s: a device with AUTH needs a username and a password hash", dev.Name)
		}
		d.byUser[dev.Username] = dev
		costs[dev.PasswordHash.Cost()]++
		if common == nil || costs[dev.PasswordHash.Cost()] > costs[common.Cost()] {
			common = dev.PasswordHash
		}
	}
	slices.SortStableFunc(d.byNet, func(a, b netDevice) int { return b.prefix.Bits() - a.prefix.Bits() })
	if common == nil {
		enc, err := passwd.NewArgon2id([]byte("no devices"))
		if err != nil {
			return nil, err
		}
		if common, err = passwd.Parse(enc); err != nil {
			return nil, err
		}
	}
	dummy, err := passwd.Dummy(common)
	if err != nil {
		return nil, fmt.Errorf("dummy password hash: %w", err)
	}
	d.dummy = dummy
	return d, nil
}

// AllowDocumentedPasswords lets devices log in with a password the
// project documents (the sandbox's): for sandbox mode, where no real
// mailbox is behind them.
func (d *Directory) AllowDocumentedPasswords() { d.documentedOK = true }

// Inherit takes over what old, the directory a reload replaces, learnt:
// its recent logins, less those of devices removed or whose password or
// networks changed, and its bound on password checks in flight.
func (d *Directory) Inherit(old *Directory) {
	if old == nil || old == d {
		return
	}
	d.hashing, d.logins = old.hashing, old.logins
	d.logins.retain(func(username, of string) bool {
		dev := d.byUser[username]
		return dev != nil && loginOf(dev) == of
	})
}

// Authenticate checks username and password for a connection from remote.
// An unknown username costs one hash verification, like a known one; a
// login verified recently with the same password costs a MAC.
func (d *Directory) Authenticate(username string, password []byte, remote netip.Addr) (*inventory.Device, AuthResult, error) {
	dev, known := d.byUser[username]
	now := time.Now()
	if !known {
		d.verify(d.dummy, password)
		return nil, AuthUnknownUser, ErrLoginFailed
	}
	if !d.logins.verified(username, password, loginOf(dev), now) {
		if !d.verify(dev.PasswordHash, password) {
			return nil, AuthBadCredentials, ErrLoginFailed
		}
		d.logins.add(username, password, loginOf(dev), now)
	}
	// The network is checked after the password so that the answer's
	// timing does not tell a valid username from an allowed network.
	if !dev.AllowedFromNetwork(remote) {
		return nil, AuthNetworkDenied, ErrLoginFailed
	}
	// A hash made of a documented password by another tool than the
	// bridge's is found here, where the password is at hand, at no cost.
	if !d.documentedOK && passwd.IsDocumented(password) {
		return nil, AuthDocumentedPassword, ErrLoginFailed
	}
	return dev, AuthSuccess, nil
}

// verify checks a password against a hash, no more of them at once than
// there are cores. An argon2id check allocates its whole memory cost
// (7 MiB by default) and drops it when done; the memory goes back to the
// system at once, so that a burst of logins holds about the checks in
// flight instead of what the collector's pacing and the heap's
// fragmentation let pile up (50 first logins at once: 48 MiB peak RSS
// instead of 57-64). It costs a collection of a small heap, a millisecond
// or two against the check's tens, and only for logins the cache did not
// answer.
func (d *Directory) verify(h passwd.Hash, password []byte) bool {
	d.hashing <- struct{}{}
	ok := h.Verify(password)
	<-d.hashing
	if strings.HasPrefix(h.Cost(), "argon2id") {
		debug.FreeOSMemory()
	}
	return ok
}

// ByAddress returns the device without AUTH whose networks hold remote
// most specifically, or nil.
func (d *Directory) ByAddress(remote netip.Addr) *inventory.Device {
	remote = remote.Unmap()
	for _, nd := range d.byNet {
		if nd.prefix.Contains(remote) {
			return nd.dev
		}
	}
	return nil
}

// Lookup returns the device with the given username, or nil.
func (d *Directory) Lookup(username string) *inventory.Device { return d.byUser[username] }

// current returns the device as the directory has it now for a login made
// against dev, from remote: nil when the login no longer holds (a reload
// removed the device, changed its password or its networks).
func (d *Directory) current(dev *inventory.Device, remote netip.Addr) *inventory.Device {
	now := d.Lookup(dev.Username)
	if dev.Unauthenticated {
		now = d.ByAddress(remote)
	}
	if now == nil || !sameLogin(now, dev) || !now.AllowedFromNetwork(remote) {
		return nil
	}
	return now
}

// sameLogin says whether other is the same device with the same password,
// so that a login made against it still holds.
func sameLogin(dev, other *inventory.Device) bool {
	return dev.Name == other.Name && dev.Username == other.Username && dev.Unauthenticated == other.Unauthenticated &&
		(dev.PasswordHash == nil) == (other.PasswordHash == nil) &&
		(dev.PasswordHash == nil || dev.PasswordHash.String() == other.PasswordHash.String())
}

// login identifies what a login is verified against: the device's
// password hash and networks.
func loginOf(dev *inventory.Device) string {
	var b strings.Builder
	b.WriteString(dev.Name)
	b.WriteByte(0)
	b.WriteString(dev.PasswordHash.String())
	for _, p := range dev.Networks {
		b.WriteByte(0)
		b.WriteString(p.String())
	}
	return b.String()
}
