package bridge

import (
	"time"

	"github.com/emersion/go-sasl"
)

// A device's login: AUTH PLAIN or LOGIN (sasl.go), checked against the
// directory, within the guard's limits.

func (se *session) AuthMechanisms() []string { return []string{mechPlain, mechLogin} }

func (se *session) Auth(mech string) (sasl.Server, error) {
	se.mu.Lock()
	in := se.device != nil
	se.mu.Unlock()
	if in {
		return nil, errAuthAgain
	}
	login := func(username string, password []byte) error { return se.login(mech, username, password) }
	switch mech {
	case mechPlain:
		return &plainServer{login: login}, nil
	case mechLogin:
		return &loginServer{login: login}, nil
	}
	return nil, errAuthMechanism
}

// maxAuthFailures failed AUTHs close a session.
const maxAuthFailures = 3

// login checks a device's credentials. A failed AUTH takes at least the
// guard's minimum time, so that an unknown user and a wrong password take
// as long as each other, and each failure waits a little longer than the
// last; a blocked address gets 535 without a password check; the third
// failure closes the session. A success answers at once: its 235 tells
// the client anyway.
func (se *session) login(mech, username string, password []byte) error {
	g := se.srv.guard
	done := time.Now().Add(g.AuthDuration())
	failed := true
	defer func() {
		if failed {
			time.Sleep(time.Until(done))
		}
	}()

	if g.Blocked(se.remote) {
		se.srv.observer.AuthAttempt(se.listener, mech, "blocked", "", se.remote)
		se.connLog.Warn().Str("event", "auth_failed").Str("mechanism", mech).Str("result", "blocked").
			Msg("login from a blocked address refused without a password check")
		return se.authFailed()
	}
	dir := se.srv.Settings().Directory
	dev, result, err := dir.Authenticate(username, password, se.remote)
	if err != nil {
		// An unknown "username" may be a password typed in the wrong
		// field: no part of it is shown anywhere.
		shown := username
		if result == AuthUnknownUser {
			shown = ""
		}
		delay, block := g.AuthFailed(se.remote, username, shown)
		done = done.Add(delay)
		if block != nil {
			se.connLog.Warn().Str("event", "blocked").Str("addr", block.Addr).Int("failures", block.Failures).
				Time("until", block.Until).Msg("too many failed logins from this address; it is blocked")
		}
		name := ""
		if d := dir.Lookup(username); d != nil {
			name = d.Name
		}
		se.srv.observer.AuthAttempt(se.listener, mech, string(result), name, se.remote)
		ev := se.connLog.Warn().Str("event", "auth_failed").Str("mechanism", mech).Str("result", string(result))
		if result != AuthUnknownUser {
			ev = ev.Str("username", username)
		}
		if result == AuthDocumentedPassword {
			se.connLog.Error().Str("event", "auth_failed").Str("mechanism", mech).Str("result", string(result)).Str("device", name).
				Str("hint", "give the device a password of its own: smtpbridge hash-password, then its password_hash in the config and a reload").
				Msg("device login refused: its password is the sandbox's, which the README prints; outside sandbox mode no device may use it")
		} else {
			ev.Msg("device login failed")
		}
		return se.authFailed()
	}
	failed = false
	se.srv.observer.AuthAttempt(se.listener, mech, string(result), dev.Name, se.remote)
	se.mu.Lock()
	se.setDevice(dev)
	log := se.log
	se.mu.Unlock()
	log.Info().Str("event", "auth").Str("mechanism", mech).Msg("device logged in")
	return nil
}

// authFailed counts a failed AUTH on the connection: the third closes it,
// after its 535.
func (se *session) authFailed() error {
	if se.tc != nil && se.tc.authFailures.Add(1) >= maxAuthFailures {
		se.connLog.Info().Int("failures", maxAuthFailures).Msg("closing the connection after repeated failed logins")
		se.tc.closeAfter()
		return errAuthFailed
	}
	return se.refuse(errAuthFailed)
}
