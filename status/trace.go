package status

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/trace"
)

// Searcher finds messages' stories in the audit log (trace.Search over
// log.audit_file and its rotated files), within lim, until ctx ends.
type Searcher func(ctx context.Context, q trace.Query, limit int, lim trace.Limits) ([]trace.Story, trace.Stats, error)

// A search on the page is anyone's who can load it: it is bounded.
const (
	// maxStoriesShown bounds a search's results on the page: the newest.
	maxStoriesShown = 50
	// maxSearches is how many searches run at once; the others are
	// answered 503 with Retry-After.
	maxSearches = 2
	// searchTimeout bounds one search.
	searchTimeout = 30 * time.Second
)

// pageLimits bound one search's reading and memory: about two passes
// over a 256 MB log, and the newest 10,000 candidate messages (about a
// megabyte).
var pageLimits = trace.Limits{MaxBytes: 512 << 20, MaxTracked: 10_000}

//go:embed trace.html
var traceHTML string

//go:embed style.html
var styleHTML string

var traceTmpl = template.Must(template.Must(template.New("trace").Parse(traceHTML)).Parse(styleHTML))

type traceView struct {
	Info     PageInfo
	Query    map[string]string
	Searched bool
	One      bool // a message's page
	NoLog    bool
	Err      string
	Stories  []storyView
	Base     string // the status page, relative
	// More is how many more messages matched than are shown (the
	// oldest); Incomplete why the search did not read the whole log.
	More       int
	Incomplete string
}

type storyView struct {
	ID, Device, Tenant, Mailbox, Class string
	Outcome                            string // the last event
	Events                             []eventView
}

type eventView struct {
	At, Kind, Text, Hint, Class string
}

// TraceHandler serves the message trace: GET /trace with the search
// form's fields (to, from, device, id, code, since), and GET
// /message/{id}, one message's story. search is nil when there is no
// audit log.
func TraceHandler(info PageInfo, search Searcher) http.Handler {
	running := make(chan struct{}, maxSearches)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := traceView{Info: info, Query: map[string]string{}, NoLog: search == nil, Base: "./"}
		var q trace.Query
		if id := r.PathValue("id"); id != "" {
			q.ID, v.One, v.Searched, v.Base = id, true, true, "../"
			v.Query["id"] = id
		} else {
			f := r.URL.Query()
			for _, k := range []string{"to", "from", "device", "id", "code", "since"} {
				if val := strings.TrimSpace(f.Get(k)); val != "" {
					v.Query[k] = val
				}
			}
			q = trace.Query{To: v.Query["to"], From: v.Query["from"], Device: v.Query["device"], ID: v.Query["id"], Code: v.Query["code"]}
			var err error
			if q.Since, err = trace.ParseWhen(v.Query["since"], time.Now()); err != nil {
				v.Err = "since: " + err.Error()
			}
			if len(v.Query) == 1 && v.Query["since"] != "" {
				// Every message of the period would match: the whole log,
				// read for nothing anyone can look through.
				v.Err = "Add a recipient, device, sender, message ID or reply code: a time alone matches every message."
			}
			v.Searched = len(v.Query) > 0 && v.Err == ""
		}
		if v.Searched && search != nil {
			select {
			case running <- struct{}{}:
			default:
				w.Header().Set("Retry-After", "5")
				http.Error(w, "other searches are running; try again in a few seconds", http.StatusServiceUnavailable)
				return
			}
			// The client's request: a client that hangs up stops it.
			ctx, cancel := context.WithTimeout(r.Context(), searchTimeout)
			stories, st, err := search(ctx, q, maxStoriesShown, pageLimits)
			cancel()
			<-running
			if r.Context().Err() != nil {
				return // nobody to answer
			}
			switch {
			case errors.Is(err, context.DeadlineExceeded):
				v.Err = fmt.Sprintf("The search took over %s and was stopped: narrow it (a shorter since, another filter), or use smtpbridge trace on the bridge's host.", searchTimeout)
			case err != nil:
				v.Err = err.Error()
			}
			v.More, v.Incomplete = st.More, st.Incomplete
			for i := len(stories) - 1; i >= 0; i-- { // newest first
				v.Stories = append(v.Stories, storyViewOf(stories[i]))
			}
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if v.One && len(v.Stories) == 0 && v.Err == "" {
			w.WriteHeader(http.StatusNotFound)
		}
		if err := traceTmpl.Execute(w, v); err != nil {
			http.Error(w, "rendering the trace page failed", http.StatusInternalServerError)
		}
	})
}

func storyViewOf(s trace.Story) storyView {
	sv := storyView{ID: s.ID, Class: classNone}
	for i, e := range s.Events {
		if sv.Device == "" {
			sv.Device, sv.Tenant, sv.Mailbox = e.Device, e.Tenant, e.Mailbox
		}
		ev := eventView{At: e.Time.UTC().Format("2006-01-02 15:04:05"), Kind: e.Kind, Hint: e.Hint}
		if s.HintShownBefore(i) {
			ev.Hint = ""
		}
		ev.Text = strings.TrimPrefix(e.Line(), e.Kind)
		switch e.Kind {
		case "delivered":
			ev.Class, sv.Class = classOK, classOK
		case "deferred":
			ev.Class = classWarn
		case "bounced", "dead", "rejected":
			ev.Class, sv.Class = classBad, classBad
		}
		sv.Events = append(sv.Events, ev)
		sv.Outcome = e.Kind
	}
	return sv
}
