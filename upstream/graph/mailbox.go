package graph

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// maxMailboxAnswer bounds the answer to a mailbox request.
const maxMailboxAnswer = 4 << 20

// Request makes one Graph request about a tenant's mailbox (pathQuery
// after /v1.0/users/{mailbox}, e.g. /mailFolders/sentitems), with the
// tenant's token and route, for the bridge's housekeeping (sent_items):
// it returns the status and the body, at most 4 MiB.
func (t *Transport) Request(ctx context.Context, tenant, mailbox, method, pathQuery string) (int, []byte, error) {
	route, plain, ok := t.route(tenant)
	if !ok {
		return 0, nil, fmt.Errorf("tenant %s has no Graph route", tenant)
	}
	tok, err := t.tokens.Token(ctx, tenant, mailbox)
	if err != nil {
		return 0, nil, err
	}
	u := route.Host + "/v1.0/users/" + url.PathEscape(mailbox) + pathQuery
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := authorized(plain, tok.AccessToken).Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, route.Host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMailboxAnswer))
	return resp.StatusCode, body, err
}
