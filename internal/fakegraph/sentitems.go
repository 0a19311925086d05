package fakegraph

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
)

// SentItem is a message in a mailbox's Sent Items folder.
type SentItem struct {
	ID                string
	InternetMessageID string
	Subject           string
	Sent              time.Time
	Size              int64
}

// SentItems is a mailbox's Sent Items folder now.
func (s *Server) SentItems(mailbox string) []SentItem {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sentItems[strings.ToLower(mailbox)])
}

// AddSentItem puts a message into a mailbox's Sent Items, as a person
// sending from Outlook would.
func (s *Server) AddSentItem(mailbox string, it SentItem) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if it.ID == "" {
		it.ID = "AAMkSent" + randomHex(16)
	}
	k := strings.ToLower(mailbox)
	s.sentItems[k] = append(s.sentItems[k], it)
}

var (
	reSentFolder = regexp.MustCompile(`^/v1\.0/users/([^/]+)/mailFolders/sentitems(/messages)?$`)
	rePurge      = regexp.MustCompile(`^/v1\.0/users/([^/]+)/messages/([^/]+)/permanentDelete$`)
	reIMIDFilter = regexp.MustCompile(`^internetMessageId eq '((?:[^']|'')*)'$`)
)

// serveSentItems answers the Sent Items folder's statistics, a search
// of it by internetMessageId, and permanentDelete of a message, with
// Mail.ReadWrite. It says whether the request was one of them.
func (s *Server) serveSentItems(w http.ResponseWriter, r *http.Request) bool {
	folder := reSentFolder.FindStringSubmatch(r.URL.Path)
	purge := rePurge.FindStringSubmatch(r.URL.Path)
	if folder == nil && purge == nil {
		return false
	}
	mailbox := strings.ToLower(append(folder, purge...)[1])
	claims, ok := s.authorize(w, r, mailbox)
	if !ok {
		return true
	}
	if !slices.Contains(claims.Roles, fakeentra.RoleMailReadWrite) {
		writeError(w, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests["sentitems"]++
	items := s.sentItems[mailbox]
	switch {
	case purge != nil && r.Method == http.MethodPost:
		i := slices.IndexFunc(items, func(it SentItem) bool { return it.ID == purge[2] })
		if i < 0 {
			writeError(w, 404, "ErrorItemNotFound", "The specified object was not found in the store.")
			return true
		}
		s.sentItems[mailbox] = slices.Delete(items, i, i+1)
		w.WriteHeader(204)
	case folder != nil && folder[2] == "" && r.Method == http.MethodGet:
		var size int64
		for _, it := range items {
			size += it.Size
		}
		writeJSON(w, 200, map[string]any{"id": "AAMkSentItemsFolder", "displayName": "Sent Items", "totalItemCount": len(items), "sizeInBytes": size})
	case folder != nil && r.Method == http.MethodGet:
		f := reIMIDFilter.FindStringSubmatch(r.URL.Query().Get("$filter"))
		if f == nil {
			writeError(w, 400, "BadRequest", "Invalid filter clause")
			return true
		}
		want := strings.ReplaceAll(f[1], "''", "'")
		value := []map[string]any{}
		for _, it := range items {
			if it.InternetMessageID == want {
				value = append(value, map[string]any{"id": it.ID, "internetMessageId": it.InternetMessageID, "sentDateTime": it.Sent.Format(time.RFC3339)})
			}
		}
		writeJSON(w, 200, map[string]any{"value": value})
	default:
		writeError(w, 405, "Request_BadRequest", "Unsupported request: "+r.Method+" "+r.URL.Path)
	}
	return true
}
