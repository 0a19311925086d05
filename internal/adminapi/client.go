package adminapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Client calls a running bridge's admin API.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:9464
	Token   string // the bridge's admin token
	HTTP    *http.Client
}

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
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	req, err := http.NewRequest(method, strings.TrimRight(c.BaseURL, "/")+path, nil)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
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
