package config

import (
	"fmt"
	"runtime"
	"strings"
	"sync"

	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

// passwordPlaceholder starts the password_hash of the installed
// example's devices: the config is refused until each device has a
// password of its own.
const passwordPlaceholder = "REPLACE"

// DocumentedPasswords checks every device's password hash against the
// passwords the project documents (the sandbox's, which the README
// prints) and returns a problem for each device that has one; none in
// sandbox mode. Load refuses the hashes the project ships by their text;
// this finds any other hash of them, at one hash check per device (tens
// of milliseconds for argon2id), on every core. progress, if not nil, is
// told how many devices are checked so far, by one worker at a time.
func (c *Config) DocumentedPasswords(progress func(done, total int)) []Problem {
	if c.Sandbox.Dir != "" {
		return nil
	}
	type job struct {
		i int
		h passwd.Hash
	}
	var jobs []job
	for i, d := range c.Devices {
		if h := d.Parsed.PasswordHash; h != nil && !passwd.IsDocumentedHash(d.PasswordHash) {
			jobs = append(jobs, job{i, h})
		}
	}
	found := make([]bool, len(c.Devices))
	var (
		mu   sync.Mutex // progress is called by one worker at a time
		done int
		wg   sync.WaitGroup
	)
	next := make(chan job)
	for range min(runtime.GOMAXPROCS(0), max(len(jobs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				found[j.i] = passwd.VerifiesDocumented(j.h)
				mu.Lock()
				done++
				if progress != nil {
					progress(done, len(jobs))
				}
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	var out []Problem
	for i, bad := range found {
		if !bad {
			continue
		}
		key := fmt.Sprintf("devices[%d].password_hash", i)
		out = append(out, Problem{Key: key, Line: c.Line(key), Message: fmt.Sprintf(
			"device %s's password is the sandbox's, which the README prints (%s): anyone who read it could log in as the device; give it a password of its own with `smtpbridge hash-password`",
			c.Devices[i].Name, strings.Join(passwd.Documented(), ", "))})
	}
	return out
}
