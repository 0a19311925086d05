package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/spool"
)

// Observer is told about events metrics count. The metrics package
// implements it; nil means nobody listens.
type Observer interface {
	Connection(listener string)
	AuthAttempt(listener, mechanism, result string)
}

type nopObserver struct{}

func (nopObserver) Connection(string)                  {}
func (nopObserver) AuthAttempt(string, string, string) {}

// Options configure a Server.
type Options struct {
	Hostname  string // greeting and Received name
	Listeners []config.Listener
	Limits    config.Limits
	Directory *Directory
	Deliverer Deliverer // sync mode, and hybrid/queue without a Spooler
	Spooler   Spooler   // hybrid and queue mode
	// Mode is the delivery mode of devices without their own (default
	// hybrid); SyncTimeout is how long a hybrid session waits.
	Mode        string
	SyncTimeout time.Duration
	Observer    Observer
	Log         zerolog.Logger
}

// maxLineLength bounds any line a device sends, command or message.
const maxLineLength = 64 << 10

// Session timeouts; the security issue makes them configurable.
var (
	commandTimeout = 5 * time.Minute
	writeTimeout   = time.Minute
)

// Server runs the device-facing listeners.
type Server struct {
	hostname  string
	dir       *Directory
	deliverer Deliverer
	spooler   Spooler
	mode      string
	syncWait  time.Duration
	observer  Observer
	log       zerolog.Logger
	ctx       context.Context
	cancel    context.CancelFunc

	mu        sync.Mutex
	endpoints []*endpoint
}

type endpoint struct {
	cfg     config.Listener
	smtp    *smtp.Server
	tls     *tls.Config // nil for tls: none
	ln      net.Listener
	tracker *trackingListener
}

// NewServer checks the listeners' TLS settings and builds the server. It
// binds nothing until Listen.
func NewServer(o Options) (*Server, error) {
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	if o.Mode == "" {
		o.Mode = config.ModeHybrid
	}
	if o.SyncTimeout == 0 {
		o.SyncTimeout = config.DefaultSyncTimeout
	}
	s := &Server{hostname: o.Hostname, dir: o.Directory, deliverer: o.Deliverer, spooler: o.Spooler,
		mode: o.Mode, syncWait: o.SyncTimeout, observer: o.Observer, log: o.Log, ctx: ctx, cancel: cancel}
	for _, l := range o.Listeners {
		tlsCfg, err := ListenerTLS(l)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		ss := smtp.NewServer(&backend{s: s, listener: l.Name})
		ss.Domain = o.Hostname
		ss.MaxMessageBytes = o.Limits.MaxMessageBytes
		ss.MaxRecipients = o.Limits.MaxRecipients
		// RFC 5322 caps lines at 998 bytes, but ERP systems send HTML in
		// one long line and Exchange takes it; go-smtp's default of 2000
		// would refuse such a message on every retry.
		ss.MaxLineLength = maxLineLength
		ss.ReadTimeout = commandTimeout
		ss.WriteTimeout = writeTimeout
		ss.AllowInsecureAuth = l.AllowInsecureAuth
		ss.ErrorLog = errorLog{log: o.Log.With().Str("listener", l.Name).Logger()}
		if l.TLS == config.TLSStartTLS {
			ss.TLSConfig = tlsCfg
		}
		s.endpoints = append(s.endpoints, &endpoint{cfg: l, smtp: ss, tls: tlsCfg})
	}
	return s, nil
}

// ListenerTLS returns the TLS configuration of a listener, nil for none.
func ListenerTLS(l config.Listener) (*tls.Config, error) {
	if l.TLS == config.TLSNone {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(l.CertFile, l.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load cert_file/key_file: %w", err)
	}
	minVersion, err := config.ParseTLSVersion(l.MinTLSVersion)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: minVersion}
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
		raw, err := net.Listen("tcp", e.cfg.Address)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listener %s: %w", e.cfg.Name, err)
		}
		// Track the raw connections; TLS goes on top, so that go-smtp
		// still sees a *tls.Conn on implicit-TLS listeners.
		e.tracker = &trackingListener{Listener: raw, conns: map[net.Conn]struct{}{}}
		e.ln = e.tracker
		if e.cfg.TLS == config.TLSImplicit {
			e.ln = tls.NewListener(e.tracker, e.tls)
		}
	}
	return nil
}

// trackingListener remembers open connections, so that Shutdown can close
// the ones still open when its grace period ends (go-smtp's Shutdown only
// waits for them).
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	return tc, nil
}

func (l *trackingListener) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		c.(*trackedConn).Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

func (s *Server) closeListeners() {
	for _, e := range s.endpoints {
		if e.ln != nil {
			e.ln.Close()
			e.ln = nil
		}
	}
}

// Serve serves every bound listener until Shutdown.
func (s *Server) Serve() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.endpoints {
		e := e
		s.log.Info().Str("listener", e.cfg.Name).Str("address", e.ln.Addr().String()).
			Str("tls", e.cfg.TLS).Bool("allow_insecure_auth", e.cfg.AllowInsecureAuth).
			Bool("legacy_ciphers", e.cfg.LegacyCiphers).Msg("listening")
		go func() {
			if err := e.smtp.Serve(e.ln); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
				s.log.Error().Err(err).Str("listener", e.cfg.Name).Msg("listener stopped")
			}
		}()
	}
}

// Addr returns the bound address of the named listener, or nil.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.endpoints {
		if e.cfg.Name == name && e.ln != nil {
			return e.ln.Addr()
		}
	}
	return nil
}

// Shutdown stops accepting connections and waits, until ctx ends, for
// sessions to finish; then it closes what is left. Deliveries in flight are
// cancelled when ctx ends, and their devices get a 451.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	s.mu.Lock()
	eps := append([]*endpoint(nil), s.endpoints...)
	s.mu.Unlock()
	var wg sync.WaitGroup
	var emu sync.Mutex
	for _, e := range eps {
		wg.Go(func() {
			err := e.smtp.Shutdown(ctx)
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				e.tracker.closeAll()
			}
			if err != nil && !errors.Is(err, smtp.ErrServerClosed) {
				emu.Lock()
				errs = append(errs, fmt.Errorf("listener %s: %w", e.cfg.Name, err))
				emu.Unlock()
			}
		})
	}
	stop := context.AfterFunc(ctx, s.cancel)
	defer stop()
	wg.Wait()
	s.cancel()
	return errors.Join(errs...)
}

type backend struct {
	s        *Server
	listener string
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	id := newID()
	remote := remoteAddr(c.Conn().RemoteAddr())
	log := b.s.log.With().Str("conn_id", id).Str("listener", b.listener).Str("remote", remote.String()).Logger()
	if st, ok := c.TLSConnectionState(); ok {
		log = log.With().Str("tls", tls.VersionName(st.Version)).Str("cipher", tls.CipherSuiteName(st.CipherSuite)).Logger()
	}
	b.s.observer.Connection(b.listener)
	log.Debug().Str("helo", cleanText(c.Hostname())).Msg("session started")
	return &session{srv: b.s, listener: b.listener, conn: c, remote: remote, log: log, msgLog: log, started: time.Now()}, nil
}

func remoteAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// newID returns a short random ID for connections and messages.
func newID() string { return spool.NewID() }

// errorLog sends go-smtp's own errors to the process log.
type errorLog struct{ log zerolog.Logger }

func (e errorLog) Printf(format string, v ...any) {
	e.log.Warn().Msg(strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (e errorLog) Println(v ...any) {
	e.log.Warn().Msg(strings.TrimSpace(fmt.Sprintln(v...)))
}
