// Package notify tells the people who must act: it turns the incident
// book's events (an incident opened, an action's outcome, a close) and
// the guard's own trouble (an AMI session down, the firewall failing)
// into messages, and delivers them through the configured senders: a
// generic webhook, Alertmanager and email.
//
// Delivery never slows the response down. The book hands its events to
// Observe, which only queues them (a full queue drops the event and
// counts it); Run makes the messages on a goroutine of its own and hands
// each to each sender's own bounded queue (full: dropped and counted),
// from which the sender's goroutine delivers it, retrying with backoff.
// A receiver that hangs holds up only its own sender.
//
// One message goes out per incident update, not per alert (an attack of
// hundreds of alerts adds nothing to an open incident but its count), and
// the updates of one incident within notify.batch_delay go out together.
// When more than notify.digest_threshold incidents open within
// notify.digest_window (a botnet), the webhook and the mail get one digest
// per window for the later ones instead of one message each; Alertmanager
// gets every incident as an alert of its own, its grouping being the
// digest.
package notify

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/metrics"
	"github.com/astguard/astguard/internal/notify/message"
	"github.com/astguard/astguard/internal/policy"
)

// Source is where the notifier reads an incident whole when it writes a
// message about it: *incident.Book.
type Source interface {
	Get(id string, now time.Time) (incident.Record, bool)
	List(now time.Time) incident.Listing
}

// Probe watches one kind of the guard's trouble: Check says whether it is
// in trouble now, and since when. The notifier asks once a second and
// sends a message once the trouble lasts notify.trouble_after, and another
// when it ends.
type Probe struct {
	// What is "ami" or "firewall"; Name the AMI session ("events",
	// "urgent") or "firewall".
	What, Name string
	Check      func() Condition
}

// Condition is a probe's answer.
type Condition struct {
	Down  bool
	Since time.Time // when it went down
	// Problem and Detail say why ("login_refused", "Authentication
	// failed"); never a secret.
	Problem, Detail string
}

// Options configure New.
type Options struct {
	// Config is the [notify] table.
	Config config.Notify
	// SecretsFile returns response.secrets_file as it is now: the
	// messages say the new secret is there.
	SecretsFile func() string
	// Probes are the trouble to watch.
	Probes []Probe
	// Logger gets the notifier's lines (component "notify").
	Logger zerolog.Logger
	// Mode returns the mode now (nil: enforce), for the messages that
	// are about no event (a digest, trouble, a restart's open incidents).
	Mode func() policy.Mode
	// Senders replace those the configuration names (tests).
	Senders []Sender
}

// Sender delivers a message to one kind of receiver.
type Sender interface {
	// Name is "webhook", "alertmanager" or "email".
	Name() string
	// Send makes one attempt to deliver m. An error wrapped by Permanent
	// is not tried again.
	Send(ctx context.Context, m *message.Message) error
}

// Notifier makes and delivers the messages.
type Notifier struct {
	cfg         config.Notify
	instance    string
	secretsFile func() string
	mode        func() policy.Mode
	probes      []Probe
	log         zerolog.Logger
	in          chan item
	outs        []*outlet
	am          *alertmanager // also in outs; nil when off

	dropped  atomic.Uint64
	lastDrop atomic.Int64 // Unix ns
}

// item is one entry of the notifier's queue.
type item struct {
	ev incident.Event
}

// New builds the notifier and its senders from opts.Config. It fails when
// a sender cannot be built (a body template or a CA file that cannot be
// used: check-config says so first).
func New(opts Options) (*Notifier, error) {
	c := opts.Config
	n := &Notifier{
		cfg:         c,
		instance:    c.Instance,
		secretsFile: opts.SecretsFile,
		mode:        opts.Mode,
		probes:      opts.Probes,
		log:         opts.Logger.With().Str("component", "notify").Logger(),
		in:          make(chan item, c.QueueSize),
	}
	if n.instance == "" {
		n.instance, _ = os.Hostname()
	}
	if n.secretsFile == nil {
		n.secretsFile = func() string { return "" }
	}
	if n.mode == nil {
		n.mode = func() policy.Mode { return policy.Enforce }
	}
	senders := opts.Senders
	if senders == nil {
		var err error
		if senders, err = Senders(&c); err != nil {
			return nil, err
		}
	}
	for _, s := range senders {
		o := &outlet{sender: s, queue: make(chan *message.Message, c.QueueSize), min: minSeverity(&c, s.Name())}
		o.attempts, o.backoff, o.timeout = retries(&c, s.Name())
		if am, ok := s.(*alertmanager); ok {
			n.am = am
			am.outlet = o
		}
		n.outs = append(n.outs, o)
	}
	return n, nil
}

// Senders builds the senders c configures, in the order webhook,
// alertmanager, email.
func Senders(c *config.Notify) ([]Sender, error) {
	var out []Sender
	if c.Webhook.URL != "" {
		w, err := newWebhook(&c.Webhook)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	if c.Alertmanager.URL != "" {
		out = append(out, newAlertmanager(&c.Alertmanager))
	}
	if c.Email.Server != "" {
		e, err := newEmail(&c.Email)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// minSeverity is the min_severity of sender name in c.
func minSeverity(c *config.Notify, name string) detector.Severity {
	s := c.Webhook.MinSeverity
	switch name {
	case nameAlertmanager:
		s = c.Alertmanager.MinSeverity
	case nameEmail:
		s = c.Email.MinSeverity
	}
	if s == detector.Critical.String() {
		return detector.Critical
	}
	return detector.Warning
}

// retries are the attempts, first pause and timeout of sender name.
func retries(c *config.Notify, name string) (int, time.Duration, time.Duration) {
	switch name {
	case nameAlertmanager:
		return 3, time.Second, time.Duration(c.Alertmanager.Timeout)
	case nameEmail:
		return c.Email.Attempts, time.Duration(c.Email.RetryBackoff), time.Duration(c.Email.Timeout)
	}
	return c.Webhook.Attempts, time.Duration(c.Webhook.RetryBackoff), time.Duration(c.Webhook.Timeout)
}

// Observe is the incident book's Observer: it queues ev for Run and never
// waits; when the queue is full, ev is dropped and counted.
func (n *Notifier) Observe(ev incident.Event) {
	select {
	case n.in <- item{ev: ev}:
	default:
		n.dropped.Add(1)
		n.lastDrop.Store(time.Now().UnixNano())
	}
}

// Stats returns the counts since the start.
func (n *Notifier) Stats() metrics.NotifyStats {
	s := metrics.NotifyStats{EventsDropped: n.dropped.Load()}
	if ns := n.lastDrop.Load(); ns != 0 {
		s.LastDrop = time.Unix(0, ns)
	}
	for _, o := range n.outs {
		s.Senders = append(s.Senders, o.stats())
	}
	return s
}

// Run makes and delivers the messages until ctx ends. src is read for the
// incidents the events name. The open incidents of src are Alertmanager's
// alerts from the start: those of a guard restarted during an attack are
// sent again, and resolved when they close.
func (n *Notifier) Run(ctx context.Context, src Source) error {
	where := make([]string, 0, len(n.outs))
	for _, o := range n.outs {
		w := o.sender.Name()
		if d, ok := o.sender.(describer); ok {
			w += " " + d.describe()
		}
		where = append(where, w)
	}
	n.log.Info().Strs("senders", where).Msg("notifications on")
	var wg sync.WaitGroup
	for _, o := range n.outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if n.am != nil && o == n.am.outlet {
				n.am.run(ctx, &n.log)
				return
			}
			o.run(ctx, &n.log)
		}()
	}
	d := newDispatcher(n, src)
	if n.am != nil {
		now := time.Now()
		for _, rec := range src.List(now).Open {
			n.am.enqueue(n.incidentMessageOf(&rec, nil, n.mode(), now), &n.log)
		}
	}
	d.run(ctx)
	wg.Wait()
	return nil
}

// Test sends one sample message through every sender at once, whatever
// its min_severity, and returns what came of each, in the order of the
// senders: nil, or why it failed.
func (n *Notifier) Test(ctx context.Context) []Result {
	m := message.Sample()
	m.Instance, m.Time = n.instance, time.Now().UTC()
	m.Title = "test: a sample notification of astguard on " + n.instance + ": nothing happened"
	m.Incident.Opened, m.Incident.LastAlert = m.Time, m.Time
	out := make([]Result, len(n.outs))
	var wg sync.WaitGroup
	for i, o := range n.outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = Result{Sender: o.sender.Name(), Err: o.deliver(ctx, m, nil)}
			if d, ok := o.sender.(describer); ok {
				out[i].Where = d.describe()
			}
		}()
	}
	wg.Wait()
	return out
}

// Result is what came of a test message through one sender.
type Result struct {
	Sender string
	Where  string // the receiver, without anything secret in its address
	Err    error
}

// describer says where a sender delivers, without secrets.
type describer interface{ describe() string }

// permanentError is a failure a retry cannot help.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as a failure a retry cannot help (a 4xx answer, a
// refused login).
func Permanent(err error) error { return &permanentError{err} }

func isPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// severityOf is the detector's severity of a message's.
func severityOf(s string) detector.Severity {
	if s == detector.Critical.String() {
		return detector.Critical
	}
	return detector.Warning
}

// enforcing reports whether the guard enforces now.
func (n *Notifier) enforcing() bool { return n.mode() == policy.Enforce }

// modeName is the configuration's name of a mode.
func modeName(m policy.Mode) string {
	if m == policy.Enforce {
		return config.ModeEnforce
	}
	return config.ModeObserve
}

// dropLog says, at 1, 10, 100 ..., that something was dropped.
func dropLog(n uint64) bool {
	for p := uint64(1); p <= n; p *= 10 {
		if p == n {
			return true
		}
	}
	return false
}

// sortedKeys returns m's keys, sorted.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
