package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/message"
)

// Observer is told about connections and logins; metrics and the status
// page implement it. Message events go to an audit.Observer instead.
type Observer interface {
	Connection(listener string)
	// ConnectionClosed reports a connection's end; silent: the client
	// closed it before sending anything (a load balancer's or
	// Kubernetes' TCP health check).
	ConnectionClosed(listener string, silent bool)
	// ConnectionRefused reports a connection refused at the greeting:
	// reason is network (allowed_networks), blocked, limit or limit_ip.
	ConnectionRefused(listener, reason string)
	// AuthAttempt reports a login. device is the device the username
	// names ("" for an unknown username); result says whether it
	// succeeded.
	AuthAttempt(listener, mechanism, result, device string, remote netip.Addr)
}

type nopObserver struct{}

func (nopObserver) Connection(string)                                      {}
func (nopObserver) ConnectionClosed(string, bool)                          {}
func (nopObserver) ConnectionRefused(string, string)                       {}
func (nopObserver) AuthAttempt(string, string, string, string, netip.Addr) {}

// TLSMode is how a listener speaks TLS.
type TLSMode string

// Listener TLS modes, as the config names them.
const (
	TLSNone     TLSMode = "none"
	TLSStartTLS TLSMode = "starttls" // offers STARTTLS
	TLSImplicit TLSMode = "implicit" // TLS from the first byte, port-465 style
)

// Listener is one device-facing listener.
type Listener struct {
	Name    string
	Address string // host:port
	TLS     TLSMode
	// Certificate, MinTLSVersion (a tls.VersionTLS1x) and LegacyCiphers
	// apply with TLS other than TLSNone.
	Certificate   *tls.Certificate
	MinTLSVersion uint16
	LegacyCiphers bool
	// AllowInsecureAuth allows AUTH before TLS.
	AllowInsecureAuth bool
	// Networks, if set, are the only sources the listener talks to;
	// others get 554 5.7.1 at the greeting.
	Networks []netip.Prefix
	// AllowUnauthenticated lets devices without AUTH send here,
	// recognised by their source address.
	AllowUnauthenticated bool
}

// Limits bound what one message and one session may take.
type Limits struct {
	MaxMessageBytes int64
	MaxRecipients   int
	// CommandTimeout is the longest wait for a client's next command, or
	// for more data during DATA; SessionTimeout the longest a session
	// lasts (0: no limit).
	CommandTimeout time.Duration
	SessionTimeout time.Duration
	// MaxErrors error replies close a session (0: no limit).
	MaxErrors     int
	MaxLineLength int
}

// Options configure a Server.
type Options struct {
	Hostname string // greeting and Received name
	Settings
	// Deliverer takes each message the devices send.
	Deliverer Deliverer
	Observer  Observer
	Events    audit.Observer
	// Guard blocks password guessing and bounds connections; nil for one
	// that blocks nothing and bounds nothing.
	Guard *guard.Guard
	Log   zerolog.Logger
}

// Settings is what a reload replaces: the devices, their policies, the
// limits and the listeners' TLS settings. A session takes the settings
// current at each MAIL FROM and keeps them for that message.
type Settings struct {
	Listeners []Listener
	Limits    Limits
	Directory *Directory
}

// writeTimeout bounds each reply's write to a device.
const writeTimeout = time.Minute

// Server runs the device-facing listeners.
type Server struct {
	hostname  string
	deliverer Deliverer
	observer  Observer
	events    audit.Observer
	guard     *guard.Guard
	log       zerolog.Logger
	// ctx is cancelled when Shutdown's grace period ends: deliveries in
	// flight stop, replaced generations close their sessions.
	ctx    context.Context
	cancel context.CancelFunc

	settings  atomic.Pointer[Settings]
	listeners map[string]listenerSettings // Settings().Listeners compiled; s.mu is held

	mu        sync.Mutex // Listen, Reload and Shutdown, one at a time
	endpoints []*endpoint
	refusing  chan struct{} // refusals being answered, at most maxRefusing
	stopping  atomic.Bool
}

// listenerSettings is one listener's configuration, compiled.
type listenerSettings struct {
	Listener
	tls         *tls.Config // nil for tls: none
	implicitTLS bool
}

// NewServer checks the listeners' TLS settings and builds the server. It
// binds nothing until Listen.
func NewServer(o Options) (*Server, error) {
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	if o.Events == nil {
		o.Events = audit.Nop{}
	}
	if o.Guard == nil {
		o.Guard = guard.New(guard.Settings{})
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{hostname: o.Hostname, deliverer: o.Deliverer,
		observer: o.Observer, events: o.Events, guard: o.Guard, log: o.Log, ctx: ctx, cancel: cancel,
		refusing: make(chan struct{}, maxRefusing)}
	st := o.Settings
	compiled, err := compileListeners(st.Listeners)
	if err != nil {
		cancel()
		return nil, err
	}
	s.settings.Store(&st)
	s.listeners = compiled
	for _, l := range o.Listeners {
		s.endpoints = append(s.endpoints, &endpoint{srv: s, name: l.Name, address: l.Address})
	}
	return s, nil
}

// Settings returns the settings new sessions and messages get.
func (s *Server) Settings() *Settings { return s.settings.Load() }

func compileListeners(ls []Listener) (map[string]listenerSettings, error) {
	out := map[string]listenerSettings{}
	for _, l := range ls {
		tlsCfg, err := listenerTLS(l)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		out[l.Name] = listenerSettings{Listener: l, tls: tlsCfg, implicitTLS: l.TLS == TLSImplicit}
	}
	return out, nil
}

// Reload replaces the settings. It is all or nothing: if a listener's new
// TLS certificate does not load, nothing changes. Listeners are matched by
// name; their addresses stay bound as they are (a changed address needs a
// restart, which the caller reports). Sessions in progress finish with
// the settings they started with, and each message uses the settings
// current at its MAIL FROM.
func (s *Server) Reload(st Settings) error {
	compiled, err := compileListeners(st.Listeners)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.Directory != nil {
		st.Directory.Inherit(s.Settings().Directory)
	}
	s.settings.Store(&st)
	s.listeners = compiled
	for _, e := range s.endpoints {
		if e.tracker == nil {
			continue
		}
		ls, ok := compiled[e.name]
		if !ok {
			// Removed from the config: it keeps its last settings until
			// a restart unbinds it.
			continue
		}
		e.replace(s.newGeneration(e, ls, s.Settings().Limits), s.ctx)
	}
	return nil
}

func (s *Server) newGeneration(e *endpoint, ls listenerSettings, limits Limits) *generation {
	ss := smtp.NewServer(&backend{s: s, listener: e.name, ls: ls, limits: limits})
	ss.Domain = s.hostname
	ss.MaxMessageBytes = limits.MaxMessageBytes
	// The session enforces max_recipients itself, so that it can count
	// and log the refusal.
	ss.MaxRecipients = 0
	// Devices' DSN requests (RET, ENVID, NOTIFY, ORCPT) go on to Exchange,
	// which offers DSN; refusing them would lose the message of a script
	// that sends them whatever EHLO says.
	ss.EnableDSN = true
	// RFC 5322 caps lines at 998 bytes, but ERP systems send HTML in
	// one long line and Exchange takes it; go-smtp's default of 2000
	// would refuse such a message on every retry.
	ss.MaxLineLength = limits.MaxLineLength
	ss.ReadTimeout = limits.CommandTimeout
	ss.WriteTimeout = writeTimeout
	ss.AllowInsecureAuth = ls.AllowInsecureAuth
	ss.ErrorLog = errorLog{log: s.log.With().Str("listener", e.name).Logger()}
	if ls.TLS == TLSStartTLS {
		ss.TLSConfig = ls.tls
	}
	return &generation{cfg: ls, limits: limits, smtp: ss, queue: newConnQueue(e.tracker.Addr()), drained: make(chan struct{})}
}

// listenerTLS returns the TLS configuration of a listener, nil for none.
func listenerTLS(l Listener) (*tls.Config, error) {
	if l.TLS == TLSNone {
		return nil, nil
	}
	if l.Certificate == nil {
		return nil, fmt.Errorf("tls: %s needs a certificate", l.TLS)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{*l.Certificate}, MinVersion: l.MinTLSVersion}
	if l.LegacyCiphers {
		cfg.CipherSuites = legacySuites()
	}
	return cfg, nil
}

// legacySuites are Go's secure suites plus what old devices speak: RSA key
// exchange, CBC with SHA-1, and 3DES. Go no longer offers these by default
// but still negotiates them when listed explicitly (EXCHANGE.md, "Go's TLS
// and old devices"). TLS 1.3 suites are not configurable and stay on.
func legacySuites() []uint16 {
	var ids []uint16
	for _, cs := range tls.CipherSuites() {
		ids = append(ids, cs.ID)
	}
	return append(ids,
		tls.TLS_RSA_WITH_AES_128_CBC_SHA,
		tls.TLS_RSA_WITH_AES_256_CBC_SHA,
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA,
		tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
	)
}

// Listen binds every listener. On error nothing stays bound.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.endpoints {
		raw, err := net.Listen("tcp", e.address)
		if err != nil {
			for _, e := range s.endpoints {
				if e.tracker != nil {
					e.tracker.Close()
					e.tracker = nil
				}
			}
			return fmt.Errorf("listener %s: %w", e.name, err)
		}
		e.tracker = &trackingListener{Listener: raw, name: e.name, observer: s.observer, conns: map[net.Conn]struct{}{}}
	}
	return nil
}

// Serve serves every bound listener until Shutdown.
func (s *Server) Serve() {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.Settings()
	for _, e := range s.endpoints {
		ls := s.listeners[e.name]
		e.replace(s.newGeneration(e, ls, st.Limits), s.ctx)
		s.log.Info().Str("listener", e.name).Str("address", e.tracker.Addr().String()).
			Str("tls", string(ls.TLS)).Bool("allow_insecure_auth", ls.AllowInsecureAuth).
			Bool("legacy_ciphers", ls.LegacyCiphers).Msg("listening")
		go e.serve(func(err error) {
			s.log.Error().Err(err).Str("listener", e.name).Msg("accepting connections failed; retrying")
		})
	}
}

// Addr returns the bound address of the named listener, or nil.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.endpoints {
		if e.name == name && e.tracker != nil {
			return e.tracker.Addr()
		}
	}
	return nil
}

// Ready says whether every listener is bound and serving; false once
// Shutdown began.
func (s *Server) Ready() error {
	if s.stopping.Load() {
		return errors.New("shutting down")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.endpoints {
		if e.tracker == nil || e.current() == nil {
			return fmt.Errorf("listener %s is not serving", e.name)
		}
	}
	return nil
}

// Shutdown stops accepting connections and waits, until ctx ends, for
// sessions to finish; then it closes what is left. Deliveries in flight are
// cancelled when ctx ends, and their devices get a 451.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopping.Store(true)
	s.mu.Lock()
	eps := append([]*endpoint(nil), s.endpoints...)
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, s.cancel)
	defer stop()
	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	for _, e := range eps {
		if e.tracker == nil {
			continue
		}
		wg.Go(func() {
			if err := e.shutdown(ctx, s.ctx); err != nil {
				emu.Lock()
				errs = append(errs, fmt.Errorf("listener %s: %w", e.name, err))
				emu.Unlock()
			}
		})
	}
	wg.Wait()
	s.cancel()
	return errors.Join(errs...)
}

type backend struct {
	s        *Server
	listener string
	ls       listenerSettings
	limits   Limits
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	id := message.NewID()
	remote := remoteAddr(c.Conn().RemoteAddr())
	log := b.s.log.With().Str("conn_id", id).Str("listener", b.listener).Str("remote", remote.String()).Logger()
	if st, ok := c.TLSConnectionState(); ok {
		log = log.With().Str("tls", tls.VersionName(st.Version)).Str("cipher", tls.CipherSuiteName(st.CipherSuite)).Logger()
	}
	log.Debug().Str("helo", message.CleanText(c.Hostname())).Msg("session started")
	return &session{srv: b.s, listener: b.listener, ls: b.ls, limits: b.limits, conn: c, tc: trackedOf(c.Conn()),
		remote: remote, connLog: log, log: log, started: time.Now()}, nil
}

// trackedOf finds the tracked connection under any TLS; nil in tests that
// serve go-smtp without the bridge's listeners.
func trackedOf(c net.Conn) *trackedConn {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	tc, _ := c.(*trackedConn)
	return tc
}

func remoteAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// errorLog sends go-smtp's own errors to the process log: at warning
// level, but a client that went away (a reset, a close, before or in the
// middle of a session: a health check, a device switched off) at debug
// level, since nothing is wrong with the bridge.
type errorLog struct{ log zerolog.Logger }

func (e errorLog) Printf(format string, v ...any) {
	ev := e.log.Warn()
	for _, a := range v {
		if err, ok := a.(error); ok && wentAway(err) {
			ev = e.log.Debug()
		}
	}
	ev.Msg(strings.TrimSpace(fmt.Sprintf(format, v...)))
}

// wentAway says whether err is the client closing or resetting the
// connection.
func wentAway(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (e errorLog) Println(v ...any) {
	e.log.Warn().Msg(strings.TrimSpace(fmt.Sprintln(v...)))
}
