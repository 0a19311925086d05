package spool

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/tempdir"
	"github.com/smtpbridge/smtpbridge/message"
)

func put(t *testing.T, s *Spool, body string) Meta {
	t.Helper()
	w, err := s.Create(Meta{Device: "mfp", Tenant: "contoso", Mailbox: "scanner@contoso.example",
		From: "scanner@contoso.example", To: []string{"bob@contoso.example"}})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(w, strings.NewReader(body))
	m, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCommitListOpenRemove(t *testing.T) {
	dir := tempdir.New(t)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	body := "Subject: hello\r\n\r\nsecret body text\r\n"
	m := put(t, s, body)
	if m.Size != int64(len(body)) || m.NextAttempt.IsZero() || m.Received.IsZero() {
		t.Errorf("meta = %+v", m)
	}
	// Reopening (a restart) finds it.
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].ID != m.ID || list[0].To[0] != "bob@contoso.example" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	r, err := s.Open(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if string(got) != body {
		t.Errorf("body = %q", got)
	}
	meta, _ := os.ReadFile(filepath.Join(dir, "queue", m.ID+".json"))
	if strings.Contains(string(meta), "secret body text") {
		t.Error("metadata holds the body")
	}
	m.Attempts, m.LastReply = 1, "451 4.3.2 sender thread limit exceeded"
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	if g, _ := s.Get(m.ID); g.Attempts != 1 || g.LastReply != m.LastReply {
		t.Errorf("Get after Update = %+v", g)
	}
	if err := s.Remove(m.ID); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("List after Remove = %+v", list)
	}
	if _, err := s.Open(m.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open after Remove: %v", err)
	}
	if err := s.Remove(m.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: %v", err)
	}
}

func TestAbortAndCrashLeftovers(t *testing.T) {
	dir := tempdir.New(t)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := s.Create(Meta{})
	w.Write([]byte("half a message"))
	w.Abort()
	// What a crash leaves: a temp file, and a data file without metadata.
	os.WriteFile(filepath.Join(dir, "tmp", "x-1.eml"), []byte("partial"), 0o600)
	os.WriteFile(filepath.Join(dir, "queue", "orphan.eml"), []byte("never committed"), 0o600)
	kept := put(t, s, "kept\r\n")

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"tmp", "queue"} {
		entries, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), kept.ID) {
				t.Errorf("%s/%s survived Open", sub, e.Name())
			}
		}
	}
	if list, _ := s.List(); len(list) != 1 || list[0].ID != kept.ID {
		t.Errorf("List = %+v", list)
	}
}

func TestBury(t *testing.T) {
	dir := tempdir.New(t)
	s, _ := Open(dir)
	m := put(t, s, "x\r\n")
	if err := s.Bury(m, "554 5.2.252 SendAsDenied"); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("still queued: %+v", list)
	}
	dead, err := s.Dead()
	if err != nil || len(dead) != 1 || dead[0].DeadReason != "554 5.2.252 SendAsDenied" {
		t.Fatalf("Dead = %+v, %v", dead, err)
	}

	// A crash half-way through Bury (data moved, metadata not) is finished
	// at the next Open.
	m = put(t, s, "y\r\n")
	os.Rename(filepath.Join(dir, "queue", m.ID+".eml"), filepath.Join(dir, "dead", m.ID+".eml"))
	s, _ = Open(dir)
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("half-buried message still queued: %+v", list)
	}
	if dead, _ := s.Dead(); len(dead) != 2 {
		t.Errorf("dead letters = %d, want 2", len(dead))
	}
}

func TestUnwritableSpool(t *testing.T) {
	if os.Geteuid() == 0 || runtime.GOOS == "windows" {
		// root ignores directory permissions, and Windows has no modes;
		// use a path under a file.
		f := filepath.Join(tempdir.New(t), "file")
		os.WriteFile(f, nil, 0o600)
		if _, err := Open(filepath.Join(f, "spool")); err == nil {
			t.Fatal("Open under a file succeeded")
		}
		return
	}
	dir := tempdir.New(t)
	s, _ := Open(dir)
	os.Chmod(filepath.Join(dir, "tmp"), 0o500)
	defer os.Chmod(filepath.Join(dir, "tmp"), 0o700)
	if _, err := s.Create(Meta{}); err == nil {
		t.Fatal("Create in a read-only spool succeeded")
	}
}

func TestIDs(t *testing.T) {
	a, b := message.NewID(), message.NewID()
	if a == b || !validID(a) || len(a) != 26 {
		t.Errorf("NewID = %q, %q", a, b)
	}
	time.Sleep(2 * time.Millisecond)
	if c := message.NewID(); c < a {
		t.Errorf("IDs not time-ordered: %q < %q", c, a)
	}
	for _, bad := range []string{"", "../x", "a/b", "A", strings.Repeat("a", 65)} {
		if validID(bad) {
			t.Errorf("validID(%q)", bad)
		}
		if _, err := (&Spool{dir: tempdir.New(t)}).Open(bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("Open(%q) = %v", bad, err)
		}
	}
}

func TestRequeueAndRemoveDead(t *testing.T) {
	dir := tempdir.New(t)
	s, _ := Open(dir)
	m := put(t, s, "x\r\n")
	if err := s.Bury(m, "expired"); err != nil {
		t.Fatal(err)
	}
	back, err := s.Requeue(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if back.DeadReason != "" || back.Requeued.IsZero() || !back.Since().Equal(back.Requeued) {
		t.Errorf("requeued metadata %+v: reason kept or max_age not restarted", back)
	}
	if list, _ := s.List(); len(list) != 1 {
		t.Fatalf("queue after requeue = %+v", list)
	}
	if dead, _ := s.Dead(); len(dead) != 0 {
		t.Fatalf("dead letters after requeue = %+v", dead)
	}

	// A crash in the middle of Requeue (data moved back, no queue
	// metadata yet) is undone at the next Open: the dead letter survives.
	if err := s.Bury(back, "again"); err != nil {
		t.Fatal(err)
	}
	os.Rename(filepath.Join(dir, "dead", m.ID+".eml"), filepath.Join(dir, "queue", m.ID+".eml"))
	s, _ = Open(dir)
	dead, _ := s.Dead()
	if len(dead) != 1 {
		t.Fatalf("dead letter lost in an interrupted requeue: %+v", dead)
	}
	if r, err := s.OpenDead(m.ID); err != nil {
		t.Fatalf("dead letter's data lost: %v", err)
	} else {
		r.Close()
	}
	if err := s.RemoveDead(m.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveDead(m.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second RemoveDead: %v, want ErrNotFound", err)
	}
}

func TestLock(t *testing.T) {
	dir := tempdir.New(t)
	unlock, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Lock(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Lock: %v, want ErrLocked", err)
	}
	unlock()
	unlock2, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock after unlock: %v", err)
	}
	unlock2()
}
