package bridge

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"
)

// loginCache remembers the logins verified recently, so that a device
// that logs in again with the same credentials (an MFP logs in for every
// scan) costs a MAC instead of a password hash: argon2id's tens of
// milliseconds of CPU and megabytes of memory per login.
//
// It holds no password: only HMAC-SHA256(key, username, password) with a
// key drawn at start and never stored, so that a memory dump tells no
// more than the configured hashes do, and only in memory. An entry
// expires after loginCacheTTL, and holds only while the device's hash and
// networks are those it was verified against. A wrong password misses and
// pays the full hash, with every defence of a failed login.
type loginCache struct {
	key [32]byte

	mu      sync.Mutex
	entries map[string]loginEntry // by username
}

type loginEntry struct {
	mac [sha256.Size]byte
	// of is the device's login as verified: its hash and networks.
	of      string
	expires time.Time
}

// Bounds of the cache; tests shorten the TTL.
var (
	loginCacheTTL = time.Hour
	loginCacheMax = 10_000
)

func newLoginCache() *loginCache {
	c := &loginCache{entries: map[string]loginEntry{}}
	if _, err := rand.Read(c.key[:]); err != nil {
		panic("bridge: no randomness for the login cache's key: " + err.Error())
	}
	return c
}

func (c *loginCache) mac(username string, password []byte) [sha256.Size]byte {
	h := hmac.New(sha256.New, c.key[:])
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(username)))
	h.Write(n[:])
	h.Write([]byte(username))
	h.Write(password)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// verified says whether username logged in with password recently,
// against the login of.
func (c *loginCache) verified(username string, password []byte, of string, now time.Time) bool {
	c.mu.Lock()
	e, ok := c.entries[username]
	c.mu.Unlock()
	if !ok || e.of != of || !now.Before(e.expires) {
		return false
	}
	m := c.mac(username, password)
	return hmac.Equal(m[:], e.mac[:])
}

// add remembers a login just verified against of.
func (c *loginCache) add(username string, password []byte, of string, now time.Time) {
	e := loginEntry{mac: c.mac(username, password), of: of, expires: now.Add(loginCacheTTL)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[username]; !ok && len(c.entries) >= loginCacheMax {
		c.evict(now)
	}
	c.entries[username] = e
}

// evict makes room: the expired entries go, else the one nearest expiry;
// c.mu is held.
func (c *loginCache) evict(now time.Time) {
	var oldest string
	var first time.Time
	for u, e := range c.entries {
		if !now.Before(e.expires) {
			delete(c.entries, u)
			continue
		}
		if oldest == "" || e.expires.Before(first) {
			oldest, first = u, e.expires
		}
	}
	if len(c.entries) >= loginCacheMax {
		delete(c.entries, oldest)
	}
}

// retain keeps the entries whose login still holds: a reload drops those
// of devices removed, or whose hash or networks changed.
func (c *loginCache) retain(holds func(username, of string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for u, e := range c.entries {
		if !holds(u, e.of) {
			delete(c.entries, u)
		}
	}
}

// len counts the entries (tests).
func (c *loginCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
