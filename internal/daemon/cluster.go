package daemon

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/smtpbridge/smtpbridge/cluster"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/httpserve"
	"github.com/smtpbridge/smtpbridge/status"
)

// How often the replicas share their state through Redis.
const (
	// blocksSyncEvery: how soon a block made or lifted by another
	// replica applies here.
	blocksSyncEvery = time.Second
	// rosterEvery: how often a replica tells the others what its spool
	// holds.
	rosterEvery = 5 * time.Second
)

// serveAdminSocket serves the admin API on spool.dir's admin socket, the
// command line's way in. Without it (a path too long for a socket, a
// system without them) the bridge runs all the same: the log says what
// that costs.
func (d *Daemon) serveAdminSocket(cfg *config.Config) *http.Server {
	ln, err := adminapi.Listen(cfg.Spool.Dir)
	if err != nil {
		d.log.Error().Err(err).Bool("admin_over_tcp", cfg.HTTP.AdminOverTCP).
			Msg("no admin socket: smtpbridge reload, queue, drain and blocks cannot reach this bridge but with http.admin_over_tcp: true (SIGHUP still reloads)")
		return nil
	}
	srv := httpserve.Server(d.adminHandler())
	srv.ConnContext = adminapi.SocketConnContext
	go func() {
		if err := srv.Serve(httpserve.Limit(ln, httpserve.MaxConnections)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error().Err(err).Msg("admin socket stopped")
		}
	}()
	return srv
}

// clusterLoop brings the other replicas' blocks and unblocks here, and
// this one's there, every blocksSyncEvery, and tells the others what
// this replica's spool holds every rosterEvery, until stop.
func (d *Daemon) clusterLoop(stop <-chan struct{}) {
	t := time.NewTicker(blocksSyncEvery)
	defer t.Stop()
	failing := false
	var published time.Time
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if time.Since(published) >= rosterEvery {
			published = time.Now()
			d.publishReplica()
		}
		ctx, cancel := context.WithTimeout(context.Background(), blocksSyncEvery)
		applied, err := d.path.Guard.Sync(ctx)
		cancel()
		for _, b := range applied {
			d.log.Warn().Str("remote", b.Addr).Str("replica", b.Replica).Time("until", b.Until).Int("failures", b.Failures).
				Msg("address blocked by another replica: refused here too")
		}
		switch {
		case err != nil && !failing:
			d.log.Warn().Err(err).Msg("blocks cannot be shared with the other replicas: each replica blocks on its own until Redis answers")
		case err == nil && failing:
			d.log.Info().Msg("blocks are shared with the other replicas again")
		}
		failing = err != nil
	}
}

// publishReplica tells the other replicas what this one's spool holds,
// and reads what theirs do, for the status page and smtpbridge queue.
func (d *Daemon) publishReplica() {
	ctx, cancel := context.WithTimeout(context.Background(), blocksSyncEvery)
	defer cancel()
	st := d.path.Queue.Stats()
	if err := d.roster.Publish(ctx, cluster.Replica{Queued: st.Queued, Deferred: st.Deferred, Dead: st.Dead, Oldest: st.Oldest}); err != nil {
		return // Redis out of reach: the limiter says so
	}
	reps, err := d.roster.Replicas(ctx, 3*rosterEvery)
	if err != nil {
		return
	}
	d.replicasMu.Lock()
	d.replicas = reps
	d.replicasMu.Unlock()
}

// knownReplicas are the replicas' accounts last read, this one's marked.
func (d *Daemon) knownReplicas() []status.Replica {
	d.replicasMu.Lock()
	defer d.replicasMu.Unlock()
	var out []status.Replica
	for _, r := range d.replicas {
		out = append(out, status.Replica{Replica: r, This: r.Instance == d.instance})
	}
	return out
}
