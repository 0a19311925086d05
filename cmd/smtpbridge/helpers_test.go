package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// insertDevices adds device entries (YAML list items) to a config's
// devices list.
func insertDevices(t *testing.T, path, items string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(data), "\ndevices:\n", "\ndevices:\n"+items, 1)
	if s == string(data) {
		t.Fatal("no devices list in the config")
	}
	writeFile(t, path, s)
}

// httpGet returns the status and body of a GET.
func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// postAdmin POSTs u's path to the admin API with the token of the bridge
// whose spool.dir is spoolDir, on its admin socket, as the command line
// does.
func postAdmin(t *testing.T, u, spoolDir string) (int, string) {
	t.Helper()
	tok, err := adminapi.ReadToken(filepath.Join(spoolDir, adminapi.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	path, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(spoolDir, adminapi.SocketFile)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	req, _ := http.NewRequest("POST", "http://localhost"+path.RequestURI(), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// auditID returns the msg_id of the first audit line of the given event.
func auditID(t *testing.T, path, event string) string {
	t.Helper()
	for _, line := range strings.Split(testenv.ReadFile(t, path), "\n") {
		var e struct {
			Event string `json:"event"`
			MsgID string `json:"msg_id"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Event == event {
			return e.MsgID
		}
	}
	t.Fatalf("no %s event in the audit log", event)
	return ""
}

// get returns the body at url.
func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
