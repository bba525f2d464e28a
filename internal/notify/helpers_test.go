package notify

import (
	"context"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/notify/message"
	"github.com/astguard/astguard/internal/policy"
	"github.com/astguard/astguard/internal/testenv"
)

var (
	// t0 is now: the notifier reads the book at the wall clock's time.
	t0    = time.Now().UTC().Truncate(time.Second)
	thief = netip.MustParseAddr("203.0.113.9")
)

// testConfig is the default [notify] table, each update its own message,
// no digest.
func testConfig() config.Notify {
	c := config.Default().Notify
	c.Instance = "pbx-test"
	c.BatchDelay = 0
	c.DigestThreshold = 0
	c.Webhook.RetryBackoff = config.Duration(10 * time.Millisecond)
	return c
}

// recorder is a Sender that keeps what it gets; while hold is open it
// waits (a receiver that hangs).
type recorder struct {
	name string
	hold chan struct{} // nil: never waits

	mu   sync.Mutex
	msgs []*message.Message
}

func (r *recorder) Name() string { return r.name }

func (r *recorder) Send(ctx context.Context, m *message.Message) error {
	if r.hold != nil {
		select {
		case <-r.hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	return nil
}

func (r *recorder) messages() []*message.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*message.Message(nil), r.msgs...)
}

// fixture is a notifier running over an incident book, and a responder
// that carries out every decision of the book at once.
type fixture struct {
	t    *testing.T
	n    *Notifier
	book *incident.Book
	tab  *policy.Table
	// result is what the responder reports of each action (None: nothing).
	result policy.Result
	stop   func()
}

// start runs a notifier of cfg with senders over a new book in mode; the
// probes, if any, are watched.
func start(t *testing.T, cfg config.Notify, mode policy.Mode, probes []Probe, senders ...Sender) *fixture {
	t.Helper()
	n, err := New(Options{Config: cfg, Senders: senders, Probes: probes, Logger: zerolog.New(zerolog.NewTestWriter(t)),
		SecretsFile: func() string { return "/var/lib/astguard/secrets.jsonl" }, Mode: func() policy.Mode { return mode }})
	if err != nil {
		t.Fatal(err)
	}
	book, err := incident.New(incident.Options{Quiet: 15 * time.Minute, Mode: mode, Observer: n.Observe})
	if err != nil {
		t.Fatal(err)
	}
	tab, err := policy.NewTable(&config.Default().Policy)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, n: n, book: book, tab: tab, result: policy.Done}
	f.stop = f.run(context.Background())
	t.Cleanup(func() { f.stop() })
	return f
}

// run runs the notifier until the returned func is called, which waits
// for it to end.
func (f *fixture) run(ctx context.Context) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = f.n.Run(ctx, f.book)
	}()
	return func() { cancel(); <-done }
}

// alert hands a critical alert of extension SIP/ext to the book at at and
// reports the outcome of each action it decides.
func (f *fixture) alert(ext string, at time.Time, numbers ...string) string {
	f.t.Helper()
	a := &detector.Alert{Time: at, Rule: detector.RuleCallRate, Severity: detector.Critical, Tech: ami.TechSIP, Extension: ext,
		Sources: []netip.Addr{thief}, Count: 5, Window: time.Second, Reason: "calls started", Numbers: numbers}
	decs := f.book.Decide(f.tab, a, at, nil)
	id := ""
	for _, d := range decs {
		id = d.Incident
		if d.Action == policy.Alert || d.Result != policy.Running || f.result == policy.None {
			continue
		}
		target := d.Key.String()
		if d.Action == policy.BlockIP {
			target = thief.String()
		}
		o := incident.Outcome{Result: f.result, Target: target, Time: at, Detail: "carried out by the test"}
		if f.result == policy.Failed {
			o.Error = "AMI: not connected"
		}
		if err := f.book.Outcome(d.Incident, d.Action, o); err != nil {
			f.t.Fatal(err)
		}
	}
	return id
}

// ext is the name of the i-th extension of a test.
func ext(i int) string { return strconv.Itoa(1000 + i) }

// waitMessages waits until r holds n messages at least, and returns them.
func waitMessages(t *testing.T, r *recorder, n int) []*message.Message {
	t.Helper()
	testenv.WaitFor(t, strconv.Itoa(n)+" messages", 10*time.Second, func() bool { return len(r.messages()) >= n })
	return r.messages()
}
