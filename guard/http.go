package guard

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/adminapi"
)

// Handler serves the blocks as part of the admin API, to loopback clients
// only:
//
//	GET    /api/blocks         the addresses blocked now
//	DELETE /api/blocks/{addr}  lift a block
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
		if !g.Unblock(a) {
			adminapi.WriteJSON(w, http.StatusNotFound, map[string]string{"error": a.String() + " is not blocked"})
			return
		}
		adminapi.WriteJSON(w, http.StatusOK, map[string]string{"unblocked": a.String()})
	})
	return adminapi.LoopbackOnly(mux, "the admin API answers loopback clients only; run smtpbridge blocks on the bridge's host")
}

// Client talks to a running bridge's blocks API.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:9464
}

// ErrNotBlocked is returned by Unblock for an address not blocked.
var ErrNotBlocked = errors.New("not blocked")

func (c *Client) do(method, path string, out any) error {
	req, err := http.NewRequest(method, strings.TrimRight(c.BaseURL, "/")+path, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("no smtpbridge answers at %s (blocks live in the running bridge; is it running, and is http.address right?)", c.BaseURL)
		}
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.Unmarshal(body, &e)
		if resp.StatusCode == http.StatusNotFound && strings.Contains(e.Error, "not blocked") {
			return fmt.Errorf("%w: %s", ErrNotBlocked, e.Error)
		}
		return fmt.Errorf("admin API: %s: %s", resp.Status, e.Error)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin API: bad answer: %w", err)
	}
	return nil
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
