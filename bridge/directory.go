package bridge

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

// Device is a configured device, compiled for the session's checks.
type Device struct {
	Name     string
	Username string
	Tenant   string
	// Mailbox is the mailbox the device sends as: the XOAUTH2 user.
	Mailbox           mailaddr.Address
	FromPolicy        string
	AllowedFrom       mailaddr.Patterns
	AllowedRecipients mailaddr.Patterns // empty: any
	Networks          []netip.Prefix    // empty: any
	// Mode is the device's delivery mode override; "" takes the server's.
	Mode string
	// Unauthenticated devices (auth: none) are recognised by their source
	// address among Networks, on listeners that allow it.
	Unauthenticated bool
	// MaxPerHour bounds the messages the device may send in any hour; 0
	// for no bound.
	MaxPerHour int

	hash passwd.Hash
	// hashEnc is the configured password_hash, to tell whether a reload
	// changed the password.
	hashEnc string
}

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
)

// ErrLoginFailed is returned by Authenticate for any failed login.
var ErrLoginFailed = errors.New("login failed")

// Directory finds devices by username and checks their passwords.
type Directory struct {
	byUser map[string]*Device
	// byNet are the devices without AUTH, most specific network first.
	byNet []netDevice
	// dummy is verified for an unknown username, so that it costs as much
	// as a wrong password for a known one.
	dummy passwd.Hash
	// hashing bounds concurrent password checks: each argon2id check holds
	// its memory cost (19 MiB by default) until done.
	hashing chan struct{}
}

type netDevice struct {
	prefix netip.Prefix
	dev    *Device
}

// maxConcurrentHashes bounds password checks in flight.
const maxConcurrentHashes = 8

// NewDirectory compiles the configured devices. The config is expected to
// be valid (config.Load checked it); errors here name the device anyway.
func NewDirectory(devices []config.Device) (*Directory, error) {
	d := &Directory{byUser: map[string]*Device{}, hashing: make(chan struct{}, maxConcurrentHashes)}
	costs := map[string]int{}
	var common passwd.Hash
	for _, cd := range devices {
		dev, err := compileDevice(cd)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", cd.Name, err)
		}
		if dev.Unauthenticated {
			for _, p := range dev.Networks {
				d.byNet = append(d.byNet, netDevice{p, dev})
			}
			continue
		}
		d.byUser[dev.Username] = dev
		costs[dev.hash.Cost()]++
		if common == nil || costs[dev.hash.Cost()] > costs[common.Cost()] {
			common = dev.hash
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

func compileDevice(cd config.Device) (*Device, error) {
	mbox, err := mailaddr.Parse(cd.Mailbox)
	if err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	var h passwd.Hash
	unauthenticated := cd.Auth == config.AuthNone
	if !unauthenticated {
		if h, err = passwd.Parse(cd.PasswordHash); err != nil {
			return nil, fmt.Errorf("password_hash: %w", err)
		}
	} else if len(cd.Networks) == 0 {
		return nil, errors.New("auth: none needs networks")
	}
	from, err := mailaddr.ParsePatterns(cd.AllowedFrom)
	if err != nil {
		return nil, fmt.Errorf("allowed_from: %w", err)
	}
	rcpts, err := mailaddr.ParsePatterns(cd.AllowedRecipients)
	if err != nil {
		return nil, fmt.Errorf("allowed_recipients: %w", err)
	}
	dev := &Device{
		Name: cd.Name, Username: cd.Username, Tenant: cd.Tenant, Mailbox: mbox,
		FromPolicy: cd.FromPolicy, AllowedFrom: from, AllowedRecipients: rcpts,
		Mode: cd.Delivery.Mode, hash: h, hashEnc: cd.PasswordHash,
		Unauthenticated: unauthenticated, MaxPerHour: cd.MaxMessagesPerHour,
	}
	for _, n := range cd.Networks {
		p, err := config.ParseNetwork(n)
		if err != nil {
			return nil, fmt.Errorf("networks: %w", err)
		}
		dev.Networks = append(dev.Networks, p)
	}
	return dev, nil
}

// Authenticate checks username and password for a connection from remote.
// An unknown username costs one hash verification, like a known one.
func (d *Directory) Authenticate(username string, password []byte, remote netip.Addr) (*Device, AuthResult, error) {
	d.hashing <- struct{}{}
	defer func() { <-d.hashing }()

	dev, known := d.byUser[username]
	if !known {
		d.dummy.Verify(password)
		return nil, AuthUnknownUser, ErrLoginFailed
	}
	if !dev.hash.Verify(password) {
		return nil, AuthBadCredentials, ErrLoginFailed
	}
	// The network is checked after the password so that the answer's
	// timing does not tell a valid username from an allowed network.
	if !dev.allowedFrom(remote) {
		return nil, AuthNetworkDenied, ErrLoginFailed
	}
	return dev, AuthSuccess, nil
}

// ByAddress returns the device without AUTH whose networks hold remote
// most specifically, or nil.
func (d *Directory) ByAddress(remote netip.Addr) *Device {
	remote = remote.Unmap()
	for _, nd := range d.byNet {
		if nd.prefix.Contains(remote) {
			return nd.dev
		}
	}
	return nil
}

// Device returns the device with the given name, or nil.
func (d *Directory) Device(name string) *Device {
	for _, dev := range d.byUser {
		if dev.Name == name {
			return dev
		}
	}
	for _, nd := range d.byNet {
		if nd.dev.Name == name {
			return nd.dev
		}
	}
	return nil
}

// Lookup returns the device with the given username, or nil.
func (d *Directory) Lookup(username string) *Device { return d.byUser[username] }

// sameLogin says whether other is the same device with the same password,
// so that a login made against it still holds.
func (dev *Device) sameLogin(other *Device) bool {
	return dev.Name == other.Name && dev.Username == other.Username && dev.hashEnc == other.hashEnc &&
		dev.Unauthenticated == other.Unauthenticated
}

func (dev *Device) allowedFrom(remote netip.Addr) bool {
	if len(dev.Networks) == 0 {
		return true
	}
	remote = remote.Unmap()
	for _, p := range dev.Networks {
		if p.Contains(remote) {
			return true
		}
	}
	return false
}
