package queue

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/smtpbridge/smtpbridge/internal/adminapi"
)

// Handler serves a Manager as the admin API on the bridge's http
// listener:
//
//	GET    /api/ping              is this a bridge's admin API
//	GET    /api/queue             queued messages
//	GET    /api/queue/{id}        one message, queued or dead
//	POST   /api/queue/{id}/retry  make it due now
//	POST   /api/queue/retry       make every queued message due now;
//	                              ?mailbox=M: those of mailbox M, lifting its hold
//	DELETE /api/queue/{id}        drop a message or dead letter
//	GET    /api/dead              dead letters
//	POST   /api/dead/{id}/requeue move a dead letter back into the queue
//
// The caller wraps it in adminapi.Protect: the queue holds envelope
// addresses, and its actions change what gets delivered.
func Handler(m Manager) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/ping", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]any{"ok": true}, nil)
	})
	mux.HandleFunc("GET /api/queue", func(w http.ResponseWriter, r *http.Request) {
		f, err := FilterOf(r.URL.Query())
		if err != nil {
			adminapi.WriteJSON(w, http.StatusBadRequest, apiError{err.Error()})
			return
		}
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		p, err := m.Select(f, r.URL.Query().Get("after"), limit)
		reply(w, p, err)
	})
	mux.HandleFunc("POST /api/queue/drop", func(w http.ResponseWriter, r *http.Request) {
		f, err := FilterOf(r.URL.Query())
		if err == nil && f.Empty() {
			err = errors.New("name what to drop: a device, mailbox, tenant, state or age")
		}
		if err != nil {
			adminapi.WriteJSON(w, http.StatusBadRequest, apiError{err.Error()})
			return
		}
		n, err := m.DropWhere(f)
		reply(w, map[string]any{"dropped": n}, err)
	})
	mux.HandleFunc("GET /api/dead", func(w http.ResponseWriter, r *http.Request) {
		items, err := m.Dead()
		reply(w, map[string]any{"messages": items}, err)
	})
	mux.HandleFunc("GET /api/queue/{id}", func(w http.ResponseWriter, r *http.Request) {
		it, err := m.Show(r.PathValue("id"))
		reply(w, it, err)
	})
	mux.HandleFunc("POST /api/queue/{id}/retry", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]any{"retried": 1}, m.Retry(r.PathValue("id")))
	})
	mux.HandleFunc("POST /api/queue/retry", func(w http.ResponseWriter, r *http.Request) {
		f, err := FilterOf(r.URL.Query())
		if err != nil {
			adminapi.WriteJSON(w, http.StatusBadRequest, apiError{err.Error()})
			return
		}
		var n int
		switch {
		case f.Empty():
			n, err = m.RetryAll()
		case f == Filter{Mailbox: f.Mailbox}:
			n, err = m.RetryMailbox(f.Mailbox)
		default:
			n, err = m.RetryWhere(f)
		}
		reply(w, map[string]any{"retried": n}, err)
	})
	mux.HandleFunc("DELETE /api/queue/{id}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]any{"dropped": 1}, m.Drop(r.PathValue("id")))
	})
	mux.HandleFunc("POST /api/dead/{id}/requeue", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]any{"requeued": 1}, m.Requeue(r.PathValue("id")))
	})
	return mux
}

type apiError struct {
	Error string `json:"error"`
}

func reply(w http.ResponseWriter, v any, err error) {
	switch {
	case err == nil:
		adminapi.WriteJSON(w, http.StatusOK, v)
	case errors.Is(err, ErrNotFound):
		adminapi.WriteJSON(w, http.StatusNotFound, apiError{err.Error()})
	case errors.Is(err, ErrBusy):
		adminapi.WriteJSON(w, http.StatusConflict, apiError{err.Error()})
	default:
		adminapi.WriteJSON(w, http.StatusInternalServerError, apiError{err.Error()})
	}
}

// Client is a Manager that talks to a running bridge's admin API.
type Client struct {
	adminapi.Client
}

// ErrUnreachable is returned when no bridge answers at the address.
var ErrUnreachable = adminapi.ErrUnreachable

var _ Manager = (*Client)(nil)

func (c *Client) do(method, path string, out any) error {
	err := c.Do(method, path, out)
	var se *adminapi.StatusError
	if errors.As(err, &se) {
		switch se.Code {
		case http.StatusNotFound:
			if !strings.HasSuffix(se.Message, "(is this an smtpbridge?)") {
				return fmt.Errorf("%w (%s)", ErrNotFound, se.Message)
			}
		case http.StatusConflict:
			return ErrBusy
		}
	}
	return err
}

type itemsReply struct {
	Messages []Item `json:"messages"`
}

// Ping checks that a bridge's admin API answers: ErrUnreachable if
// nothing listens there.
func (c *Client) Ping() error {
	var r map[string]any
	return c.do("GET", "/api/ping", &r)
}

// List implements Manager, a page at a time.
func (c *Client) List() ([]Item, error) {
	var all []Item
	after := ""
	for {
		p, err := c.Select(Filter{}, after, MaxPage)
		all = append(all, p.Items...)
		if err != nil || p.Next == "" {
			return all, err
		}
		after = p.Next
	}
}

// Select implements Manager.
func (c *Client) Select(f Filter, after string, limit int) (Page, error) {
	v := f.Values()
	if after != "" {
		v.Set("after", after)
	}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	var p Page
	err := c.do("GET", "/api/queue?"+v.Encode(), &p)
	return p, err
}

// RetryWhere implements Manager.
func (c *Client) RetryWhere(f Filter) (int, error) {
	var r struct {
		Retried int `json:"retried"`
	}
	err := c.do("POST", "/api/queue/retry?"+f.Values().Encode(), &r)
	return r.Retried, err
}

// DropWhere implements Manager.
func (c *Client) DropWhere(f Filter) (int, error) {
	var r struct {
		Dropped int `json:"dropped"`
	}
	err := c.do("POST", "/api/queue/drop?"+f.Values().Encode(), &r)
	return r.Dropped, err
}

// Dead implements Manager.
func (c *Client) Dead() ([]Item, error) {
	var r itemsReply
	err := c.do("GET", "/api/dead", &r)
	return r.Messages, err
}

// Show implements Manager.
func (c *Client) Show(id string) (Item, error) {
	var it Item
	err := c.do("GET", "/api/queue/"+pathID(id), &it)
	return it, err
}

// Retry implements Manager.
func (c *Client) Retry(id string) error {
	return c.do("POST", "/api/queue/"+pathID(id)+"/retry", &map[string]any{})
}

// RetryAll implements Manager.
func (c *Client) RetryAll() (int, error) {
	var r struct {
		Retried int `json:"retried"`
	}
	err := c.do("POST", "/api/queue/retry", &r)
	return r.Retried, err
}

// RetryMailbox implements Manager.
func (c *Client) RetryMailbox(mailbox string) (int, error) {
	var r struct {
		Retried int `json:"retried"`
	}
	err := c.do("POST", "/api/queue/retry?mailbox="+url.QueryEscape(mailbox), &r)
	return r.Retried, err
}

// Drop implements Manager.
func (c *Client) Drop(id string) error {
	return c.do("DELETE", "/api/queue/"+pathID(id), &map[string]any{})
}

// Requeue implements Manager.
func (c *Client) Requeue(id string) error {
	return c.do("POST", "/api/dead/"+pathID(id)+"/requeue", &map[string]any{})
}

// pathID keeps an ID from changing the request path; the spool refuses
// anything that is not a valid ID anyway.
func pathID(id string) string {
	return strings.NewReplacer("/", "_", "?", "_", "#", "_", "%", "_").Replace(id)
}
