package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

// Client calls a running bridge's admin API: on its Unix socket (Socket),
// or, where the bridge serves it there too (http.admin_over_tcp), on its
// http listener (BaseURL).
type Client struct {
	// Socket is the bridge's admin socket (spool.dir/admin.sock); when
	// set, BaseURL is not dialled.
	Socket  string
	BaseURL string // e.g. http://127.0.0.1:9464
	Token   string // the bridge's admin token
	// OwnerUID is the bridge's user (the owner of its admin token file):
	// over TCP the token goes only to a listener of that user's, checked
	// on each connection (PeerUID). -1: no token is sent over TCP.
	OwnerUID int
	HTTP     *http.Client
}

// Where names what the client calls, for messages.
func (c *Client) Where() string {
	if c.Socket != "" {
		return c.Socket
	}
	return c.BaseURL
}

// ErrNotOwner is a TCP listener that is not the bridge's user's: the
// token is not sent to it.
var ErrNotOwner = errors.New("the program listening there is not the bridge's user's; the admin token was not sent")

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	switch {
	case c.Socket != "":
		tr.DialContext = dialSocket(c.Socket)
	case c.Token != "":
		// The token goes only to the bridge: the listener must be its
		// user's, checked on the connection itself.
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			uid, err := PeerUID(conn)
			if err == nil && (c.OwnerUID < 0 || uid != c.OwnerUID) {
				err = fmt.Errorf("%s is held by user %d, not the bridge's user %d: %w", addr, uid, c.OwnerUID, ErrNotOwner)
			}
			if err != nil {
				conn.Close()
				return nil, &checkError{err}
			}
			return conn, nil
		}
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: tr}
}

// checkError is a connection refused by the client's own check of its
// peer, not by the network.
type checkError struct{ err error }

func (e *checkError) Error() string { return e.err.Error() }
func (e *checkError) Unwrap() error { return e.err }

// ErrUnreachable is returned when no bridge answers at the address.
var ErrUnreachable = errors.New("no smtpbridge answers there")

// StatusError is an answer other than 200, with the API's error message.
type StatusError struct {
	Code    int
	Status  string
	Message string // the API's "error", if it sent one
	Body    []byte // the whole answer
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return "admin API: " + e.Status
	}
	return "admin API: " + e.Status + ": " + e.Message
}

// maxAnswer bounds an answer's size (a long queue listing included).
const maxAnswer = 64 << 20

// Do sends a request and decodes the JSON answer into out.
func (c *Client) Do(method, path string, out any) error {
	hc := c.httpClient()
	base := c.BaseURL
	if c.Socket != "" {
		base = "http://localhost"
	}
	req, err := http.NewRequest(method, strings.TrimRight(base, "/")+path, nil)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		var op *net.OpError
		var ce *checkError
		switch {
		case errors.As(err, &ce):
			return fmt.Errorf("admin API: %w", ce.err)
		case errors.Is(err, ErrUnreachable):
			return fmt.Errorf("%s: %w", c.Where(), ErrUnreachable)
		case errors.As(err, &op) && op.Op == "dial" && c.Socket == "":
			return fmt.Errorf("%s: %w", c.BaseURL, ErrUnreachable)
		}
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(body, &e)
		if e.Error == "" && resp.StatusCode == http.StatusNotFound {
			e.Error = path + " not found (is this an smtpbridge?)"
		}
		return &StatusError{Code: resp.StatusCode, Status: resp.Status, Message: e.Error, Body: body}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin API: bad answer: %w", err)
	}
	return nil
}

// Target is where a command reaches the running bridge's admin API, with
// the token it sends.
type Target struct {
	Client Client
	// tokenErr is why there is no token, for a bridge that asks for one.
	tokenErr error
}

// Resolve finds the bridge's admin API and its token: the admin socket
// in spoolDir, where only the bridge's user (and root) can connect; or,
// with adminURL, a TCP address, where the token goes only to a listener
// of the user who owns the token file. The token is read from tokenFile,
// or the spool directory's; a token that cannot be read is no error until
// the bridge asks for one (Explain).
func Resolve(spoolDir, adminURL, tokenFile string) *Target {
	t := &Target{Client: Client{OwnerUID: -1}}
	if adminURL != "" {
		t.Client.BaseURL = adminURL
	} else {
		t.Client.Socket = filepath.Join(spoolDir, SocketFile)
	}
	if tokenFile == "" && spoolDir != "" {
		tokenFile = filepath.Join(spoolDir, TokenFile)
	}
	if tokenFile == "" {
		t.tokenErr = errors.New("no admin token: pass --token-file FILE (admin.token in the bridge's spool.dir) or --config")
		return t
	}
	tok, err := ReadToken(tokenFile)
	switch {
	case err == nil:
		t.Client.Token = tok
		t.Client.OwnerUID = FileOwner(tokenFile)
	case errors.Is(err, fs.ErrPermission):
		t.tokenErr = fmt.Errorf("%w; run the command as the bridge's user (or root)", err)
	case errors.Is(err, fs.ErrNotExist):
		t.tokenErr = fmt.Errorf("%w; the bridge writes it at start: is it running with this spool.dir?", err)
	default:
		t.tokenErr = err
	}
	return t
}

// Explain turns a refusal for want of a token into the reason there is
// none.
func (t *Target) Explain(err error) error {
	var se *StatusError
	if t.tokenErr != nil && errors.As(err, &se) && se.Code == 401 {
		return fmt.Errorf("the bridge at %s refused the request: %w", t.Client.Where(), t.tokenErr)
	}
	return err
}
