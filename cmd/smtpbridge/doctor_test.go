package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// runBridge runs the binary with env and returns its output and exit code.
func runBridge(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// TestOnboarding walks through the set-up mistakes an admin makes, as one
// would with the binary: doctor names each and the command that fixes it;
// after the fix, doctor passes and send-test delivers.
func TestOnboarding(t *testing.T) {
	u := startFakes(t)
	path := u.config(t, testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t))
	good := []string{"SSL_CERT_FILE=" + u.caFile, "TEST_CLIENT_SECRET=" + clientSecret}
	mbox := fakeexchange.Mailbox{Address: "scanner@contoso.example", TenantID: tenantID, FullAccess: []string{u.app.ObjectID}}

	for _, c := range []struct {
		name     string
		break_   func() []string // makes the mistake; returns the environment to run with
		fix      func()          // what the admin does about it
		want     []string        // in doctor's output
		wantStep string
	}{
		{name: "wrong secret (the Secret ID instead of its Value)",
			break_: func() []string {
				return []string{"SSL_CERT_FILE=" + u.caFile, "TEST_CLIENT_SECRET=3f2a1b4c-secret-id-not-value"}
			},
			want: []string{"[FAIL] token", "AADSTS7000215", "Wrong client secret", "Value"}},
		{name: "no SMTP.SendAsApp role",
			break_: func() []string {
				u.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, ObjectID: u.app.ObjectID, Secrets: []fakeentra.Secret{{Value: clientSecret}}, Roles: []string{}})
				return good
			},
			fix: func() {
				u.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, ObjectID: u.app.ObjectID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
			},
			want: []string{"[warn] claims", "roles none", "[FAIL] auth", "535 5.7.3", "no SMTP.SendAsApp role", "Grant admin consent"}},
		{name: "no permission on the mailbox",
			break_: func() []string { m := mbox; m.FullAccess = nil; u.exo.AddMailbox(m); return good },
			fix:    func() { u.exo.AddMailbox(mbox) },
			want:   []string{"[FAIL] auth", "535 5.7.3", "Add-MailboxPermission -Identity <mailbox>"}},
		{name: "SMTP AUTH disabled for the mailbox",
			break_: func() []string { m := mbox; m.SMTPAuthDisabled = true; u.exo.AddMailbox(m); return good },
			fix:    func() { u.exo.AddMailbox(mbox) },
			want:   []string{"[FAIL] auth", "535 5.7.139", "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := c.break_()
			out, code := runBridge(t, env, "doctor", "--config", path, "--device", "mfp-2f")
			if code != 1 {
				t.Errorf("doctor exit %d, want 1\n%s", code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("doctor's output lacks %q:\n%s", w, out)
				}
			}
			t.Logf("doctor, before the fix:\n%s", out)
			if c.fix != nil {
				c.fix()
			}
			out, code = runBridge(t, good, "doctor", "--config", path, "--device", "mfp-2f")
			if code != 0 || !strings.Contains(out, "0 failed") {
				t.Fatalf("after the fix, doctor exit %d:\n%s", code, out)
			}
			before := len(u.exo.Messages())
			out, code = runBridge(t, good, "send-test", "--config", path, "--device", "mfp-2f", "--to", "bob@contoso.example", "--subject", "after: "+c.name)
			if code != 0 || !strings.Contains(out, "delivered") || !strings.Contains(out, "Exchange's message ID") {
				t.Fatalf("send-test exit %d:\n%s", code, out)
			}
			msgs := u.exo.Messages()
			if len(msgs) != before+1 || !strings.Contains(string(msgs[len(msgs)-1].Data), "X-Smtpbridge-Test: mfp-2f") {
				t.Errorf("send-test's message did not arrive")
			}
		})
	}

	t.Run("send-test refusals", func(t *testing.T) {
		mbox2 := mbox
		mbox2.SMTPAuthDisabled = true
		u.exo.AddMailbox(mbox2)
		defer u.exo.AddMailbox(mbox)
		out, code := runBridge(t, good, "send-test", "--config", path, "--device", "mfp-2f", "--to", "bob@contoso.example")
		if code != 1 || !strings.Contains(out, "not delivered: 535 5.7.139") || !strings.Contains(out, "Set-CASMailbox") {
			t.Errorf("send-test with SMTP AUTH disabled: exit %d\n%s", code, out)
		}
		if out, code := runBridge(t, good, "send-test", "--config", path, "--device", "nope", "--to", "a@b.c"); code != 2 || !strings.Contains(out, `no device "nope"`) {
			t.Errorf("unknown device: exit %d\n%s", code, out)
		}
	})

	t.Run("doctor --json and every tenant", func(t *testing.T) {
		// Warnings go to stderr; stdout is the JSON alone.
		cmd := exec.Command(binary, "doctor", "--config", path, "--json")
		cmd.Env = append(os.Environ(), good...)
		stdout, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		out := string(stdout)
		var rep struct {
			Steps []struct {
				Tenant, Step, Status string
			}
			Tenants, Mailboxes, Failed int
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if code != 0 || rep.Tenants != 2 || rep.Mailboxes != 2 || rep.Failed != 0 || len(rep.Steps) != 14 {
			t.Errorf("exit %d, %+v", code, rep)
		}
		if out, code := runBridge(t, good, "doctor", "--config", path, "--tenant", "nope"); code != 2 || !strings.Contains(out, "not in the config") {
			t.Errorf("unknown tenant: exit %d\n%s", code, out)
		}
	})

	t.Run("exchange-script", func(t *testing.T) {
		out, code := runBridge(t, good, "exchange-script", "--config", path, "--tenant", "contoso")
		for _, w := range []string{"New-ServicePrincipal -AppId $appId -ObjectId $objectId", "$appId = '" + clientID + "'",
			"Add-MailboxPermission -Identity 'scanner@contoso.example'", "Set-CASMailbox -Identity 'scanner@contoso.example' -SmtpClientAuthenticationDisabled $false"} {
			if code != 0 || !strings.Contains(out, w) {
				t.Errorf("exchange-script lacks %q (exit %d):\n%s", w, code, out)
			}
		}
		if strings.Contains(out, "fabrikam") {
			t.Error("--tenant contoso printed fabrikam")
		}
	})
}
