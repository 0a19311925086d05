package daemon

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/httpauth"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/status"
	"github.com/smtpbridge/smtpbridge/trace"
)

// Handler is everything the http listener serves:
//
//	GET  /          the status page   } with http.auth's credential,
//	GET  /metrics   Prometheus metrics } if set
//	GET  /healthz   the process answers
//	GET  /readyz    listeners bound and the spool writable
//	POST /-/reload  reload the config       } the admin API, with
//	     /api/...   queue, blocks, drain    } http.admin_over_tcp only
//
// The admin API is always on the admin socket (adminHandler).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	info := status.PageInfo{Version: d.o.Version, Hostname: d.hostname}
	page := d.board.Handler(info, status.Sources{
		Queue: d.path.Queue, Blocks: d.path.Guard.Blocks, Spool: d.spoolUsage, Quotas: d.quotas, Replicas: d.knownReplicas, Holds: d.path.Queue.Holds})
	// The pages that do work for whoever loads them refuse a cross-site
	// browser request: a page elsewhere must not make the admin's browser
	// run searches here.
	pageH := httpauth.SameSite(httpauth.Basic(page, d.pageAuth))
	mux.Handle("GET /{$}", pageH)
	mux.Handle("GET /device/{name}", pageH)
	mux.Handle("GET /metrics", httpauth.SameSite(httpauth.Basic(d.m.Handler(), d.pageAuth)))
	traceH := httpauth.SameSite(httpauth.Basic(status.TraceHandler(info, d.searchAudit()), d.pageAuth))
	mux.Handle("GET /trace", traceH)
	mux.Handle("GET /message/{id}", traceH)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "ok\n")
	})
	mux.Handle("GET /readyz", d.readyHandler())
	admin := d.adminHandler()
	if !d.cfg.HTTP.AdminOverTCP {
		// Say where it is rather than 404 alone.
		admin = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			adminapi.WriteJSON(w, http.StatusNotFound, map[string]string{"error": "the admin API is on the bridge's socket " +
				adminapi.SocketFile + " in spool.dir, not on http.address: run the smtpbridge command on this host as the bridge's user " +
				"(or root) with --config; or set http.admin_over_tcp: true"})
		})
	}
	mux.Handle("/-/reload", admin)
	mux.Handle("/api/", admin)
	return mux
}

// adminHandler is the admin API, for callers the policy allows (a
// loopback or socket peer with the admin token):
//
//	POST /-/reload          reload the config
//	POST /api/drain         drain before a stop
//	GET  /api/replicas      the replicas sharing Redis
//	GET  /api/devices       when each device was last seen
//	     /api/blocks...     the blocked addresses
//	     /api/...           the queue
func (d *Daemon) adminHandler() http.Handler {
	admin := http.NewServeMux()
	admin.Handle("POST /-/reload", d.reloadHandler())
	admin.HandleFunc("POST /api/drain", d.drain)
	admin.HandleFunc("GET /api/replicas", func(w http.ResponseWriter, _ *http.Request) {
		reps := d.knownReplicas()
		if reps == nil {
			reps = []status.Replica{}
		}
		adminapi.WriteJSON(w, http.StatusOK, map[string]any{"replicas": reps})
	})
	admin.HandleFunc("GET /api/devices", func(w http.ResponseWriter, _ *http.Request) {
		// When each device was last seen (a login or a message), for
		// smtpbridge device list.
		seen := map[string]time.Time{}
		for name, t := range d.board.LastSeen() {
			if !t.IsZero() {
				seen[name] = t
			}
		}
		adminapi.WriteJSON(w, http.StatusOK, map[string]any{"last_seen": seen})
	})
	admin.Handle("/api/blocks", guard.Handler(d.path.Guard))
	admin.Handle("/api/blocks/", guard.Handler(d.path.Guard))
	admin.Handle("/api/", queue.Handler(d.path.Queue))
	return adminapi.Protect(admin, d.admin)
}

// readyCacheFor keeps /readyz from writing to the spool on every probe of
// a busy load balancer.
const readyCacheFor = time.Second

// readyHandler says whether the bridge should get mail: listeners bound,
// not shutting down, and the spool writable with room for a message of
// max_message_bytes within its quota and free-space reserve. It does not
// ask Entra ID or Exchange: while they fail, the queue holds the mail, so
// a load balancer should keep sending it here.
func (d *Daemon) readyHandler() http.Handler {
	var (
		mu      sync.Mutex
		checked time.Time
		last    error
	)
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		if time.Since(checked) > readyCacheFor {
			last = d.path.Server.Ready()
			if last == nil {
				last = d.sp.CheckWritable()
			}
			if last == nil {
				last = d.sp.CanTake(d.path.Server.Settings().Limits.MaxMessageBytes)
			}
			checked = time.Now()
		}
		err := last
		mu.Unlock()
		if err == nil && d.draining.Load() {
			err = errors.New("draining (smtpbridge drain): delivering the queue before a stop")
		}
		if err != nil {
			text(w, http.StatusServiceUnavailable, "not ready: "+err.Error()+"\n")
			return
		}
		if sh := d.path.Shared; sh != nil && !sh.Shared() {
			// Ready all the same: the mail still goes, more slowly.
			text(w, http.StatusOK, "ready; Redis is out of reach: each mailbox's limits are this replica's conservative share until it returns\n")
			return
		}
		text(w, http.StatusOK, "ready\n")
	})
}

// drain is POST /api/drain: from now on /readyz says not ready, so
// that no new devices are sent here, and every queued message is due
// now, but a held mailbox's, whose probe goes now instead. smtpbridge
// drain then watches the queue empty.
func (d *Daemon) drain(w http.ResponseWriter, _ *http.Request) {
	d.draining.Store(true)
	n := d.path.Queue.DueAll()
	d.log.Info().Int("retried", n).Msg("draining: not ready for new devices; every queued message is due now (a held mailbox's probe goes first)")
	adminapi.WriteJSON(w, http.StatusOK, map[string]int{"retried": n})
}

// searchAudit searches the audit log the config names now (nil without
// one, when the bridge starts; a reload that sets it takes effect at
// the next search).
func (d *Daemon) searchAudit() status.Searcher {
	return func(ctx context.Context, q trace.Query, limit int, lim trace.Limits) ([]trace.Story, trace.Stats, error) {
		d.mu.Lock()
		path := d.cfg.Log.AuditFile
		d.mu.Unlock()
		if path == "" {
			return nil, trace.Stats{}, errors.New("no audit log: set log.audit_file in the config and reload")
		}
		return trace.SearchLog(ctx, path, q, limit, lim)
	}
}

func text(w http.ResponseWriter, code int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	w.Write([]byte(s))
}

// spoolUsage is the spool's fill for the status page.
func (d *Daemon) spoolUsage() status.SpoolUsage {
	u, q := d.sp.Usage(), d.sp.Quota()
	return status.SpoolUsage{Bytes: u.Bytes, MaxBytes: q.MaxBytes, Free: u.Free, MinFree: q.MinFreeBytes,
		Devices: u.Devices, Share: q.DeviceMaxBytes}
}

// quotas are the mailboxes' recipients in the last day for the status
// page.
func (d *Daemon) quotas() []status.MailboxQuota {
	var out []status.MailboxQuota
	limits := d.path.Limits()
	for mb, n := range limits.Recipients() {
		out = append(out, status.MailboxQuota{Tenant: mb.Tenant, Mailbox: mb.Address, Used: n, Limit: limits.DailyLimit(mb.Tenant)})
	}
	return out
}
