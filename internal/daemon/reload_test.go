package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
)

// A reload that removes a tenant with queued messages says so.
func TestReloadWarnsAboutOrphans(t *testing.T) {
	sp, err := spool.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Not started: messages stay queued.
	q, err := queue.New(queue.Options{Spool: sp, Settings: PartsOf(&config.Config{Delivery: config.Delivery{
		RetryInitial: time.Minute, RetryMax: time.Hour, MaxAge: time.Hour, SyncTimeout: time.Second}}, Microsoft{}).Queue})
	if err != nil {
		t.Fatal(err)
	}
	for _, tenant := range []string{"contoso", "fabrikam", "fabrikam"} {
		if _, err := q.Deliver(context.Background(), &message.Message{ID: message.NewID(), Tenant: tenant, Mailbox: "m@x", From: "m@x",
			To: []string{"r@x"}, Body: strings.NewReader("Subject: x\r\n\r\nbody\r\n")}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := &config.Config{Tenants: []config.Tenant{{Name: "contoso"}}}
	got := orphans(q, cfg)
	if len(got) != 1 || !strings.HasPrefix(got[0], `2 queued message(s) of tenant "fabrikam"`) {
		t.Errorf("orphans = %q", got)
	}
	cfg.Tenants = append(cfg.Tenants, config.Tenant{Name: "fabrikam"})
	if got := orphans(q, cfg); len(got) != 0 {
		t.Errorf("orphans with every tenant configured = %q", got)
	}
}

func TestRestartOnly(t *testing.T) {
	cur := &config.Config{Hostname: "a", Listeners: []config.Listener{{Name: "lan", Address: "0.0.0.0:25"}, {Name: "old", Address: "0.0.0.0:26"}}}
	next := &config.Config{Hostname: "b", Listeners: []config.Listener{{Name: "lan", Address: "0.0.0.0:2525", AllowInsecureAuth: true}, {Name: "new", Address: ":27"}}}
	next.Cluster.Redis.Address = "redis:6379"
	w := strings.Join(restartOnly(cur, next), "\n")
	for _, want := range []string{`hostname changed from "a" to "b"`, "cluster changed; restart", `listener "lan" address changed`, `listener "new" is new`, `listener "old" was removed`} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
	run := runningListeners(cur.Listeners, next.Listeners)
	if len(run) != 2 || run[0].Address != "0.0.0.0:25" || !run[0].AllowInsecureAuth || run[1].Name != "old" {
		t.Errorf("running listeners = %+v", run)
	}
}
