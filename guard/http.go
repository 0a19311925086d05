package guard

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/smtpbridge/smtpbridge/internal/adminapi"
)

// Handler serves the blocks as part of the admin API (the caller wraps it
// in adminapi.Protect):
//
//	GET    /api/blocks         the addresses blocked now
//	DELETE /api/blocks/{addr}  lift a block (everywhere, when replicas share them)
func Handler(g *Guard) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/blocks", func(w http.ResponseWriter, _ *http.Request) {
		blocks := g.Blocks()
		if blocks == nil {
			blocks = []Block{}
		}
		adminapi.WriteJSON(w, http.StatusOK, map[string]any{"blocks": blocks})
	})
	mux.HandleFunc("DELETE /api/blocks/{addr}", func(w http.ResponseWriter, r *http.Request) {
		a, err := netip.ParseAddr(r.PathValue("addr"))
		if err != nil {
			adminapi.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("%q is not an IP address", r.PathValue("addr"))})
			return
		}
		was, err := g.Unblock(a)
		if err != nil {
			adminapi.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"error": a.String() + ": " + err.Error()})
			return
		}
		if !was {
			adminapi.WriteJSON(w, http.StatusNotFound, map[string]string{"error": a.String() + " is not blocked"})
			return
		}
		adminapi.WriteJSON(w, http.StatusOK, map[string]string{"unblocked": a.String()})
	})
	return mux
}

// Client talks to a running bridge's blocks API.
type Client struct {
	adminapi.Client
}

// ErrNotBlocked is returned by Unblock for an address not blocked.
var ErrNotBlocked = errors.New("not blocked")

func (c *Client) do(method, path string, out any) error {
	err := c.Do(method, path, out)
	var se *adminapi.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound && strings.Contains(se.Message, "not blocked") {
		return fmt.Errorf("%w: %s", ErrNotBlocked, se.Message)
	}
	if errors.Is(err, adminapi.ErrUnreachable) {
		return fmt.Errorf("no smtpbridge answers at %s (blocks live in the running bridge; is it running with this spool.dir?)", c.Where())
	}
	return err
}

// Blocks lists the blocks in force.
func (c *Client) Blocks() ([]Block, error) {
	var r struct{ Blocks []Block }
	err := c.do("GET", "/api/blocks", &r)
	return r.Blocks, err
}

// Unblock lifts the block on a.
func (c *Client) Unblock(a netip.Addr) error {
	var r map[string]string
	return c.do("DELETE", "/api/blocks/"+a.String(), &r)
}
