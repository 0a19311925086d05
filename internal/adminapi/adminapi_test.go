package adminapi

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestProtect(t *testing.T) {
	h := Protect(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("done")) }),
		Policy{Token: token, AllowedHosts: []string{"Bridge.Internal."}})
	ok := func(r *http.Request) {}
	for _, c := range []struct {
		name   string
		remote string
		host   string
		set    func(r *http.Request)
		auth   string
		want   int
	}{
		{"loopback with the token", "127.0.0.1:5555", "127.0.0.1:9464", ok, "Bearer " + token, 200},
		{"IPv6 loopback", "[::1]:5555", "[::1]:9464", ok, "Bearer " + token, 200},
		{"mapped loopback", "[::ffff:127.0.0.1]:80", "localhost:9464", ok, "Bearer " + token, 200},
		{"another loopback address", "127.0.0.6:80", "127.0.0.1", ok, "Bearer " + token, 200},
		{"an allowed name", "127.0.0.1:5555", "bridge.internal:9464", ok, "Bearer " + token, 200},
		{"a same-origin browser request", "127.0.0.1:5555", "127.0.0.1:9464", func(r *http.Request) {
			r.Header.Set("Origin", "http://127.0.0.1:9464")
			r.Header.Set("Sec-Fetch-Site", "same-origin")
		}, "Bearer " + token, 200},

		{"no token", "127.0.0.1:5555", "127.0.0.1:9464", ok, "", 401},
		{"a wrong token", "127.0.0.1:5555", "127.0.0.1:9464", ok, "Bearer " + strings.Repeat("0", 64), 401},
		{"the token without Bearer", "127.0.0.1:5555", "127.0.0.1:9464", ok, token, 401},
		{"basic auth", "127.0.0.1:5555", "127.0.0.1:9464", ok, "Basic YWRtaW46YWRtaW4=", 401},

		{"another host", "10.0.0.7:5555", "127.0.0.1:9464", ok, "Bearer " + token, 403},
		{"IPv6 elsewhere", "[2001:db8::1]:5555", "[::1]:9464", ok, "Bearer " + token, 403},
		{"garbage peer", "garbage", "127.0.0.1", ok, "Bearer " + token, 403},
		{"DNS rebinding", "127.0.0.1:5555", "rebind.example:9464", ok, "Bearer " + token, 403},
		{"a non-loopback Host literal", "127.0.0.1:5555", "192.168.1.20:9464", ok, "Bearer " + token, 403},
		{"empty Host", "127.0.0.1:5555", "", ok, "Bearer " + token, 403},
		{"a subdomain of an allowed name", "127.0.0.1:5555", "x.bridge.internal", ok, "Bearer " + token, 403},
		{"a localhost look-alike", "127.0.0.1:5555", "localhost.evil.example", ok, "Bearer " + token, 403},
		{"a cross-site Origin", "127.0.0.1:5555", "127.0.0.1:9464", func(r *http.Request) {
			r.Header.Set("Origin", "http://evil.example")
		}, "Bearer " + token, 403},
		{"Origin null", "127.0.0.1:5555", "127.0.0.1:9464", func(r *http.Request) {
			r.Header.Set("Origin", "null")
		}, "Bearer " + token, 403},
		{"another port's origin", "127.0.0.1:5555", "127.0.0.1:9464", func(r *http.Request) {
			r.Header.Set("Origin", "http://127.0.0.1:8080")
		}, "Bearer " + token, 403},
		{"Sec-Fetch-Site cross-site", "127.0.0.1:5555", "127.0.0.1:9464", func(r *http.Request) {
			r.Header.Set("Sec-Fetch-Site", "cross-site")
		}, "Bearer " + token, 403},
		{"Sec-Fetch-Site same-site", "127.0.0.1:5555", "127.0.0.1:9464", func(r *http.Request) {
			r.Header.Set("Sec-Fetch-Site", "same-site")
		}, "", 403},
		{"cross-site without the token", "127.0.0.1:5555", "127.0.0.1:9464", func(r *http.Request) {
			r.Header.Set("Origin", "http://evil.example")
		}, "", 403},
	} {
		r := httptest.NewRequest("POST", "/-/reload", nil)
		r.RemoteAddr, r.Host = c.remote, c.host
		c.set(r)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("%s: %d, want %d (%s)", c.name, w.Code, c.want, w.Body.String())
			continue
		}
		switch c.want {
		case 200:
			if w.Body.String() != "done" {
				t.Errorf("%s: the handler did not run", c.name)
			}
		case 401:
			if w.Header().Get("WWW-Authenticate") == "" || !strings.Contains(w.Body.String(), "admin.token") {
				t.Errorf("%s: %v %q", c.name, w.Header(), w.Body.String())
			}
		default:
			if !strings.Contains(w.Body.String(), `"error"`) || strings.Contains(w.Body.String(), token) {
				t.Errorf("%s: body %q", c.name, w.Body.String())
			}
		}
	}

	// Without a token, nothing is allowed.
	h = Protect(http.NotFoundHandler(), Policy{})
	r := httptest.NewRequest("GET", "/api/queue", nil)
	r.RemoteAddr, r.Host = "127.0.0.1:1", "127.0.0.1"
	r.Header.Set("Authorization", "Bearer ")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 401 {
		t.Errorf("an empty token: %d", w.Code)
	}
}

func TestToken(t *testing.T) {
	dir := t.TempDir()
	tok, err := LoadOrCreateToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, TokenFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi.Mode(), err)
	}
	if len(tok) != 64 {
		t.Errorf("token %q", tok)
	}
	again, err := LoadOrCreateToken(dir)
	if err != nil || again != tok {
		t.Errorf("a restart changed the token: %v", err)
	}
	if other, _ := LoadOrCreateToken(t.TempDir()); other == tok {
		t.Error("two bridges got the same token")
	}
	if got, err := ReadToken(filepath.Join(dir, TokenFile)); err != nil || got != tok {
		t.Errorf("ReadToken: %q %v", got, err)
	}
	os.WriteFile(filepath.Join(dir, TokenFile), []byte("short\n"), 0o600)
	if _, err := LoadOrCreateToken(dir); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Errorf("a broken token file: %v", err)
	}
}

// On the admin socket the peer is the bridge's user or root whatever its
// address and Host say; the token and the cross-site check still apply.
func TestProtectSocket(t *testing.T) {
	h := Protect(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("done")) }), Policy{Token: token})
	for _, c := range []struct {
		name, auth, origin string
		want               int
	}{
		{"the token", "Bearer " + token, "", 200},
		{"no token", "", "", 401},
		{"cross-site, with the token", "Bearer " + token, "http://evil.example", 403},
	} {
		r := httptest.NewRequest("POST", "/-/reload", nil)
		r = r.WithContext(SocketConnContext(r.Context(), nil))
		r.RemoteAddr, r.Host = "@", "anything"
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("%s: %d, want %d", c.name, w.Code, c.want)
		}
	}
}

// Listen makes a socket only the bridge's user can use, replaces one a
// previous run left, and refuses anything else in its place.
func TestListenSocket(t *testing.T) {
	dir := t.TempDir()
	ln, err := Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, SocketFile)
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %v %v", fi, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // a crash leaves it behind
	ln, err = Listen(dir)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	ln.Close()
	os.Remove(path)
	os.WriteFile(path, []byte("x"), 0o600)
	if _, err := Listen(dir); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a file: %v", err)
	}
}
