package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/upstream"
)

// CheckMailbox checks, without sending anything, that the app may use a
// mailbox through Graph: it creates a draft in the mailbox and deletes
// it (which needs Mail.ReadWrite, or its RBAC for Applications role). A
// failure is a *message.Error as a delivery's would be, with Graph's code
// and request-id.
func CheckMailbox(ctx context.Context, route Route, mailbox, token string) error {
	t := New(Options{Routes: map[string]Route{"": route}, Observer: upstream.NopObserver{}})
	defer t.Close()
	_, plain, _ := t.route("")
	s := &sender{t: t, route: route, plain: plain, m: &message.Message{Mailbox: mailbox},
		base: route.Host + "/v1.0/users/" + url.PathEscape(mailbox), api: authorized(plain, token)}
	body, _ := json.Marshal(map[string]any{"subject": "smtpbridge doctor: a check of the mailbox, never sent",
		"body": map[string]string{"contentType": "text", "content": "smtpbridge doctor created and deleted this draft."}})
	resp, err := s.do(ctx, s.api, http.MethodPost, s.base+"/messages", bytes.NewReader(body), int64(len(body)), "application/json", message.StageMail, http.StatusCreated)
	if err != nil {
		return err
	}
	var created struct {
		ID string `json:"id"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&created)
	resp.Body.Close()
	if created.ID == "" {
		return nil
	}
	resp, err = s.do(ctx, s.api, http.MethodDelete, s.base+"/messages/"+created.ID, nil, -1, "", message.StageMail, http.StatusNoContent)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// SentItemsStats reads a mailbox's Sent Items folder: how many items it
// holds and their size (Mail.ReadWrite), for doctor.
func SentItemsStats(ctx context.Context, route Route, mailbox, token string) (items int, bytes int64, err error) {
	t := New(Options{Routes: map[string]Route{"": route}, Observer: upstream.NopObserver{}})
	defer t.Close()
	_, plain, _ := t.route("")
	s := &sender{t: t, route: route, plain: plain, m: &message.Message{Mailbox: mailbox},
		base: route.Host + "/v1.0/users/" + url.PathEscape(mailbox), api: authorized(plain, token)}
	resp, err := s.do(ctx, s.api, http.MethodGet, s.base+"/mailFolders/sentitems", nil, -1, "", message.StageMail, http.StatusOK)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var f struct {
		TotalItemCount int   `json:"totalItemCount"`
		SizeInBytes    int64 `json:"sizeInBytes"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&f); err != nil {
		return 0, 0, fmt.Errorf("the Sent Items folder: %w", err)
	}
	return f.TotalItemCount, f.SizeInBytes, nil
}
