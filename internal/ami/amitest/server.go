package amitest

import (
	"crypto/tls"
	_ "embed"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// The lab PBX's config files (fixtures/asterisk-20/pbx and asterisk-22/pbx),
// embedded so that `guard demo` works from the binary alone.
var (
	// DefaultSIPConf is the Asterisk 20 lab's sip.conf: peers 200 (secret
	// Leaky200), 201 and carrier.
	//go:embed testdata/asterisk-20/pbx/sip.conf
	DefaultSIPConf string
	// DefaultPJSIPConf is the Asterisk 20 lab's pjsip.conf: endpoints 300
	// (auth 300-auth, password Leaky300) and 301.
	//go:embed testdata/asterisk-20/pbx/pjsip.conf
	DefaultPJSIPConf string
	// PJSIPConf22 is the Asterisk 22 lab's pjsip.conf (adds a PJSIP
	// carrier). Use it with Banner22 to look like the asterisk-22 dialog.
	//go:embed testdata/asterisk-22/pbx/pjsip.conf
	PJSIPConf22 string
)

// Version is the Asterisk release a [Server] answers as.
type Version string

// The versions the server imitates.
const (
	// Asterisk20 (the default) answers as Asterisk 20.20.1 (and, with
	// Banner22 and PJSIPConf22, as 22.10.1): testdata/asterisk-20 and -22.
	Asterisk20 Version = "20"
	// Asterisk11 answers as Asterisk 11.25.3, AMI 1.3: testdata/asterisk-11.
	// No security events, no PJSIP, the 1.8/11 event and list formats.
	Asterisk11 Version = "11"
	// Asterisk1_8 answers as Asterisk 11 does, except where Asterisk 1.8's
	// manager.c differs in what the guard uses: AMI 1.1, and Hangup takes
	// no /regex/ (the value is looked up as a channel name or uniqueid, so
	// a regex answers "No such channel"). Not recorded: no 1.8 was at hand.
	Asterisk1_8 Version = "1.8"
)

// legacy reports whether v is Asterisk 1.8 or 11.
func (v Version) legacy() bool { return v == Asterisk11 || v == Asterisk1_8 }

// Defaults for [Options].
const (
	DefaultUsername       = "guard"
	DefaultSecret         = "guardpass"
	DefaultBanner         = "Asterisk Call Manager/9.0.0" // Asterisk 20.20.1
	Banner22              = "Asterisk Call Manager/11.0.0"
	Banner11              = "Asterisk Call Manager/1.3" // Asterisk 11 (the default with Asterisk11)
	Banner1_8             = "Asterisk Call Manager/1.1" // Asterisk 1.8 (the default with Asterisk1_8)
	DefaultLoginFailDelay = time.Second
	DefaultWriteTimeout   = 100 * time.Millisecond // Asterisk's writetimeout default
)

// maxQueued caps what one session may have waiting to be written. A session
// past it is dropped like a session whose write timed out.
const maxQueued = 64 << 20

// pjsipHangupDelay is how long after its reply a PJSIPHangup takes effect:
// Asterisk answers "Channel Hungup" before the channel is gone (observed on 22).
const pjsipHangupDelay = 20 * time.Millisecond

// Options configures a [Server]. The zero value is usable.
type Options struct {
	Username, Secret string // accepted credentials (default "guard"/"guardpass")
	// Version is the Asterisk to answer as (default Asterisk20).
	Version Version
	Banner  string // default DefaultBanner, Banner11 or Banner1_8 by Version
	// SIPConf and PJSIPConf are the initial texts of sip.conf and pjsip.conf
	// (default DefaultSIPConf / DefaultPJSIPConf). Asterisk 1.8 and 11 have
	// no pjsip.conf.
	SIPConf, PJSIPConf string
	// Transcript holds events to stream, in the `.ami` format of the
	// fixtures; nil streams nothing. It is read completely by Start.
	Transcript io.Reader
	// Speed scales the recorded pace: 0 (or less) as fast as possible, 1 as
	// recorded, 10 ten times faster.
	Speed float64
	// AutoPlay starts streaming when the first session logs in; otherwise
	// call Play.
	AutoPlay bool
	// LoginFailDelay is how long a failed Login waits before it answers
	// (default 1s, as Asterisk).
	LoginFailDelay time.Duration
	// WriteTimeout bounds each write to a client; a session whose write
	// times out is dropped, like Asterisk's writetimeout (default 100ms).
	WriteTimeout time.Duration
	// Listen is the address to listen on (default "127.0.0.1:0"; "[::1]:0"
	// for IPv6 loopback).
	Listen string
	// TLS, when set, makes the server speak AMI over TLS with this
	// configuration (Asterisk's tlsenable in manager.conf).
	TLS *tls.Config
	// Logf, if set, receives a trace (never secrets).
	Logf func(format string, args ...any)
	// Realtime, when set, is where the PJSIP auths and the chan_sip
	// peers' secrets are read from (a database), instead of pjsip.conf
	// and sip.conf.
	Realtime *Realtime
	// Regenerate, when set, writes the config files again at every reload
	// of everything, as FreePBX's reload does from its database.
	Regenerate Regenerate
}

// Action is one action the server received.
type Action struct {
	Session int         // the session's number, from 1 in order of connection
	Name    string      // the Action header as sent
	Headers [][2]string // every header as sent, in order (Action included)
	At      time.Time
}

// Server is a scripted fake Asterisk AMI server on 127.0.0.1. Its methods
// are safe for concurrent use.
type Server struct {
	opts   Options
	ln     net.Listener
	addr   string
	port   int
	start  time.Time
	quit   chan struct{} // closed by Close
	done   chan struct{} // closed when the transcript has been streamed
	script []scriptMsg

	wg        sync.WaitGroup
	closeOnce sync.Once
	playOnce  sync.Once

	mu       sync.Mutex
	closed   bool
	down     bool          // Down was called: nothing listens until Up
	noBanner bool          // new connections get no banner
	deaf     bool          // logged-in sessions' actions are not read
	hear     chan struct{} // closed when deaf ends
	sessions map[int]*session
	nextID   int
	actions  []Action
	fails    map[string]*failRule // by lower-case action name
	stalled  bool
	resume   chan struct{} // closed when the stall ends
	files    map[string]*confFile
	pbx      *pbx

	authCache   map[string]map[string]string // the memory cache of realtime auths, by id
	expired     []string                     // what SorceryMemoryCacheExpireObject expired
	regenerated int                          // reloads that wrote the files again (Regenerate)
}

type failRule struct {
	message string
	times   int
}

// Start reads the transcript (if any), listens on 127.0.0.1:0 and serves
// until Close.
func Start(opts Options) (*Server, error) {
	if opts.Username == "" {
		opts.Username = DefaultUsername
	}
	if opts.Secret == "" {
		opts.Secret = DefaultSecret
	}
	banner := DefaultBanner
	switch opts.Version {
	case "":
		opts.Version = Asterisk20
	case Asterisk20:
	case Asterisk11:
		banner = Banner11
	case Asterisk1_8:
		banner = Banner1_8
	default:
		return nil, fmt.Errorf("amitest: unknown Asterisk version %q", opts.Version)
	}
	if opts.Banner == "" {
		opts.Banner = banner
	}
	if opts.SIPConf == "" {
		opts.SIPConf = DefaultSIPConf
	}
	if opts.PJSIPConf == "" {
		opts.PJSIPConf = DefaultPJSIPConf
	}
	if opts.LoginFailDelay == 0 {
		opts.LoginFailDelay = DefaultLoginFailDelay
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.Speed < 0 {
		opts.Speed = 0
	}
	s := &Server{
		opts:     opts,
		start:    time.Now(),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		sessions: make(map[int]*session),
		fails:    make(map[string]*failRule),
		files: map[string]*confFile{
			"sip.conf":   parseConf("sip.conf", opts.SIPConf),
			"pjsip.conf": parseConf("pjsip.conf", opts.PJSIPConf),
		},
	}
	if opts.Version.legacy() {
		delete(s.files, "pjsip.conf")
	}
	if opts.Transcript != nil {
		script, err := loadScript(opts.Transcript)
		if err != nil {
			return nil, err
		}
		s.script = script
	} else {
		close(s.done)
	}
	s.pbx = newPBX(s.script, s.files)
	s.startRealtime()
	addr := opts.Listen
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := s.listen(addr)
	if err != nil {
		return nil, err
	}
	s.addr = ln.Addr().String()
	s.port = ln.Addr().(*net.TCPAddr).Port
	s.ln = ln
	s.wg.Add(1)
	go s.acceptLoop(ln)
	return s, nil
}

// listen opens the listener, wrapped in TLS when Options.TLS is set.
func (s *Server) listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("amitest: listen: %w", err)
	}
	if s.opts.TLS != nil {
		return tls.NewListener(ln, s.opts.TLS), nil
	}
	return ln, nil
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// Addr returns the listening address, "127.0.0.1:port" (or "[::1]:port").
func (s *Server) Addr() string { return s.addr }

// Close stops listening, cuts every session, stops the stream and waits for
// every goroutine of the server to end. It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		var all []*session
		for _, c := range s.sessions {
			all = append(all, c)
		}
		ln := s.ln
		s.mu.Unlock()
		close(s.quit)
		if ln != nil {
			ln.Close()
		}
		for _, c := range all {
			s.drop(c, "server closing")
		}
	})
	s.wg.Wait()
	return nil
}

// Play starts streaming the transcript. Only the first call does anything.
func (s *Server) Play() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.playLocked()
}

// playLocked starts the stream once. Callers hold s.mu.
func (s *Server) playLocked() {
	if s.script == nil || s.closed {
		return
	}
	s.playOnce.Do(func() {
		s.wg.Add(1)
		go s.stream()
	})
}

// Done is closed when the whole transcript has been streamed (at once if
// there is none). It is not closed if Close cuts the stream short.
func (s *Server) Done() <-chan struct{} { return s.done }

// Conf returns the current text of a config file ("sip.conf",
// "pjsip.conf", or a DstFilename an UpdateConfig wrote), or "" if unknown.
// Until an UpdateConfig rewrites it, that is the text given in Options.
func (s *Server) Conf(file string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.files[file]; f != nil {
		return f.text()
	}
	return ""
}

// Actions returns every action received so far, in order.
func (s *Server) Actions() []Action {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Action, len(s.actions))
	for i, a := range s.actions {
		a.Headers = append([][2]string(nil), a.Headers...)
		out[i] = a
	}
	return out
}

// LiveChannels returns the names of the channels the server believes are
// up, in order of creation.
func (s *Server) LiveChannels() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for _, ch := range s.pbx.live() {
		names = append(names, ch.name)
	}
	return names
}

// Sessions returns the number of logged-in sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.sessions {
		if c.authed {
			n++
		}
	}
	return n
}

// DropSessions cuts every connection now, as a restarting Asterisk would.
// New connections are still accepted.
func (s *Server) DropSessions() {
	s.mu.Lock()
	var all []*session
	for _, c := range s.sessions {
		all = append(all, c)
	}
	s.mu.Unlock()
	for _, c := range all {
		s.drop(c, "DropSessions")
	}
}

// Stall freezes the server while on: it reads no action, answers nothing,
// writes nothing (banners and events included) and the stream pauses.
// Connections stay open. Stall(false) resumes where it stopped.
func (s *Server) Stall(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case on && !s.stalled:
		s.stalled = true
		s.resume = make(chan struct{})
	case !on && s.stalled:
		s.stalled = false
		close(s.resume)
	}
}

// waitRunning waits while the server is stalled. It returns false if the
// server or stop closes first.
func (s *Server) waitRunning(stop <-chan struct{}) bool {
	for {
		s.mu.Lock()
		stalled, resume := s.stalled, s.resume
		s.mu.Unlock()
		if !stalled {
			return true
		}
		select {
		case <-resume:
		case <-stop:
			return false
		case <-s.quit:
			return false
		}
	}
}

// FailAction makes the next times actions named name (ASCII case ignored)
// answer `Response: Error` with the given Message, without doing anything.
func (s *Server) FailAction(name, message string, times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if times <= 0 {
		delete(s.fails, strings.ToLower(name))
		return
	}
	s.fails[strings.ToLower(name)] = &failRule{message: message, times: times}
}

// Inject sends a raw frame to every logged-in session whose event mask
// allows it (by the frame's Privilege classes; a frame without Privilege
// goes to every session whose events are not off). Line endings are made
// CRLF and the closing empty line is added if missing. A channel event is
// also applied to the server's channel state (Newchannel, Hangup, ...).
func (s *Server) Inject(frame string) {
	msg := parseFrame(frame)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pbx.track(&msg)
	s.broadcast(msg.raw, msg.classes, msg.classes == 0)
}

// Down stops listening and cuts every session, as an Asterisk that stopped
// or crashed: connections are refused (nothing listens on the port) until
// Up.
func (s *Server) Down() {
	s.mu.Lock()
	ln := s.ln
	s.ln, s.down = nil, true
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	s.DropSessions()
}

// Up listens again on the same address after Down, as Asterisk started
// again. The model (live channels, config files) is kept.
func (s *Server) Up() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !s.down {
		return nil
	}
	ln, err := s.listen(s.addr)
	if err != nil {
		return err
	}
	s.ln, s.down = ln, false
	s.wg.Add(1)
	go s.acceptLoop(ln)
	return nil
}

// WithholdBanner makes new connections get no banner while on: the
// connection stays open and silent, as a port that is not AMI (or an
// Asterisk hung before its manager thread writes).
func (s *Server) WithholdBanner(on bool) {
	s.mu.Lock()
	s.noBanner = on
	s.mu.Unlock()
}

// StopReadingActions makes the server stop reading the actions of every
// logged-in session while on, as an Asterisk whose manager thread for the
// session is stuck: actions get no reply, while events keep being written.
// Logins are still read. StopReadingActions(false) reads on, and the actions
// waiting in the socket are then answered.
func (s *Server) StopReadingActions(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case on && !s.deaf:
		s.deaf = true
		s.hear = make(chan struct{})
	case !on && s.deaf:
		s.deaf = false
		close(s.hear)
	}
}

// waitHearing waits while actions of logged-in session c are not read. It
// returns false if c or the server ends first.
func (s *Server) waitHearing(c *session) bool {
	for {
		s.mu.Lock()
		deaf, hear, authed := s.deaf, s.hear, c.authed
		s.mu.Unlock()
		if !deaf || !authed {
			return true
		}
		select {
		case <-hear:
		case <-c.quit:
			return false
		case <-s.quit:
			return false
		}
	}
}

// Flood writes n copies of an event frame to every logged-in session whose
// event mask allows it, as fast as the socket takes them (in 64 KiB
// writes), without the per-session queue: a server that sends faster than
// the client reads. A session whose write times out (Options.WriteTimeout)
// is dropped, as Asterisk drops a slow reader. Flood returns how many
// frames each session was sent, by session number, once they are written.
func (s *Server) Flood(frame string, n int) map[int]int {
	msg := parseFrame(frame)
	per := max(1, (64<<10)/len(msg.raw))
	chunk := make([]byte, 0, per*len(msg.raw))
	for range per {
		chunk = append(chunk, msg.raw...)
	}
	s.mu.Lock()
	var targets []*session
	for _, id := range s.sessionIDs() {
		c := s.sessions[id]
		if c.authed && (msg.classes == 0 && c.mask != 0 || msg.classes != 0 && c.mask&msg.classes == msg.classes) {
			targets = append(targets, c)
		}
	}
	s.mu.Unlock()
	sent := make(map[int]int, len(targets))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each Write is whole frames, and a net.Conn never interleaves
			// two Writes: the session's own writer cannot split a frame.
			done := 0
			for done < n {
				k := min(per, n-done)
				c.conn.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
				if _, err := c.conn.Write(chunk[:k*len(msg.raw)]); err != nil {
					s.drop(c, "flood write failed (slow or gone reader): "+err.Error())
					break
				}
				done += k
			}
			mu.Lock()
			sent[c.id] = done
			mu.Unlock()
		}()
	}
	wg.Wait()
	return sent
}

// acceptLoop accepts connections until the listener closes.
func (s *Server) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.nextID++
		c := newSession(s, s.nextID, conn)
		s.sessions[c.id] = c
		s.wg.Add(2)
		go s.serve(c)
		go c.writeLoop()
		s.mu.Unlock()
		s.logf("amitest: session %d connected from %s", c.id, conn.RemoteAddr())
	}
}

// drop ends a session: closes its connection and forgets it.
func (s *Server) drop(c *session, why string) {
	c.closeOnce.Do(func() {
		close(c.quit)
		c.conn.Close()
		s.mu.Lock()
		delete(s.sessions, c.id)
		s.mu.Unlock()
		s.logf("amitest: session %d closed: %s", c.id, why)
	})
}

// broadcast queues an event frame to every logged-in session whose mask has
// all of classes (classes == 0: anyWithEvents decides whether sessions with
// events on get it). Callers hold s.mu.
func (s *Server) broadcast(frame []byte, classes uint32, anyWithEvents bool) {
	if len(frame) == 0 || classes == classSecurity && s.opts.Version.legacy() {
		return // Asterisk 1.8 and 11 send no security events over AMI
	}
	for _, id := range s.sessionIDs() {
		c := s.sessions[id]
		if !c.authed {
			continue
		}
		if classes == 0 {
			if !anyWithEvents || c.mask == 0 {
				continue
			}
		} else if c.mask&classes != classes {
			continue
		}
		c.enqueue(frame, false)
	}
}

// sessionIDs returns the session ids in order, so that every session sees
// broadcasts in the same order. Callers hold s.mu.
func (s *Server) sessionIDs() []int {
	ids := make([]int, 0, len(s.sessions))
	for id := range s.sessions {
		ids = append(ids, id)
	}
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && ids[j] < ids[j-1]; j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
	return ids
}

// sleep waits d unless the server closes first.
func (s *Server) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.quit:
		return false
	}
}

// stream plays the transcript.
func (s *Server) stream() {
	defer s.wg.Done()
	var prev time.Time
	for i := range s.script {
		msg := &s.script[i]
		if s.opts.Speed > 0 && !prev.IsZero() && msg.at.After(prev) {
			if !s.sleep(time.Duration(float64(msg.at.Sub(prev)) / s.opts.Speed)) {
				return
			}
		}
		if !msg.at.IsZero() {
			prev = msg.at
		}
		if !s.waitRunning(nil) {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		s.streamOne(msg)
		s.mu.Unlock()
	}
	s.logf("amitest: transcript streamed (%d messages)", len(s.script))
	close(s.done)
}

// after runs f (holding s.mu) after d, unless the server closes first.
func (s *Server) after(d time.Duration, f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if !s.sleep(d) || !s.waitRunning(nil) {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.closed {
			f()
		}
	}()
}
