//go:build integration

package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

const replicaDevices = 30

// replicaConfig is replica n's config: its own listener, status page and
// spool, the 30 devices all sending as one mailbox, limits shared
// through Redis.
func (u *fakes) replicaConfig(t *testing.T, n int, redisAddr, hash string, perMinute int) (path, smtpAddr, httpAddr string) {
	t.Helper()
	smtpAddr, httpAddr = testenv.FreePort(t), testenv.FreePort(t)
	var devs strings.Builder
	for i := 1; i <= replicaDevices; i++ {
		fmt.Fprintf(&devs, "  - {name: mfp-%02d, username: mfp-%02d, password_hash: %q, tenant: contoso, mailbox: scanner@contoso.example}\n", i, i, hash)
	}
	cfg := u.configFrom(t, `
hostname: replica-{{.N}}.test
listeners:
  - {name: lan, address: {{q .SMTP}}, tls: none, allow_insecure_auth: true}
tenants:
{{template "contoso" .}}    max_messages_per_minute: {{.PerMinute}}
devices:
{{.Devices}}delivery: {mode: hybrid, retry_initial: 1s, retry_max: 2s, sync_timeout: 30s}
spool: {dir: spool-{{.N}}}
log: {level: info}
http: {address: {{q .HTTP}}}
cluster:
  redis: {address: {{q .Redis}}, key_prefix: "test:"}
  instance: replica-{{.N}}
  lease_ttl: 3s
`, map[string]any{"N": n, "SMTP": smtpAddr, "PerMinute": perMinute, "Devices": devs.String(), "HTTP": httpAddr, "Redis": redisAddr})
	path = filepath.Join(u.dir, fmt.Sprintf("replica-%d.yaml", n))
	writeFile(t, path, cfg)
	return path, smtpAddr, httpAddr
}

type replica struct {
	*bridgeProc
	path, smtp, http string
}

func (u *fakes) startReplica(t *testing.T, path, smtpAddr, httpAddr string) *replica {
	t.Helper()
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{smtpAddr}, "serve", "--config", path)
	return &replica{bridgeProc: p, path: path, smtp: smtpAddr, http: httpAddr}
}

// startReplicas starts a redis-server, the fakes, and three replicas
// sharing them, with perMinute submissions a minute per mailbox.
func startReplicas(t *testing.T, perMinute int) (*testenv.Redis, *fakes, []*replica) {
	t.Helper()
	rds := testenv.StartRedis(t)
	u := startFakes(t)
	hash, err := passwd.NewBcrypt([]byte(password), 4)
	if err != nil {
		t.Fatal(err)
	}
	var rs []*replica
	for n := range 3 {
		path, smtpAddr, httpAddr := u.replicaConfig(t, n, rds.Addr, hash, perMinute)
		rs = append(rs, u.startReplica(t, path, smtpAddr, httpAddr))
	}
	return rds, u, rs
}

// arrivals counts the messages at Exchange with each of the subjects.
func arrivals(exo *fakeexchange.Server, subjects []string) map[string]int {
	got := map[string]int{}
	for _, m := range exo.Messages() {
		for _, s := range subjects {
			if strings.Contains(string(m.Data), "Subject: "+s+"\r\n") {
				got[s]++
			}
		}
	}
	return got
}

// sendAll sends n messages from the 30 devices spread over the replicas,
// each on a connection of its own, and returns the subjects acknowledged.
func sendAll(t *testing.T, rs []*replica, tag string, n int) []string {
	t.Helper()
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			dev := fmt.Sprintf("mfp-%02d", i%replicaDevices+1)
			subject := fmt.Sprintf("%s-%03d", tag, i)
			r := rs[i%len(rs)]
			reply, err := sendAs(r.smtp, dev, "scan@printer.lan", []string{"bob@contoso.example"}, "Subject: "+subject+"\r\n\r\nscan\r\n")
			if err != nil || !strings.HasPrefix(reply, "2.0.0") {
				t.Errorf("%s through %s: %q %v", subject, r.smtp, reply, err)
				return
			}
			mu.Lock()
			acked = append(acked, subject)
			mu.Unlock()
		})
	}
	wg.Wait()
	return acked
}

// Three replicas of the binary share one redis-server: 30 devices spread
// over them, one mailbox. The fake Exchange never sees more than its 3
// connections, each message arrives once; Redis killed and restarted
// mid-run loses nothing and passes no limit, the fallback visible in the
// metrics and on the status page; a replica killed with SIGKILL holding
// connections loses them to the others within the lease TTL, and its
// spool drains when it restarts.
func TestReplicas(t *testing.T) {
	t.Parallel() // with TestReplicasPerMinute, which mostly waits
	// The per-minute limit has a test of its own: here it would only slow
	// the run.
	rds, u, rs := startReplicas(t, 100000)
	u.exo.SetSubmitDelay(50 * time.Millisecond)
	delivered := func(subjects []string) {
		t.Helper()
		testenv.Eventually(t, "every acknowledged message at Exchange", 60*time.Second, func() bool {
			got := arrivals(u.exo, subjects)
			for _, s := range subjects {
				if got[s] == 0 {
					return false
				}
			}
			for _, s := range subjects {
				if got[s] != 1 {
					t.Errorf("%s arrived %d times", s, got[s])
				}
			}
			return true
		})
	}

	// 60 messages from 30 devices over three replicas.
	acked := sendAll(t, rs, "shared", 60)
	t.Logf("%d acknowledged, %d at Exchange", len(acked), len(u.exo.Messages()))
	t.Cleanup(func() {
		if t.Failed() {
			for i, r := range rs {
				t.Logf("replica %d log:\n%s", i, r.logs.String())
			}
		}
	})
	delivered(acked)
	if peak := u.exo.PeakConnections("scanner@contoso.example"); peak > 3 {
		t.Errorf("Exchange saw %d connections for the mailbox at once, limit 3 (and answers 432 beyond)", peak)
	}
	if m := get(t, "http://"+rs[1].http+"/metrics"); !strings.Contains(m, "smtpbridge_cluster_shared_limits 1") {
		t.Errorf("/metrics lacks smtpbridge_cluster_shared_limits 1")
	}

	// An address failing logins on replica 0 is refused by the other
	// two; unblocked through replica 2, it is welcome everywhere again.
	const attacker = "127.0.0.31"
	for i := range 5 {
		cv, greeting := dialFrom(t, attacker, rs[0].smtp)
		if !strings.HasPrefix(greeting, "220") {
			t.Fatalf("attempt %d: %q", i, greeting)
		}
		cv.Cmd("EHLO guesser", "250")
		cv.Cmd("AUTH PLAIN "+b64(plainResp("mfp-01", "guess")), "535 5.7.8")
		cv.Cmd("QUIT", "221")
	}
	greets := func(r *replica, prefix string) func() bool {
		return func() bool {
			cv, greeting := dialFrom(t, attacker, r.smtp)
			cv.Conn.Close()
			return strings.HasPrefix(greeting, prefix)
		}
	}
	for i, r := range rs {
		testenv.Eventually(t, fmt.Sprintf("replica %d refusing the address blocked on replica 0", i), 5*time.Second, greets(r, "421 4.7.0 Too many failed logins"))
	}
	if out, err := runCmd(t, "", binary, "blocks", "--config", rs[1].path); err != nil || !strings.Contains(out, attacker) || !strings.Contains(out, "blocked by replica-0") {
		t.Errorf("smtpbridge blocks on replica 1: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", binary, "blocks", "unblock", attacker, "--config", rs[2].path); err != nil {
		t.Fatalf("smtpbridge blocks unblock through replica 2: %v\n%s", err, out)
	}
	for i, r := range rs {
		testenv.Eventually(t, fmt.Sprintf("replica %d welcoming the address unblocked through replica 2", i), 5*time.Second, greets(r, "220"))
	}

	// Redis killed mid-run, then back.
	var during []string
	var wg sync.WaitGroup
	wg.Go(func() { during = sendAll(t, rs, "outage", 30) })
	time.Sleep(200 * time.Millisecond)
	rds.Stop()
	testenv.Eventually(t, "the fallback in the metrics", 10*time.Second, func() bool {
		return strings.Contains(get(t, "http://"+rs[0].http+"/metrics"), "smtpbridge_cluster_shared_limits 0")
	})
	if page := get(t, "http://"+rs[0].http+"/"); !strings.Contains(page, "Redis out of reach") {
		t.Error("the status page does not say Redis is out of reach")
	}
	time.Sleep(time.Second)
	rds.Start()
	wg.Wait()
	delivered(during)
	testenv.Eventually(t, "shared limits again", 10*time.Second, func() bool {
		return strings.Contains(get(t, "http://"+rs[0].http+"/metrics"), "smtpbridge_cluster_shared_limits 1")
	})
	if peak := u.exo.PeakConnections("scanner@contoso.example"); peak > 3 {
		t.Errorf("with Redis down and back, Exchange saw %d connections at once, limit 3", peak)
	}

	// A replica killed with SIGKILL while its three connections are in
	// their submissions. Exchange notices them dead when those end (1 s);
	// the lease TTL (3 s) must outlast that, as the default (15 s)
	// outlasts Exchange's.
	u.exo.SetSubmitDelay(time.Second)
	// After Redis returned, each replica allows itself one connection
	// for 4 s, until the others have counted their fallback slots there.
	time.Sleep(5 * time.Second)
	var killedAcked []string
	for i := range 3 {
		subject := fmt.Sprintf("killed-%d", i)
		go sendAs(rs[0].smtp, fmt.Sprintf("mfp-%02d", i+1), "scan@printer.lan", []string{"bob@contoso.example"}, "Subject: "+subject+"\r\n\r\nscan\r\n")
		killedAcked = append(killedAcked, subject)
	}
	testenv.Eventually(t, "the replica's three submissions at Exchange", 20*time.Second, func() bool { return u.exo.InData() == 3 })
	rs[0].cmd.Process.Signal(syscall.SIGKILL)
	<-rs[0].exited
	rs[0].exited <- nil
	u.exo.SetSubmitDelay(50 * time.Millisecond)
	start := time.Now()
	after := sendAll(t, rs[1:], "after-kill", 6)
	if d := time.Since(start); d < time.Second || d > 15*time.Second {
		t.Errorf("the other replicas got the dead one's slots after %s, want within the lease TTL (3s)", d)
	}
	delivered(after)
	t.Logf("after a SIGKILL holding 3 connections, 6 messages through the others in %s", time.Since(start).Round(100*time.Millisecond))

	// It restarts on its spool: what it had taken goes out.
	rs[0] = u.startReplica(t, rs[0].path, rs[0].smtp, rs[0].http)
	testenv.Eventually(t, "the restarted replica's spool drained", 30*time.Second, func() bool {
		entries, _ := os.ReadDir(filepath.Join(u.dir, "spool-0", "queue"))
		return len(entries) == 0
	})
	got := arrivals(u.exo, killedAcked)
	for _, s := range killedAcked {
		if got[s] == 0 {
			t.Errorf("%s, taken by the killed replica, never arrived", s)
		}
	}
	if peak := u.exo.PeakConnections("scanner@contoso.example"); peak > 3 {
		t.Errorf("Exchange saw %d connections at once, limit 3", peak)
	}

	// Which replica holds what: on any replica's status page and in
	// smtpbridge queue list.
	testenv.Eventually(t, "the three replicas on the status page", 15*time.Second, func() bool {
		page := get(t, "http://"+rs[2].http+"/")
		return strings.Contains(page, `id="replicas"`) && strings.Contains(page, "replica-0") &&
			strings.Contains(page, "replica-1") && strings.Contains(page, "replica-2 <span class=\"muted\">(this one)")
	})
	if out, err := runCmd(t, "", binary, "queue", "list", "--config", rs[1].path); err != nil ||
		!strings.Contains(out, "Replicas (each delivers only what its own spool holds)") || !strings.Contains(out, "replica-1 (this one)") || !strings.Contains(out, "replica-2") {
		t.Errorf("smtpbridge queue list on replica 1: %v\n%s", err, out)
	}
}

// max_messages_per_minute: 30 holds across three replicas: 45 messages
// sent at once, 15 per replica, reach Exchange at no more than 30 in any
// minute, and all of them exactly once.
func TestReplicasPerMinute(t *testing.T) {
	t.Parallel()
	_, u, rs := startReplicas(t, 30)
	start := time.Now()
	acked := sendAll(t, rs, "rate", 45)
	if len(acked) != 45 {
		t.Fatalf("%d of 45 acknowledged", len(acked))
	}
	testenv.Eventually(t, "the 45 messages at Exchange", 100*time.Second, func() bool { return len(u.exo.Messages()) >= 45 })
	took := time.Since(start)
	if most := u.exo.MostWithin("scanner@contoso.example", time.Minute); most > 30 {
		t.Errorf("Exchange saw %d submissions for the mailbox within a minute, limit 30", most)
	}
	if took < time.Minute {
		t.Errorf("45 messages went out in %s, under a minute: the limit was not kept", took)
	}
	seen := arrivals(u.exo, acked)
	for _, s := range acked {
		if seen[s] != 1 {
			t.Errorf("%s arrived %d times", s, seen[s])
		}
	}
	t.Logf("45 messages through three replicas at 30 a minute: at Exchange after %s, at most %d in any minute",
		took.Round(100*time.Millisecond), u.exo.MostWithin("scanner@contoso.example", time.Minute))
}

// examples/replicas (the single-host layout of docker-compose.yml there)
// run as compose would run it: two bridges from the one shipped config,
// each with its own spool, one redis-server. swaks sends through each;
// each bridge's status page lists both.
func TestReplicasExample(t *testing.T) {
	swaks := testenv.LookTool(t, "swaks")
	rds := testenv.StartRedis(t)
	data, err := os.ReadFile("../../examples/replicas/smtpbridge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "metrics-password")
	writeFile(t, pw, "scrape-password-0123\n")
	var bridges []*bridgeProc
	var smtps, https []string
	for _, name := range []string{"bridge-1", "bridge-2"} {
		smtpAddr, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
		// What compose gives each container: its own ports, volume and
		// host name (the instance), the secret, Redis's address.
		cfg := strings.NewReplacer(`"0.0.0.0:2525"`, strconv.Quote(smtpAddr), `"0.0.0.0:9464"`, strconv.Quote(httpAddr),
			`"redis:6379"`, strconv.Quote(rds.Addr), "/var/lib/smtpbridge", filepath.Join(dir, name),
			"/run/secrets/metrics_password", pw).Replace(string(data))
		cfg = strings.Replace(cfg, "  # instance: the container's host name", "  instance: "+name+" # the container's host name", 1)
		if !strings.Contains(cfg, rds.Addr) || !strings.Contains(cfg, smtpAddr) || !strings.Contains(cfg, "instance: "+name) {
			t.Fatalf("examples/replicas/smtpbridge.yaml changed; update this test:\n%s", cfg)
		}
		path := filepath.Join(dir, name+".yaml")
		writeFile(t, path, cfg)
		bridges = append(bridges, startBridge(t, nil, []string{smtpAddr, httpAddr}, "serve", "--config", path))
		smtps, https = append(smtps, smtpAddr), append(https, httpAddr)
		if out, err := runCmd(t, "", binary, "check-config", "--config", path); err != nil {
			t.Fatalf("check-config: %v\n%s", err, out)
		}
	}
	for i, addr := range smtps {
		out, err := runCmd(t, "", swaks, "--server", addr, "--auth", "LOGIN", "--auth-user", "mfp-sandbox", "--auth-password", "scan-to-mail",
			"--from", "printer@lan.example", "--to", "someone@example.com", "--body", fmt.Sprintf("through bridge %d", i+1))
		if err != nil || !strings.Contains(out, "250 2.0.0 OK") {
			t.Fatalf("swaks through bridge %d: %v\n%s\n%s", i+1, err, out, bridges[i].logs.String())
		}
		emls, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf("bridge-%d", i+1), "sandbox-mail", "*.eml"))
		if len(emls) != 1 {
			t.Errorf("bridge %d: %d .eml files, want 1", i+1, len(emls))
		}
	}
	testenv.Eventually(t, "both bridges on bridge-1's status page", 15*time.Second, func() bool {
		req, _ := http.NewRequest("GET", "http://"+https[0]+"/", nil)
		req.SetBasicAuth("prometheus", "scrape-password-0123")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "bridge-1 <span class=\"muted\">(this one)") && strings.Contains(string(b), "bridge-2")
	})
}

// max_messages_per_minute: 30 across three replicas holds across a Redis
// that restarts empty in the middle of a minute, and a replica killed
// with SIGKILL soon after: Redis forgot the minute's starts, and the
// replicas put back the ones they saw before they go on. No 60 s window
// holds more than 30 submissions at the fake Exchange (by its MAIL
// times); every acknowledged message arrives once.
func TestReplicasPerMinuteAcrossRedisRestart(t *testing.T) {
	t.Parallel()
	rds, u, rs := startReplicas(t, 30)
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	for i := range 45 {
		wg.Go(func() {
			subject := fmt.Sprintf("restart-%03d", i)
			r := rs[i%3]
			reply, err := sendAs(r.smtp, fmt.Sprintf("mfp-%02d", i%replicaDevices+1), "scan@printer.lan", []string{"bob@contoso.example"}, "Subject: "+subject+"\r\n\r\nscan\r\n")
			if err == nil && strings.HasPrefix(reply, "2.0.0") {
				mu.Lock()
				acked = append(acked, subject)
				mu.Unlock()
			}
		})
	}
	testenv.Eventually(t, "the minute's first submissions at Exchange", 30*time.Second, func() bool { return len(u.exo.Messages()) >= 12 })
	rds.Stop()
	rds.Start() // empty: no persistence
	// A replica killed while the load goes on, as the replica test does.
	time.Sleep(2 * time.Second)
	rs[2].cmd.Process.Signal(syscall.SIGKILL)
	<-rs[2].exited
	rs[2].exited <- nil
	wg.Wait()
	// The killed replica's spool goes out when it starts again.
	rs[2] = u.startReplica(t, rs[2].path, rs[2].smtp, rs[2].http)
	testenv.Eventually(t, "every acknowledged message at Exchange", 150*time.Second, func() bool {
		got := arrivals(u.exo, acked)
		for _, s := range acked {
			if got[s] == 0 {
				return false
			}
		}
		return true
	})
	most := u.exo.MostWithin("scanner@contoso.example", time.Minute)
	t.Logf("45 messages, Redis restarted empty and a replica killed mid-minute: %d acknowledged, at most %d submissions in any minute", len(acked), most)
	if most > 30 {
		t.Errorf("Exchange saw %d submissions for the mailbox within a minute, limit 30", most)
		for i, r := range rs {
			t.Logf("replica %d log:\n%s", i, tail(r.logs.String(), 40))
		}
	}
	// At least once: a message the killed replica had delivered but not
	// yet removed goes again from its spool (README, Known limits).
	if len(acked) < 30 {
		t.Errorf("only %d of 45 acknowledged", len(acked))
	}
}
