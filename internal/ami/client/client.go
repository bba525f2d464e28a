package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
)

// Auth is how a Client logs in.
type Auth string

// The login methods.
const (
	// AuthMD5 asks a Challenge and sends the MD5 of the challenge and the
	// secret: the secret never crosses the network.
	AuthMD5 Auth = "md5"
	// AuthPlain sends the secret as Login's Secret header.
	AuthPlain Auth = "plain"
)

// Defaults of Options.
const (
	DefaultActionTimeout     = 3 * time.Second
	DefaultReconnectInterval = 2 * time.Second
	DefaultReconnectMax      = 30 * time.Second
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultKeepalive         = 5 * time.Second
	DefaultMaxListItems      = 100_000
)

// Options configure a Client. Address, Username and Secret are required.
type Options struct {
	// Name names the session in logs and starts its ActionIDs
	// ("events" gives events-1, events-2 ...). Default "ami".
	Name string
	// Address is host:port, [v6]:port, or tls://host:port for AMI over TLS.
	Address  string
	Username string
	Secret   string
	Auth     Auth // default AuthMD5
	// TLS configures a tls:// address (nil: the system's CAs; an empty
	// ServerName is taken from the address).
	TLS *tls.Config
	// Events is the Login's Events header, the event classes Asterisk
	// sends this session: "call,security,system", or "off" for a session
	// that only sends actions. "" sends none: the user's read classes.
	Events string

	// Handler receives, on the reader goroutine, every message that is not
	// a reply to one of this Client's actions (events, in practice), with
	// the time the read that completed it returned. It must not block and
	// must not keep m, whose storage the next message reuses. Nil: events
	// are read and dropped.
	Handler func(m *ami.Message, at time.Time)
	// Skip, if set, is asked with an event's name before the Handler: true
	// drops the event unseen. It runs on the reader goroutine.
	Skip func(event []byte) bool
	// Tap, if set, receives every message as read, before anything else
	// looks at it (replies, the login's included): a recording. It runs on
	// the reader goroutine, must not block and must not keep m. While it is
	// set, Skip is not applied.
	Tap func(m *ami.Message, at time.Time)
	// OnConnect runs after every login with the connection's banner, on
	// the Client's goroutine, before any message of the new connection is
	// handed out. It must not block.
	OnConnect func(banner string)

	// ActionTimeout bounds an action whose context has no deadline, every
	// write, and the wait for data after a keepalive Ping.
	ActionTimeout time.Duration
	// ReconnectInterval is the first pause before a reconnect; it doubles,
	// with jitter, after each failed attempt, up to ReconnectMax (at least
	// ReconnectInterval). A connection that stayed up for ReconnectMax
	// starts again from ReconnectInterval.
	ReconnectInterval, ReconnectMax time.Duration
	// HandshakeTimeout bounds a connection attempt: dial, TLS, banner and
	// login together.
	HandshakeTimeout time.Duration
	// Keepalive is how long nothing may arrive before a Ping is sent.
	Keepalive time.Duration
	// SilenceAlarm, if > 0, is how long without an event makes the session
	// EventsSilent (logged once when it starts and once when it ends).
	SilenceAlarm time.Duration
	// MaxListItems bounds the items of one list reply.
	MaxListItems int

	// Dial opens the connection (default: a net.Dialer). Tests pass their
	// own.
	Dial   func(ctx context.Context, network, address string) (net.Conn, error)
	Logger zerolog.Logger
}

// Errors of a Client's actions; test for them with errors.Is.
var (
	// ErrNotConnected: the session is not logged in now; nothing was sent.
	ErrNotConnected = errors.New("ami: not connected")
	// ErrConnectionLost: the connection ended before the reply came.
	ErrConnectionLost = errors.New("ami: connection lost")
	// ErrTimeout: no reply (or no end of the list) before the action's
	// deadline. Asterisk may still carry out the action.
	ErrTimeout = errors.New("ami: no reply in time")
	// ErrListTooLong: a list reply passed Options.MaxListItems; the items
	// up to it are returned.
	ErrListTooLong = errors.New("ami: list reply too long")
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("ami: client closed")
)

// Stats counts what a Client did since it was made.
type Stats struct {
	Connects       uint64 // logins, the first included
	Messages       uint64 // messages read, replies and events
	Events         uint64 // event messages read, list items included
	Handled        uint64 // events given to the Handler
	Skipped        uint64 // events Options.Skip left out
	UnknownReplies uint64 // replies and list items no action waited for any more: dropped
	Malformed      uint64 // messages the reader skipped: a line that is not a header
	Oversized      uint64 // messages the reader skipped: over 64 KiB
	ActionTimeouts uint64 // actions, keepalive pings included, with no reply in time
	Pings          uint64 // keepalive pings sent
	Waiting        int    // actions waiting for their reply now
}

// Client is one AMI session, kept logged in until Close. Its methods are
// safe for concurrent use.
type Client struct {
	opts     Options
	log      zerolog.Logger
	hostport string
	tls      *tls.Config // nil: plain TCP
	idPrefix string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	nextID atomic.Uint64

	mu     sync.Mutex
	conn   *conn            // the logged-in connection; nil while down
	calls  map[string]*call // actions waiting for their reply, by ActionID
	status Status
	closed bool

	timingOut   atomic.Bool  // status.ActionsTimingOut, read without mu
	lists       atomic.Int32 // list actions waiting
	watchUntil  atomic.Int64 // Unix ns until which events are still checked for list items
	lastEvent   atomic.Int64 // Unix ns of the last event read (0: none since the login)
	silenceNs   atomic.Int64
	banner      atomic.Pointer[string]
	stats       struct{ connects, messages, events, handled, skipped, unknown, malformed, oversized, timeouts, pings atomic.Uint64 }
	upSince     atomic.Int64 // Unix ns of the last login
	lastProblem Problem      // the problem last logged (the run goroutine's)
}

// call is an action waiting for its reply.
type call struct {
	id      string
	name    string
	list    bool
	started bool // a list whose first reply said its items follow
	resp    ami.Response
	items   []ami.Response
	err     error
	done    chan struct{} // closed when resp (and items) are complete, or err is set
}

// New checks opts and starts the Client: it connects and logs in in the
// background, and again whenever the connection ends, until Close.
// Connected or Status tell when it is up.
func New(opts Options) (*Client, error) {
	if opts.Username == "" || opts.Secret == "" {
		return nil, errors.New("ami: the username and the secret must not be empty")
	}
	for _, v := range []string{opts.Username, opts.Secret, opts.Events} {
		for i := 0; i < len(v); i++ {
			if c := v[i]; c < 0x20 || c == 0x7f {
				return nil, fmt.Errorf("%w: the username, secret and event mask must not hold control characters", ami.ErrUnsafe)
			}
		}
	}
	switch opts.Auth {
	case "":
		opts.Auth = AuthMD5
	case AuthMD5, AuthPlain:
	default:
		return nil, fmt.Errorf("ami: unknown login method %q", opts.Auth)
	}
	if opts.Name == "" {
		opts.Name = "ami"
	}
	if !safeName(opts.Name) {
		return nil, fmt.Errorf("ami: session name %q: letters, digits, - and _ only", opts.Name)
	}
	hostport, useTLS := strings.CutPrefix(opts.Address, "tls://")
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("ami: address %q: %w", opts.Address, err)
	}
	var tc *tls.Config
	if useTLS {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
		if opts.TLS != nil {
			tc = opts.TLS.Clone()
		}
		if tc.ServerName == "" {
			tc.ServerName = host
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.ActionTimeout, DefaultActionTimeout)
	def(&opts.ReconnectInterval, DefaultReconnectInterval)
	def(&opts.ReconnectMax, DefaultReconnectMax)
	def(&opts.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&opts.Keepalive, DefaultKeepalive)
	opts.ReconnectMax = max(opts.ReconnectMax, opts.ReconnectInterval)
	if opts.MaxListItems <= 0 {
		opts.MaxListItems = DefaultMaxListItems
	}
	if opts.Dial == nil {
		d := &net.Dialer{}
		opts.Dial = d.DialContext
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		opts:     opts,
		log:      opts.Logger.With().Str("component", "ami").Str("session", opts.Name).Logger(),
		hostport: hostport,
		tls:      tc,
		idPrefix: opts.Name + "-",
		ctx:      ctx,
		cancel:   cancel,
		calls:    make(map[string]*call),
		status:   Status{State: StateConnecting, Since: time.Now()},
	}
	c.silenceNs.Store(int64(opts.SilenceAlarm))
	c.wg.Add(1)
	go c.run()
	return c, nil
}

func safeName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return len(s) <= 32
}

// Close logs nothing off: it cuts the connection, fails the actions waiting
// with ErrClosed and returns once every goroutine of the Client has ended.
// It is safe to call more than once.
func (c *Client) Close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.failCalls(ErrClosed)
		c.status.State, c.status.Problem, c.status.Detail, c.status.Since = StateClosed, ProblemNone, "", time.Now()
	}
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
}

// Connected reports whether the session is logged in now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status.State == StateUp
}

// Status returns the state of the link.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Banner = c.Banner()
	s.Connects = c.stats.connects.Load()
	return s
}

// Banner returns the banner of the last connection, e.g. "Asterisk Call
// Manager/9.0.0", or "" before any.
func (c *Client) Banner() string {
	if b := c.banner.Load(); b != nil {
		return *b
	}
	return ""
}

// Version returns the AMI version of the last connection's banner: 1.1 is
// Asterisk 1.8, 1.3 is 11, 2.x 12 and 13, 5.x 16, 9.x 20, 10.x 21, 11.x 22.
// It is 0, 0 before any connection or when the banner has no version.
func (c *Client) Version() (major, minor int) {
	major, minor, _ = ParseVersion(c.Banner())
	return major, minor
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	waiting := len(c.calls)
	c.mu.Unlock()
	s := &c.stats
	return Stats{
		Waiting:  waiting,
		Connects: s.connects.Load(), Messages: s.messages.Load(), Events: s.events.Load(),
		Handled: s.handled.Load(), Skipped: s.skipped.Load(), UnknownReplies: s.unknown.Load(),
		Malformed: s.malformed.Load(), Oversized: s.oversized.Load(), ActionTimeouts: s.timeouts.Load(),
		Pings: s.pings.Load(),
	}
}

// SetSilenceAlarm changes Options.SilenceAlarm (0 turns it off).
func (c *Client) SetSilenceAlarm(d time.Duration) { c.silenceNs.Store(int64(d)) }

// Do sends an action and waits for its reply. A reply of `Response: Error`
// comes back with an *ami.ActionError. Without a deadline in ctx the action
// waits at most Options.ActionTimeout. Errors: ami.ErrUnsafe (nothing was
// written), ErrNotConnected, ErrConnectionLost, ErrTimeout, ErrClosed, or
// ctx's error when it was cancelled.
func (c *Client) Do(ctx context.Context, a ami.Action) (ami.Response, error) {
	cl, err := c.send(ctx, a, false)
	if err != nil {
		return ami.Response{}, err
	}
	return cl.resp, replyError(a.Name, cl.resp)
}

// List sends an action answered by a list (CoreShowChannels, SIPpeers,
// PJSIPShowContacts, Hangup by /regex/ ...) and returns its first reply and
// the items that followed, until the list's Complete event. A first reply
// that does not start a list (an error, or a Hangup by name) comes back
// alone. When the deadline passes before the list ends, the items so far
// come back with ErrTimeout.
func (c *Client) List(ctx context.Context, a ami.Action) (ami.Response, []ami.Response, error) {
	cl, err := c.send(ctx, a, true)
	if cl == nil {
		return ami.Response{}, nil, err
	}
	if err == nil {
		err = replyError(a.Name, cl.resp)
	}
	return cl.resp, cl.items, err
}

func replyError(name string, r ami.Response) error {
	if r.OK() {
		return nil
	}
	return &ami.ActionError{Action: name, Message: r.Message()}
}

type writtenKey struct{}

// AfterWrite returns a context that makes Do and List call written as
// soon as their action is on the wire (or its write has failed), before
// they wait for the reply. Asterisk runs a session's actions in the order
// they arrive: an action sent on the same Client once written has been
// called runs after this one, without waiting for its reply. written
// runs on the sending goroutine, once per action sent with the context,
// and is not called when nothing was sent (not connected, closed).
func AfterWrite(ctx context.Context, written func()) context.Context {
	return context.WithValue(ctx, writtenKey{}, written)
}

// send writes the action and waits for its reply. It returns the call with
// what came (a list's items so far) along with ErrTimeout or
// ErrListTooLong; nil with any other error.
func (c *Client) send(ctx context.Context, a ami.Action, list bool) (*call, error) {
	id := c.idPrefix + strconv.FormatUint(c.nextID.Add(1), 10)
	buf, err := ami.AppendAction(nil, a, id)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.ActionTimeout)
		defer cancel()
	}
	cl := &call{id: id, name: a.Name, list: list, done: make(chan struct{})}
	start := time.Now()
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return nil, ErrClosed
	case c.conn == nil:
		st := c.status
		c.mu.Unlock()
		if st.Detail != "" {
			return nil, fmt.Errorf("%w (%s: %s)", ErrNotConnected, st.Problem, st.Detail)
		}
		return nil, ErrNotConnected
	}
	cn := c.conn
	c.calls[id] = cl
	if list {
		c.lists.Add(1)
	}
	c.mu.Unlock()

	n, err := cn.write(ctx, buf, c.opts.ActionTimeout)
	if f, ok := ctx.Value(writtenKey{}).(func()); ok {
		f()
	}
	if err != nil {
		c.forget(cl)
		switch {
		case n == 0 && ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
			return nil, ctx.Err()
		case n == 0 && (ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded)):
			// Nothing written: the stream is whole, but Asterisk takes no
			// more (it does not read this session's actions), or the
			// deadline had passed.
			c.actionTimedOut(a.Name, time.Since(start))
			return nil, fmt.Errorf("%w: %s: not sent: %v", ErrTimeout, a.Name, err)
		}
		// Part of the action may be on the wire: the stream cannot be
		// used any more.
		cn.kill(fmt.Errorf("writing %s: %w", a.Name, err))
		return nil, fmt.Errorf("%w: writing %s: %v", ErrConnectionLost, a.Name, err)
	}
	select {
	case <-cl.done:
	case <-ctx.Done():
		if c.forget(cl) {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				c.actionTimedOut(a.Name, time.Since(start))
				return cl, fmt.Errorf("%w: %s (waited %s)", ErrTimeout, a.Name, time.Since(start).Round(time.Millisecond))
			}
			return nil, ctx.Err()
		}
		<-cl.done // answered while the context ended
	}
	switch {
	case errors.Is(cl.err, ErrListTooLong):
		return cl, cl.err
	case cl.err != nil:
		return nil, cl.err
	}
	return cl, nil
}

// forget removes a call that is still waiting; false if it was answered
// (or failed) meanwhile. A list keeps the items that came so far.
func (c *Client) forget(cl *call) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls[cl.id] != cl {
		return false
	}
	c.removeLocked(cl)
	return true
}

// removeLocked takes cl out of the waiting calls. Callers hold c.mu.
func (c *Client) removeLocked(cl *call) {
	delete(c.calls, cl.id)
	if cl.list {
		c.lists.Add(-1)
		// Items of a list given up on may still be on the way: keep
		// telling them from events for a while.
		c.watchUntil.Store(time.Now().Add(c.opts.ActionTimeout).UnixNano())
	}
}

// failCalls ends every waiting call with err. Callers hold c.mu.
func (c *Client) failCalls(err error) {
	for _, cl := range c.calls {
		c.removeLocked(cl)
		cl.err = err
		close(cl.done)
	}
}

// actionTimedOut notes an action that got no reply in time (waited: how
// long it waited); the first of a run is logged.
func (c *Client) actionTimedOut(name string, waited time.Duration) {
	c.stats.timeouts.Add(1)
	c.mu.Lock()
	first := !c.status.ActionsTimingOut
	c.status.ActionsTimingOut = true
	c.timingOut.Store(true)
	c.mu.Unlock()
	if first {
		c.log.Warn().Str("action", name).Dur("waited", waited).Str("address", c.opts.Address).
			Msg("AMI actions time out: Asterisk does not answer this session's actions")
	}
}

// answered notes a reply: a run of timeouts, if any, is over.
func (c *Client) answered() {
	if !c.timingOut.Load() {
		return
	}
	c.mu.Lock()
	was := c.status.ActionsTimingOut
	c.status.ActionsTimingOut = false
	c.timingOut.Store(false)
	c.mu.Unlock()
	if was {
		c.log.Info().Msg("AMI actions are answered again")
	}
}
