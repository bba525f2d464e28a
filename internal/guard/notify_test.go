package guard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/notify/message"
	"github.com/astguard/astguard/internal/policy"
)

// receiver is a webhook receiver: it keeps every message posted; while
// hang is open, each request waits.
type receiver struct {
	srv  *httptest.Server
	hang chan struct{}

	mu     sync.Mutex
	bodies []string
	msgs   []message.Message
}

func newReceiver(t *testing.T, hang bool) *receiver {
	r := &receiver{}
	if hang {
		r.hang = make(chan struct{})
	}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var m message.Message
		_ = json.Unmarshal(body, &m)
		r.mu.Lock()
		r.bodies, r.msgs = append(r.bodies, string(body)), append(r.msgs, m)
		r.mu.Unlock()
		if r.hang != nil {
			select {
			case <-r.hang:
			case <-req.Context().Done():
			}
		}
	}))
	t.Cleanup(func() {
		if r.hang != nil {
			close(r.hang)
		}
		r.srv.Close()
	})
	return r
}

func (r *receiver) messages() []message.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]message.Message(nil), r.msgs...)
}

// byIncident returns the messages about each incident.
func (r *receiver) byIncident() map[string][]message.Message {
	out := make(map[string][]message.Message)
	for _, m := range r.messages() {
		if m.Incident != nil {
			out[m.Incident.ID] = append(out[m.Incident.ID], m)
		}
	}
	return out
}

// laterOutcomes counts the outcomes of rec recorded after its opening:
// each one an update of its own (those decided with the opening come
// with it).
func laterOutcomes(rec *incident.Record) int {
	n := 0
	for _, a := range rec.Actions {
		for _, o := range a.Outcomes {
			if o.Result == policy.Done || o.Result == policy.Failed || !o.Time.Equal(rec.Opened) {
				n++
			}
		}
	}
	return n
}

// The real attack, replayed by the fake Asterisk, with a detector that
// alerts every second: each incident gets one message per update (its
// opening, each action's outcome, its close), however many alerts it gets,
// and no message holds a new secret.
func TestNotifyOneMessagePerIncidentUpdate(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, false)
	h := startGuard(t, "attack-mixed.ami", 4, func(c *config.Config) {
		c.Detection.Cooldown = config.Duration(time.Millisecond)
		c.Response.IncidentQuiet = config.Duration(3 * time.Second)
		c.Notify.Webhook.URL = rcv.srv.URL
		c.Notify.BatchDelay = 0
		c.Notify.DigestThreshold = 0
	})
	g := <-h.guard
	select {
	case <-h.srv.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("transcript not streamed")
	}
	waitFor(t, "every incident closed and told", 30*time.Second, func() bool {
		l := g.book.List(time.Now())
		if len(l.Open) > 0 || len(l.Recent) == 0 {
			return false
		}
		by := rcv.byIncident()
		for i := range l.Recent {
			if len(by[l.Recent[i].ID]) < 2+laterOutcomes(&l.Recent[i]) {
				return false
			}
		}
		return true
	})
	by := rcv.byIncident()
	recs := map[policy.Key]incident.Record{}
	for _, rec := range g.book.List(time.Now()).Recent {
		recs[rec.Key] = rec
		ms := by[rec.ID]
		if want := 2 + laterOutcomes(&rec); len(ms) != want {
			t.Errorf("incident %s of %s: %d messages for %d updates", rec.ID, rec.Key, len(ms), want)
		}
		for i, m := range ms {
			if len(m.Incident.Updates) != 1 {
				t.Errorf("incident %s, message %d: updates %v", rec.ID, i, m.Incident.Updates)
			}
		}
		if ms[0].Event != message.EventOpened || ms[len(ms)-1].Event != message.EventClosed {
			t.Errorf("incident %s: first %s, last %s", rec.ID, ms[0].Event, ms[len(ms)-1].Event)
		}
	}
	// The busiest incident got many more alerts than messages; SIP/200's
	// messages are its opening, hangup, block_ip, rotate_secret and close.
	var busiest incident.Record
	for _, r := range recs {
		if r.AlertCount > busiest.AlertCount {
			busiest = r
		}
	}
	if n := len(by[busiest.ID]); busiest.AlertCount < 10 || n >= busiest.AlertCount {
		t.Errorf("the busiest incident, %s of %s: %d alerts, %d messages", busiest.ID, busiest.Key, busiest.AlertCount, n)
	}
	rec := recs[sip200Key]
	if ms := by[rec.ID]; len(ms) != 5 {
		t.Errorf("SIP/200: %d messages, want 5", len(ms))
	}
	var rotated *message.Message
	for i, m := range by[rec.ID] {
		if m.Incident.Updates[0] == "rotate_secret done" {
			rotated = &by[rec.ID][i]
		}
	}
	if rotated == nil || rotated.Incident.SecretsFile != h.cfg.Response.SecretsFile || !strings.Contains(rotated.Text, "New secret:  in "+h.cfg.Response.SecretsFile) {
		t.Fatalf("SIP/200's rotation message: %+v", rotated)
	}

	// No new secret in any message.
	f, err := os.Open(h.cfg.Response.SecretsFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var secrets []string
	for sc := bufio.NewScanner(f); sc.Scan(); {
		var line struct{ Secret string }
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line.Secret == "" {
			t.Fatalf("secrets file line %q: %v", sc.Text(), err)
		}
		secrets = append(secrets, line.Secret)
	}
	if len(secrets) == 0 {
		t.Fatal("no secret rotated")
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	for _, b := range rcv.bodies {
		for _, s := range append(secrets, "guardpass") {
			if strings.Contains(b, s) {
				t.Fatalf("a secret is in a message: %s", b)
			}
		}
	}
}

// A webhook receiver that hangs holds up nothing: the attack is answered
// as without it, and what the notifier dropped shows in /healthz's body,
// without making the guard unhealthy.
func TestNotifyHangingReceiverSlowsNothing(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, true)
	h := startGuard(t, "attack-mixed.ami", 4, func(c *config.Config) {
		c.Notify.Webhook.URL = rcv.srv.URL
		c.Notify.Webhook.Timeout = config.Duration(time.Hour)
		c.Notify.BatchDelay = 0
		c.Notify.QueueSize = 1
	})
	g := <-h.guard
	waitFor(t, "both secrets rotated", 30*time.Second, func() bool {
		return h.outcomes.has(policy.RotateSecret, policy.Done, sip200Key) && h.outcomes.has(policy.RotateSecret, policy.Done, pjsip300Key)
	})
	waitFor(t, "notifications dropped", 10*time.Second, func() bool {
		n := g.Metrics().Health().Notifications
		return n != nil && n.EventsDropped+n.Senders["webhook"].Dropped > 0
	})
	health := g.Metrics().Health()
	for _, r := range health.Reasons {
		if strings.Contains(r, "notif") {
			t.Errorf("unhealthy because of notifications: %s", r)
		}
	}
	if s := health.Notifications.Senders["webhook"]; s.Sent != 0 {
		t.Errorf("webhook %+v", s)
	}
}

// A refused AMI login that lasts trouble_after is notified, with its
// cause.
func TestNotifyAMITrouble(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, false)
	startGuard(t, "attack-mixed.ami", 4, func(c *config.Config) {
		c.AMI.Secret = "wrong"
		c.Notify.Webhook.URL = rcv.srv.URL
		// Longer than the first login attempt, which Asterisk refuses.
		c.Notify.TroubleAfter = config.Duration(2 * time.Second)
	})
	var down *message.Message
	waitFor(t, "the trouble message", 30*time.Second, func() bool {
		for _, m := range rcv.messages() {
			if m.Event == message.EventAMIDown && m.Trouble.Name == "events" {
				down = &m
				return true
			}
		}
		return false
	})
	if down.Trouble.Problem != "login_refused" || down.Severity != "critical" || !strings.Contains(down.Title, "AMI session events down for") ||
		!strings.Contains(down.Title, "login_refused") {
		t.Fatalf("trouble message: %+v", down)
	}
	if strings.Contains(down.Text, "wrong") {
		t.Fatal("the secret is in the message")
	}
}

// failingFirewall fails what it is told to.
type failingFirewall struct {
	*firewall.DryRun
	mu  sync.Mutex
	err error
}

func (f *failingFirewall) fail(err error) { f.mu.Lock(); f.err = err; f.mu.Unlock() }

func (f *failingFirewall) Block(ctx context.Context, entries ...firewall.Entry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	return f.DryRun.Block(ctx, entries...)
}

// The firewall's probe: down from its first failure, with the error, up
// at its next success; a conntrack failure alone is no trouble.
func TestWatchedFirewall(t *testing.T) {
	fw := &failingFirewall{DryRun: firewall.NewDryRun(zerolog.Nop())}
	w := &watchedFirewall{Firewall: fw}
	a := firewall.Entry{Prefix: netip.MustParsePrefix("203.0.113.9/32"), Comment: "x"}
	if err := w.Block(t.Context(), a); err != nil || w.condition().Down {
		t.Fatalf("working: %v, %+v", err, w.condition())
	}
	fw.fail(errors.New("iptables: permission denied"))
	_ = w.Block(t.Context(), a)
	c := w.condition()
	if !c.Down || c.Detail != "iptables: permission denied" || c.Since.IsZero() {
		t.Fatalf("failing: %+v", c)
	}
	_ = w.Block(t.Context(), a)
	if w.condition().Since != c.Since {
		t.Fatal("a second failure moved the start of the trouble")
	}
	fw.fail(&firewall.Error{Op: "conntrack", Err: firewall.ErrConntrack})
	_ = w.Block(t.Context(), a)
	if w.condition().Down {
		t.Fatalf("a conntrack failure: %+v", w.condition())
	}
}
