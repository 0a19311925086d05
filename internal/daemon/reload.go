package daemon

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/memlimit"
	"github.com/smtpbridge/smtpbridge/metrics"
	"github.com/smtpbridge/smtpbridge/queue"
)

// ReloadResult is what a reload did, for POST /-/reload.
type ReloadResult struct {
	OK bool `json:"ok"`
	// Problems stopped the reload: the previous config stays in use.
	Problems []string `json:"problems,omitempty"`
	// Warnings did not: settings that need a restart, and the config's
	// own warnings.
	Warnings []string `json:"warnings,omitempty"`
}

// Reload reads the config file again and applies it as a whole: devices,
// their policies and limits, tenants, delivery settings, listener TLS
// settings, log level and audit file. A config with any problem changes
// nothing. Sessions in progress are not dropped (each keeps the settings
// it started with until its next message) and queued messages stay
// queued.
func (d *Daemon) Reload(source string) ReloadResult {
	d.mu.Lock()
	defer d.mu.Unlock()
	log := d.log.With().Str("event", "reload").Str("source", source).Logger()
	res := d.apply()
	d.m.Reloaded(res.OK)
	if !res.OK {
		for _, p := range res.Problems {
			log.Error().Msg("reload: " + p)
		}
		log.Error().Int("problems", len(res.Problems)).Msg("configuration reload failed; the previous configuration stays in use")
		d.board.Reloaded(false, res.Problems)
		return res
	}
	for _, w := range res.Warnings {
		log.Warn().Msg("reload: " + w)
	}
	d.board.Reloaded(true, nil)
	log.Info().Int("devices", len(d.cfg.Devices)).Int("tenants", len(d.cfg.Tenants)).Int("warnings", len(res.Warnings)).
		Msg("configuration reloaded")
	go returnGarbage()
	return res
}

func (d *Daemon) apply() ReloadResult {
	cfg, res := d.load()
	if cfg == nil {
		return res
	}
	warnings := append(res.Warnings, restartOnly(d.cfg, cfg)...)
	if d.sb != nil {
		// Sandbox mode stays on until a restart, whatever the file says.
		cfg.Sandbox.Dir = d.cfg.Sandbox.Dir
		if err := d.sb.Register(cfg.Inventory()); err != nil {
			return ReloadResult{Problems: []string{err.Error()}}
		}
	} else {
		cfg.Sandbox.Dir = ""
	}
	// Keep what needs a restart as it runs, so that the next reload
	// compares against it again.
	cfg.Hostname, cfg.Spool.Dir, cfg.HTTP, cfg.Log.Format = d.cfg.Hostname, d.cfg.Spool.Dir, d.cfg.HTTP, d.cfg.Log.Format
	cfg.Cluster = d.cfg.Cluster
	cfg.Listeners = runningListeners(d.cfg.Listeners, cfg.Listeners)

	parts := PartsOf(cfg, d.ms)
	parts.Hostname = d.hostname
	if err := d.path.Reconfigure(parts); err != nil {
		return ReloadResult{Problems: []string{err.Error()}}
	}
	d.applyMemoryLimit(cfg)
	d.m.Configure(parts.Inventory, metrics.Options{PerDevice: cfg.Metrics.PerDeviceOn()})
	d.board.Configure(parts.Inventory)
	d.sent.SetKeep(sentItemsKeep(cfg))
	d.checkSignIns(cfg)
	if err := d.audit.SetFile(cfg.Log.AuditFile); err != nil {
		warnings = append(warnings, fmt.Sprintf("log.audit_file: %v; the audit log goes to the previous file", err))
		cfg.Log.AuditFile = d.cfg.Log.AuditFile
	}
	SetLogLevel(cfg.Log.Level)
	d.cfg = cfg
	return ReloadResult{OK: true, Warnings: append(warnings, orphans(d.path.Queue, cfg)...)}
}

// load reads the config file again, in sandbox mode if the bridge runs
// in it: the config and its warnings, or nil and the problems.
func (d *Daemon) load() (*config.Config, ReloadResult) {
	path := d.cfg.Path
	load := config.Load
	if d.sb != nil {
		// Sandbox mode stays on until a restart, whatever the file says.
		load = func(p string) (*config.Config, error) { return config.LoadSandbox(p, d.cfg.Sandbox.Dir) }
	}
	cfg, err := load(path)
	var ce *config.Error
	switch {
	case errors.As(err, &ce):
		var res ReloadResult
		for _, p := range ce.Problems {
			if !p.Warning {
				res.Problems = append(res.Problems, p.In(path))
			}
		}
		return nil, res
	case err != nil:
		return nil, ReloadResult{Problems: []string{err.Error()}}
	}
	var res ReloadResult
	for _, p := range cfg.Warnings {
		res.Warnings = append(res.Warnings, p.In(path))
	}
	return cfg, res
}

// orphans warns about queued messages of tenants the config no longer
// has: they cannot be delivered and become dead letters at max_age,
// unless the tenant comes back.
func orphans(q *queue.Queue, cfg *config.Config) []string {
	n := q.CountByTenant()
	var out []string
	for _, t := range slices.Sorted(maps.Keys(n)) {
		if cfg.Tenant(t) != nil {
			continue
		}
		out = append(out, fmt.Sprintf("%d queued message(s) of tenant %q, which the config no longer has, cannot be delivered; "+
			"add the tenant back, or drop them with smtpbridge queue drop", n[t], t))
	}
	return out
}

// restartOnly lists the settings that differ between the running config
// and next but only take effect after a restart.
func restartOnly(cur, next *config.Config) []string {
	var out []string
	changed := func(key, from, to string) {
		if from != to {
			out = append(out, fmt.Sprintf("%s changed from %q to %q; restart smtpbridge to apply it (the rest of the new config is in use)", key, from, to))
		}
	}
	changed("hostname", cur.Hostname, next.Hostname)
	changed("spool.dir", cur.Spool.Dir, next.Spool.Dir)
	changed("http.address", cur.HTTP.Address, next.HTTP.Address)
	changed("http.admin_over_tcp", fmt.Sprint(cur.HTTP.AdminOverTCP), fmt.Sprint(next.HTTP.AdminOverTCP))
	changed("log.format", cur.Log.Format, next.Log.Format)
	changed("sandbox.dir", cur.Sandbox.Dir, next.Sandbox.Dir)
	// How to reach Redis and this replica's name in it (the password
	// file's content is compared, never shown).
	cluster := func(c config.Cluster) string {
		r := c.Redis
		return fmt.Sprintf("redis %s sentinel %v/%s cluster %v user %q tls %v ca %q prefix %q instance %q ttl %s",
			r.Address, r.SentinelAddresses, r.MasterName, r.ClusterAddresses, r.Username, r.TLS, r.CAFile, r.KeyPrefix, c.Instance, c.LeaseTTL)
	}
	if cluster(cur.Cluster) != cluster(next.Cluster) || cur.Cluster.Redis.Password.Value() != next.Cluster.Redis.Password.Value() {
		out = append(out, "cluster changed; restart smtpbridge to apply it (the rest of the new config is in use)")
	}
	for _, l := range next.Listeners {
		i := slices.IndexFunc(cur.Listeners, func(c config.Listener) bool { return c.Name == l.Name })
		if i < 0 {
			out = append(out, fmt.Sprintf("listener %q is new; restart smtpbridge to open it", l.Name))
			continue
		}
		changed(fmt.Sprintf("listener %q address", l.Name), cur.Listeners[i].Address, l.Address)
	}
	for _, l := range cur.Listeners {
		if !slices.ContainsFunc(next.Listeners, func(n config.Listener) bool { return n.Name == l.Name }) {
			out = append(out, fmt.Sprintf("listener %q was removed; it keeps serving with its last settings until smtpbridge restarts", l.Name))
		}
	}
	return out
}

// runningListeners is next's listeners as they can run without a
// restart: the running ones, by name, with next's settings but their bound
// address; new ones left out; removed ones kept as they are.
func runningListeners(cur, next []config.Listener) []config.Listener {
	var out []config.Listener
	for _, c := range cur {
		l := c
		if i := slices.IndexFunc(next, func(n config.Listener) bool { return n.Name == c.Name }); i >= 0 {
			l = next[i]
			l.Address = c.Address
		}
		out = append(out, l)
	}
	return out
}

// reloadHandler serves POST /-/reload: 200 with the warnings, or 422 with
// the problems that kept the previous config in use.
func (d *Daemon) reloadHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res := d.Reload("http")
		code := http.StatusOK
		if !res.OK {
			code = http.StatusUnprocessableEntity
		}
		adminapi.WriteJSON(w, code, res)
	})
}

// applyMemoryLimit sets the Go runtime's soft memory limit
// (limits.max_memory_bytes), and logs it.
func (d *Daemon) applyMemoryLimit(cfg *config.Config) {
	l := memlimit.Apply(cfg.Limits.MaxMemoryBytes)
	ev := d.log.Info().Str("source", l.Source)
	if l.Bytes > 0 {
		ev = ev.Int64("bytes", l.Bytes)
	}
	ev.Msg("memory limit")
}
