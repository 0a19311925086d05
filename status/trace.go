package status

import (
	_ "embed"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/trace"
)

// Searcher finds messages' stories in the audit log (trace.Search over
// log.audit_file and its rotated files).
type Searcher func(q trace.Query, limit int) ([]trace.Story, error)

// maxStoriesShown bounds a search's results on the page: the newest.
const maxStoriesShown = 50

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
			v.Searched = len(v.Query) > 0 && v.Err == ""
		}
		if v.Searched && search != nil {
			stories, err := search(q, maxStoriesShown)
			if err != nil {
				v.Err = err.Error()
			}
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
	for _, e := range s.Events {
		if sv.Device == "" {
			sv.Device, sv.Tenant, sv.Mailbox = e.Device, e.Tenant, e.Mailbox
		}
		ev := eventView{At: e.Time.UTC().Format("2006-01-02 15:04:05"), Kind: e.Kind, Hint: e.Hint}
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
