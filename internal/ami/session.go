package ami

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ivahaev/amigo"
	"github.com/rs/zerolog"
)

// A Session is one AMI login through amigo (the project's AMI library),
// wrapped so that the guard stays correct in spite of amigo v0.1.10's
// defects (numbered as in the list of known amigo v0.1.10 defects the
// project works from; each is described where it is handled):
//   - values can never carry CR/LF onto the wire (amigo does not escape: 5);
//   - the event handler never blocks amigo's reader: messages go to a bounded
//     queue and what does not fit is counted as dropped (7);
//   - empty credentials are refused instead of becoming admin/amp111 (17);
//   - list replies are collected from the event stream by ActionID, since
//     Action returns only the first reply (12);
//   - actions leave from one goroutine per session, as amigo races under
//     concurrent callers (11, 19); a second Session serves urgent actions so
//     a hang-up never waits behind a slow one;
//   - the connection state is our own flag, set by amigo's connect/error
//     notices, so asking it never waits on amigo's action lock (18);
//   - after every (re)connect the event mask is set again with an Events
//     action (amigo cannot send it at login: 15) and OnConnect runs, so the
//     caller can rebuild what amigo's login swallowed (1) or a reconnect lost;
//   - a message whose line reached amigo's 4096-byte limit is marked
//     untrusted: its headers may be forged (4).
//
// amigo has no way to stop its own goroutines or its reconnect loop (9, 13):
// Close stops the Session's goroutines and silences the rest; the process
// ending stops amigo.
type Session struct {
	opts   SessionOptions
	log    zerolog.Logger
	client *amigo.Amigo

	reqs      chan request
	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	connected atomic.Bool
	stopped   atomic.Bool
	banner    atomic.Value // string
	nextID    atomic.Uint64

	mu    sync.Mutex
	lists map[string]*listCollector

	stats struct {
		received, queued, dropped, untrusted, connects atomic.Uint64
	}
}

// SessionOptions configure a Session.
type SessionOptions struct {
	Name     string // for logs and ActionIDs: "events", "urgent"
	Address  string // host:port of AMI
	Username string
	Secret   string
	// EventMask is sent with an Events action after every login:
	// "call,security,system" for the event session, "off" for the urgent one.
	EventMask string
	// Queue receives the session's messages (events and replies); a full
	// queue drops and counts. Nil discards them.
	Queue chan<- Incoming
	// Want filters by Event name before queueing (nil: every message).
	Want func(event string) bool
	// OnConnect runs after every login, once the event mask is set.
	OnConnect func()
	// OnDrop is told the running count whenever the queue was full.
	OnDrop            func(dropped uint64)
	ActionTimeout     time.Duration // amigo's action timeout (default 3s)
	ReconnectInterval time.Duration // amigo's fixed pause between attempts (default 2s)
	Logger            zerolog.Logger
}

// Incoming is one message received on a session.
type Incoming struct {
	Time    time.Time
	Fields  map[string]string // amigo's map; owned by the receiver
	Session string
	// Trusted is false when a line reached amigo's read limit (see SetMap).
	Trusted bool
}

// Header is one header of an action, in order.
type Header struct{ Key, Value string }

// Action is an AMI action: its name and headers (without Action and ActionID).
type Action struct {
	Name    string
	Headers []Header
}

// Response is an action's first reply.
type Response map[string]string

// OK reports whether Asterisk answered Response: Success (or Follows/Goodbye).
func (r Response) OK() bool {
	switch r["Response"] {
	case "Success", "Follows", "Goodbye":
		return true
	}
	return false
}

// Message returns the reply's Message header.
func (r Response) Message() string { return r["Message"] }

// Errors of a Session.
var (
	ErrNotConnected = errors.New("ami: not connected")
	ErrClosed       = errors.New("ami: session closed")
	ErrUnsafe       = errors.New("ami: unsafe action header")
	ErrTimeout      = errors.New("ami: no reply in time")
)

// ActionError is an action answered with Response: Error (or not at all).
type ActionError struct {
	Action  string
	Message string
}

func (e *ActionError) Error() string {
	return fmt.Sprintf("ami: %s failed: %s", e.Action, e.Message)
}

type request struct {
	ctx    context.Context
	fields map[string]string
	reply  chan reply
}

type reply struct {
	resp Response
	err  error
}

type listCollector struct {
	items    chan map[string]string
	overflow atomic.Bool
	done     chan struct{}
	once     sync.Once
}

// Dial starts a session: amigo connects (and reconnects) in the background.
// It returns at once; Connected tells when the session is up.
func Dial(opts SessionOptions) (*Session, error) {
	if opts.Username == "" || opts.Secret == "" {
		return nil, errors.New("ami: username and secret must not be empty (amigo would log in as admin/amp111)")
	}
	for _, v := range []string{opts.Username, opts.Secret, opts.EventMask, opts.Name} {
		if !safeValue(v) {
			return nil, fmt.Errorf("%w: credentials and event mask must not contain control characters", ErrUnsafe)
		}
	}
	host, port, err := net.SplitHostPort(opts.Address)
	if err != nil {
		return nil, fmt.Errorf("ami: address %q: %w", opts.Address, err)
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]" // amigo joins host and port with "%s:%s" (15)
	}
	if opts.ActionTimeout <= 0 {
		opts.ActionTimeout = 3 * time.Second
	}
	if opts.ReconnectInterval <= 0 {
		opts.ReconnectInterval = 2 * time.Second
	}
	if opts.Name == "" {
		opts.Name = "ami"
	}
	s := &Session{
		opts:   opts,
		log:    opts.Logger.With().Str("component", "ami").Str("session", opts.Name).Logger(),
		reqs:   make(chan request),
		closed: make(chan struct{}),
		lists:  make(map[string]*listCollector),
	}
	// amigo keeps (and mutates) the Settings it is given (15): a fresh copy.
	s.client = amigo.New(&amigo.Settings{
		Username:          opts.Username,
		Password:          opts.Secret,
		Host:              host,
		Port:              port,
		ActionTimeout:     opts.ActionTimeout,
		DialTimeout:       5 * time.Second,
		ReconnectInterval: opts.ReconnectInterval,
		Keepalive:         true, // amigo pings every 5 s and reconnects when a ping is not answered in 3 s
	})
	if err := s.client.RegisterDefaultHandler(s.handle); err != nil {
		return nil, err
	}
	s.client.On("connect", func(banner string) { s.onConnect(banner) })
	s.client.On("error", func(msg string) { s.onError(msg) })
	s.wg.Add(1)
	go pprof.Do(context.Background(), pprof.Labels("astguard", "ami-actor"), func(context.Context) {
		defer s.wg.Done()
		s.actor()
	})
	// amigo's Connect blocks until the first login succeeds and cannot be
	// interrupted; it runs on its own goroutine (amigo's, not ours to stop).
	go s.client.Connect()
	return s, nil
}

// Connected reports whether the session is logged in, from amigo's own
// notices (not amigo's Connected, which can wait on its action lock: 18).
func (s *Session) Connected() bool { return s.connected.Load() && !s.stopped.Load() }

// SessionStats counts what the session saw.
type SessionStats struct {
	Received, Queued, Dropped, Untrusted, Connects uint64
}

// Stats returns the session's counters.
func (s *Session) Stats() SessionStats {
	return SessionStats{
		Received:  s.stats.received.Load(),
		Queued:    s.stats.queued.Load(),
		Dropped:   s.stats.dropped.Load(),
		Untrusted: s.stats.untrusted.Load(),
		Connects:  s.stats.connects.Load(),
	}
}

// Close stops the session's own goroutines and silences its handler. amigo's
// goroutines cannot be stopped (its defect); they end with the process.
func (s *Session) Close() {
	s.closeOnce.Do(func() {
		s.stopped.Store(true)
		close(s.closed)
	})
	s.wg.Wait()
}

// Banner returns the banner of the last connection (amigo reports it with
// its connect notice), e.g. "Asterisk Call Manager/9.0.0".
func (s *Session) Banner() string {
	if b, ok := s.banner.Load().(string); ok {
		return b
	}
	return ""
}

func (s *Session) onConnect(banner string) {
	if s.stopped.Load() {
		return
	}
	if b, _, _ := strings.Cut(banner, "\r"); strings.HasPrefix(b, "Asterisk Call Manager/") {
		s.banner.Store(b)
	}
	s.stats.connects.Add(1)
	s.connected.Store(true)
	s.log.Info().Str("address", s.opts.Address).Msg("AMI session logged in")
	s.wg.Add(1)
	go pprof.Do(context.Background(), pprof.Labels("astguard", "ami-connect"), func(context.Context) {
		defer s.wg.Done()
		s.afterLogin()
	})
}

func (s *Session) onError(msg string) {
	if s.stopped.Load() {
		return
	}
	if strings.HasPrefix(msg, "AMI TCP ERROR") || strings.Contains(msg, "connection error") || strings.Contains(msg, "login error") {
		if s.connected.Swap(false) {
			s.log.Warn().Str("error", msg).Msg("AMI session lost; amigo reconnects")
			return
		}
	}
	s.log.Debug().Str("error", msg).Msg("amigo")
}

// afterLogin sets the event mask (amigo's "connect" comes before it marks the
// connection usable, 10: retry briefly) and tells the owner.
func (s *Session) afterLogin() {
	if s.opts.EventMask != "" {
		var err error
		for try := 0; try < 50; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), s.opts.ActionTimeout+time.Second)
			_, err = s.Do(ctx, Action{Name: "Events", Headers: []Header{{"EventMask", s.opts.EventMask}}})
			cancel()
			if err == nil || !errors.Is(err, ErrNotConnected) {
				break
			}
			select {
			case <-s.closed:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		if err != nil {
			s.log.Error().Err(err).Str("mask", s.opts.EventMask).Msg("cannot set the event mask")
		}
	}
	if s.opts.OnConnect != nil && !s.stopped.Load() {
		s.opts.OnConnect()
	}
}

// handle runs on amigo's event goroutine for every message: it must never
// block (a stalled handler stalls amigo's reader and Asterisk drops us).
func (s *Session) handle(m map[string]string) {
	if s.stopped.Load() {
		return
	}
	s.stats.received.Add(1)
	if id := m["ActionID"]; id != "" && m["Event"] != "" {
		s.mu.Lock()
		lc := s.lists[id]
		s.mu.Unlock()
		if lc != nil {
			lc.add(m)
			return
		}
	}
	if s.opts.Queue == nil {
		return
	}
	if s.opts.Want != nil {
		if ev := m["Event"]; ev == "" || !s.opts.Want(ev) {
			return
		}
	}
	in := Incoming{Time: time.Now(), Fields: m, Session: s.opts.Name, Trusted: true}
	for k, v := range m {
		if len(k)+len(v)+2 >= amigoLineLimit-2 {
			in.Trusted = false
			s.stats.untrusted.Add(1)
			break
		}
	}
	select {
	case s.opts.Queue <- in:
		s.stats.queued.Add(1)
	default:
		n := s.stats.dropped.Add(1)
		if s.opts.OnDrop != nil {
			s.opts.OnDrop(n)
		}
	}
}

func (lc *listCollector) add(m map[string]string) {
	select {
	case <-lc.done:
		return
	default:
	}
	if m["EventList"] == "Complete" || strings.HasSuffix(m["Event"], "Complete") {
		lc.once.Do(func() { close(lc.done) })
		return
	}
	select {
	case lc.items <- m:
	default:
		lc.overflow.Store(true)
	}
}

// actor sends every action of the session, one at a time.
func (s *Session) actor() {
	for {
		select {
		case <-s.closed:
			return
		case r := <-s.reqs:
			if err := r.ctx.Err(); err != nil {
				r.reply <- reply{err: err}
				continue
			}
			if !s.Connected() {
				r.reply <- reply{err: ErrNotConnected}
				continue
			}
			resp, err := s.client.Action(r.fields)
			if err != nil {
				// amigo says "not connected" for a moment after its connect
				// notice (defect 10): our flag follows amigo's notices
				// only, or a session could stay down for good.
				r.reply <- reply{err: fmt.Errorf("%w: %v", ErrNotConnected, err)}
				continue
			}
			r.reply <- reply{resp: Response(resp)}
		}
	}
}

// safeValue reports whether v can be sent as a header value: no CR, LF or
// other control characters (amigo writes values as they are: 5).
func safeValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

func safeKey(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (s *Session) fields(a Action) (map[string]string, string, error) {
	if !safeKey(a.Name) {
		return nil, "", fmt.Errorf("%w: action name %q", ErrUnsafe, a.Name)
	}
	id := s.opts.Name + "-" + strconv.FormatUint(s.nextID.Add(1), 10)
	m := map[string]string{"Action": a.Name, "ActionID": id}
	for _, h := range a.Headers {
		if !safeKey(h.Key) || !safeValue(h.Value) {
			return nil, "", fmt.Errorf("%w: %s header %q", ErrUnsafe, a.Name, h.Key)
		}
		if _, dup := m[h.Key]; dup {
			return nil, "", fmt.Errorf("%w: %s header %q repeated (amigo keeps one)", ErrUnsafe, a.Name, h.Key)
		}
		m[h.Key] = h.Value
	}
	return m, id, nil
}

// Do sends an action and returns its first reply. A reply of Response: Error
// is returned as an *ActionError along with the reply.
func (s *Session) Do(ctx context.Context, a Action) (Response, error) {
	m, _, err := s.fields(a)
	if err != nil {
		return nil, err
	}
	return s.send(ctx, a.Name, m)
}

func (s *Session) send(ctx context.Context, name string, m map[string]string) (Response, error) {
	r := request{ctx: ctx, fields: m, reply: make(chan reply, 1)}
	select {
	case s.reqs <- r:
	case <-s.closed:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case rep := <-r.reply:
		if rep.err != nil {
			return nil, rep.err
		}
		if rep.resp["Error"] == "Timeout" { // amigo's own timeout reply
			return rep.resp, fmt.Errorf("%w: %s", ErrTimeout, name)
		}
		if !rep.resp.OK() {
			return rep.resp, &ActionError{Action: name, Message: rep.resp.Message()}
		}
		return rep.resp, nil
	case <-s.closed:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// List sends a list action (CoreShowChannels, SIPpeers, PJSIPShowContacts,
// Hangup by /regex/ ...) and collects its items from the event stream by
// ActionID until the list's Complete event or ctx ends.
func (s *Session) List(ctx context.Context, a Action) (Response, []map[string]string, error) {
	m, id, err := s.fields(a)
	if err != nil {
		return nil, nil, err
	}
	lc := &listCollector{items: make(chan map[string]string, 16384), done: make(chan struct{})}
	s.mu.Lock()
	s.lists[id] = lc
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lists, id)
		s.mu.Unlock()
	}()
	resp, err := s.send(ctx, a.Name, m)
	if err != nil {
		return resp, nil, err
	}
	if resp["EventList"] != "start" && !strings.Contains(resp.Message(), "follow") {
		return resp, nil, nil // not a list after all (e.g. a Hangup by name)
	}
	var items []map[string]string
	for {
		select {
		case it := <-lc.items:
			items = append(items, it)
		case <-lc.done:
			for {
				select {
				case it := <-lc.items:
					items = append(items, it)
				default:
					if lc.overflow.Load() {
						return resp, items, fmt.Errorf("ami: %s list overflowed", a.Name)
					}
					return resp, items, nil
				}
			}
		case <-ctx.Done():
			return resp, items, fmt.Errorf("ami: %s list incomplete: %w", a.Name, ctx.Err())
		case <-s.closed:
			return resp, items, ErrClosed
		}
	}
}
