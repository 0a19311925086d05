package bridge

import (
	"bytes"

	"github.com/emersion/go-sasl"
)

// SASL mechanisms offered to devices.
const (
	mechPlain = "PLAIN"
	mechLogin = "LOGIN"
)

// loginFunc checks a username and password. It returns nil on success or
// an *smtp.SMTPError for the device. It must not keep password.
type loginFunc func(username string, password []byte) error

// plainServer is RFC 4616 PLAIN: one message "authzid NUL authcid NUL
// passwd", either as the initial response or after an empty 334.
type plainServer struct {
	login loginFunc
	asked bool
}

func (s *plainServer) Next(response []byte) ([]byte, bool, error) {
	if response == nil {
		if s.asked {
			return nil, true, errAuthMalformed
		}
		s.asked = true
		return []byte{}, false, nil
	}
	defer clear(response)
	parts := bytes.Split(response, []byte{0})
	if len(parts) != 3 {
		return nil, true, errAuthMalformed
	}
	authzid, authcid, password := parts[0], parts[1], parts[2]
	if len(authcid) == 0 {
		return nil, true, errAuthMalformed
	}
	// A device may only act as itself (RFC 4616 section 2: the server
	// decides whether authcid may act as authzid).
	if len(authzid) > 0 && !bytes.Equal(authzid, authcid) {
		return nil, true, errAuthFailed
	}
	return nil, true, s.login(string(authcid), password)
}

// loginServer is the LOGIN mechanism (draft-murchison-sasl-login): the
// server asks "Username:" then "Password:", each answered in base64. Many
// devices send the username on the AUTH line ("AUTH LOGIN dXNlcg=="), and
// then only the password is asked for. go-sasl dropped its LOGIN server, so
// this is ours.
type loginServer struct {
	login    loginFunc
	username []byte
	state    int // 0: nothing yet, 1: asked for username, 2: asked for password
}

var (
	challengeUsername = []byte("Username:")
	challengePassword = []byte("Password:")
)

func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.state {
	case 0:
		if response == nil {
			s.state = 1
			return challengeUsername, false, nil
		}
		// Initial response: the username.
		fallthrough
	case 1:
		if len(response) == 0 {
			return nil, true, errAuthMalformed
		}
		s.username = bytes.Clone(response)
		s.state = 2
		return challengePassword, false, nil
	case 2:
		defer clear(response)
		return nil, true, s.login(string(s.username), response)
	}
	return nil, true, errAuthMalformed
}

var (
	_ sasl.Server = (*plainServer)(nil)
	_ sasl.Server = (*loginServer)(nil)
)
