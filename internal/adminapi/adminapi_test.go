package adminapi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestOnly(t *testing.T) {
	h := LoopbackOnly(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("done")) }), `loopback "only"`)
	for addr, want := range map[string]int{
		"127.0.0.1:5555":        200,
		"[::1]:5555":            200,
		"[::ffff:127.0.0.1]:80": 200,
		"10.0.0.7:5555":         403,
		"192.168.1.20:1":        403,
		"[2001:db8::1]:5555":    403,
		"garbage":               403,
	} {
		r := httptest.NewRequest("POST", "/-/reload", nil)
		r.RemoteAddr = addr
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("%s: %d, want %d", addr, w.Code, want)
		}
		if want == 403 && !strings.Contains(w.Body.String(), `"error": "loopback \"only\""`) {
			t.Errorf("%s: body %q", addr, w.Body.String())
		}
		if want == 200 && w.Body.String() != "done" {
			t.Errorf("%s: the handler did not run", addr)
		}
	}
}
