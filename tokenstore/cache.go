package tokenstore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/cache"

	"github.com/smtpbridge/smtpbridge/internal/durable"
)

// Cache keeps MSAL's token caches on disk, encrypted with AES-256-GCM,
// so that a restart does not need a new grant. Without a key nothing is
// written.
type Cache struct {
	Dir string
	Key []byte // 32 bytes
}

// fileCache is one MSAL client's cache file: Replace reads it before
// MSAL looks in its cache, Export writes it after MSAL changed it.
type fileCache struct {
	path string
	aead cipher.AEAD
	mu   sync.Mutex
}

var _ cache.ExportReplace = (*fileCache)(nil)

// newFileCache returns the cache of tenant t's client in c.Dir: one file
// per tenant, app, authority and scope, named by their hash; for a
// delegated tenant one per mailbox, whatever the scope, so that the SMTP
// and Graph transports share the mailbox's refresh token.
func newFileCache(c *Cache, t Tenant, mailbox string) (*fileCache, error) {
	if c == nil || len(c.Key) == 0 {
		return nil, nil
	}
	if len(c.Key) != 32 {
		return nil, fmt.Errorf("token cache: the key is %d bytes, want 32", len(c.Key))
	}
	block, err := aes.NewCipher(c.Key)
	if err != nil {
		return nil, fmt.Errorf("token cache: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("token cache: %w", err)
	}
	// Made by root (sudo smtpbridge tenant login before the bridge ever
	// ran): the service's user, who owns the spool, must own it. Root
	// must also not write a refresh token where someone else could read
	// or redirect it: not through a link, not in another user's directory.
	if err := durable.MkdirLikeParent(c.Dir); err != nil {
		return nil, fmt.Errorf("token cache: %w", err)
	}
	if err := durable.CheckDir(c.Dir); err != nil {
		return nil, fmt.Errorf("token cache: token_cache.dir: %w", err)
	}
	key := t.Name + "\x00" + t.TenantID + "\x00" + t.ClientID + "\x00" + t.AuthorityHost + "\x00" + t.Scope
	if t.Credential.Delegated() {
		key = t.Name + "\x00" + t.TenantID + "\x00" + t.ClientID + "\x00" + t.AuthorityHost + "\x00delegated\x00" + strings.ToLower(mailbox)
	}
	id := sha256.Sum256([]byte(key))
	return &fileCache{path: filepath.Join(c.Dir, hex.EncodeToString(id[:12])+".cache"), aead: aead}, nil
}

// Replace implements cache.ExportReplace.
func (f *fileCache) Replace(_ context.Context, u cache.Unmarshaler, _ cache.ReplaceHints) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := f.read()
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("token cache: %w", err)
	}
	n := f.aead.NonceSize()
	if len(data) < n {
		return nil // not ours: start afresh, the next Export replaces it
	}
	plain, err := f.aead.Open(nil, data[:n], data[n:], []byte(f.path))
	if err != nil {
		// Another key, or a damaged file: a new grant, then a new file.
		return nil
	}
	return u.Unmarshal(plain)
}

// Export implements cache.ExportReplace.
func (f *fileCache) Export(_ context.Context, m cache.Marshaler, _ cache.ExportHints) error {
	plain, err := m.Marshal()
	if err != nil {
		return fmt.Errorf("token cache: %w", err)
	}
	nonce := make([]byte, f.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("token cache: %w", err)
	}
	sealed := f.aead.Seal(nonce, nonce, plain, []byte(f.path))
	f.mu.Lock()
	defer f.mu.Unlock()
	// Written as root (sudo smtpbridge tenant login), the file is given
	// to the directory's owner, the service's user, through its
	// descriptor: never by name, which that user could have swapped for
	// a link. And its directory is flushed: a power cut must not lose a
	// delegated mailbox's refresh token.
	if err := durable.WriteFile(f.path, sealed, 0o600); err != nil {
		return fmt.Errorf("token cache: %w", err)
	}
	return nil
}

// read reads the cache file, never through a symbolic link, and at most
// maxCacheFile bytes.
func (f *fileCache) read() ([]byte, error) {
	file, err := durable.OpenNoFollow(f.path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxCacheFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxCacheFile {
		return nil, fmt.Errorf("%s is over %d bytes: not a token cache", f.path, maxCacheFile)
	}
	return data, nil
}

// maxCacheFile bounds a cache file: one client's tokens, a few KB each.
const maxCacheFile = 16 << 20

// modTime is when the file was last written; zero when it does not
// exist.
func (f *fileCache) modTime() time.Time {
	fi, err := os.Stat(f.path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

func (c *Cache) equal(o *Cache) bool {
	if c == nil || o == nil {
		return c == o
	}
	return c.Dir == o.Dir && string(c.Key) == string(o.Key)
}
