package notify

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/notify/message"
	"github.com/astguard/astguard/internal/policy"
	"github.com/astguard/astguard/internal/testenv"
)

// updates returns each message's incident updates.
func updates(ms []*message.Message) [][]string {
	var out [][]string
	for _, m := range ms {
		out = append(out, m.Incident.Updates)
	}
	return out
}

// An attack of hundreds of alerts gives one message per incident update:
// opened, each action's outcome, closed; none for the alerts that only
// join the incident.
func TestOneMessagePerUpdate(t *testing.T) {
	t.Parallel()
	rec := &recorder{name: nameWebhook}
	f := start(t, testConfig(), policy.Enforce, nil, rec)
	id := f.alert("200", t0, "0011442079460000", "00442079460001")
	for i := range 300 {
		f.alert("200", t0.Add(time.Duration(i)*time.Millisecond), "011442079460002")
	}
	if _, err := f.book.Release(policy.ExtensionKey(1, "200"), t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	ms := waitMessages(t, rec, 5)
	want := [][]string{{"opened"}, {"hangup done"}, {"block_ip done"}, {"rotate_secret done"}, {"released"}}
	if got := updates(ms); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("updates: %v, want %v", got, want)
	}
	// Nothing more comes: wait for a message a later update would bring,
	// the proof that the dispatcher has gone past the 300 alerts.
	f.alert("201", t0)
	ms = waitMessages(t, rec, 9)
	if len(ms) != 9 || ms[5].Incident.Extension != "SIP/201" {
		t.Fatalf("%d messages; the 6th about %s", len(ms), ms[len(ms)-1].Incident.Extension)
	}

	first, last := ms[0], ms[4]
	if first.Kind != message.KindIncident || first.Event != message.EventOpened || first.Incident.ID != id || first.Severity != "critical" ||
		first.Mode != "enforce" || first.Instance != "pbx-test" {
		t.Errorf("first message: %+v", first)
	}
	if !strings.HasPrefix(first.Title, "incident "+id+" opened: SIP/200, call_rate critical") {
		t.Errorf("title %q", first.Title)
	}
	for _, s := range []string{"Extension:   SIP/200", "Sources:     203.0.113.9", "Dialled:     0011442079460000, 00442079460001"} {
		if !strings.Contains(first.Text, s) {
			t.Errorf("the text lacks %q:\n%s", s, first.Text)
		}
	}
	if ms[3].Incident.SecretsFile != "/var/lib/astguard/secrets.jsonl" || !strings.Contains(ms[3].Text, "New secret:  in /var/lib/astguard/secrets.jsonl") {
		t.Errorf("the rotation's message does not say where the new secret is:\n%s", ms[3].Text)
	}
	if last.Event != message.EventClosed || last.Incident.State != "released" || last.Incident.Alerts != 301 ||
		!strings.Contains(last.Title, "incident "+id+" released") {
		t.Errorf("last message: %s %+v", last.Title, last.Incident)
	}
}

// The updates within batch_delay go out together: fewer messages, the
// same updates in the same order.
func TestBatchDelay(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.BatchDelay = config.Duration(500 * time.Millisecond)
	rec := &recorder{name: nameWebhook}
	f := start(t, cfg, policy.Enforce, nil, rec)
	f.alert("200", t0)
	if _, err := f.book.Release(policy.ExtensionKey(1, "200"), t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	want := []string{"opened", "hangup done", "block_ip done", "rotate_secret done", "released"}
	var got []string
	testenv.WaitFor(t, "every update", 10*time.Second, func() bool {
		got = nil
		for _, u := range updates(rec.messages()) {
			got = append(got, u...)
		}
		return len(got) >= len(want)
	})
	if ms := rec.messages(); !slices.Equal(got, want) || len(ms) >= len(want) {
		t.Fatalf("%d messages with the updates %v", len(ms), updates(ms))
	}
}

// In observe mode the messages are sent and say "observe: would".
func TestObserveModeSaysWould(t *testing.T) {
	t.Parallel()
	rec := &recorder{name: nameWebhook}
	f := start(t, testConfig(), policy.Observe, nil, rec)
	f.alert("200", t0)
	m := waitMessages(t, rec, 1)[0]
	if m.Mode != "observe" || !strings.Contains(m.Title, "observe: would hangup, block_ip, rotate_secret") {
		t.Fatalf("title %q, mode %s", m.Title, m.Mode)
	}
	for _, s := range []string{"observe mode", "observe: would hangup SIP/200", "observe: would rotate_secret"} {
		if !strings.Contains(m.Text, s) {
			t.Errorf("the text lacks %q:\n%s", s, m.Text)
		}
	}
}

// A failed action makes the message critical and says why.
func TestFailedActionIsCritical(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Webhook.MinSeverity = "critical"
	rec := &recorder{name: nameWebhook}
	f := start(t, cfg, policy.Enforce, nil, rec)
	f.result = policy.Failed
	f.alert("200", t0)
	ms := waitMessages(t, rec, 4)
	if ms[1].Severity != "critical" || !strings.Contains(ms[1].Text, "Failed:      hangup SIP/200: AMI: not connected") {
		t.Fatalf("%s\n%s", ms[1].Severity, ms[1].Text)
	}
}

// More incidents than digest_threshold within digest_window: the first
// ones are told one by one, the rest (and their later updates) in one
// digest per window.
func TestDigest(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.DigestThreshold = 3
	cfg.DigestWindow = config.Duration(time.Second)
	rec := &recorder{name: nameWebhook}
	fake := newFakeAM(t)
	f := start(t, cfg, policy.Enforce, nil, rec, fake.sender(t))
	f.result = policy.None
	for i := range 10 {
		f.alert(ext(i), t0)
	}
	ms := waitMessages(t, rec, 4)
	var single, digest []*message.Message
	for _, m := range ms {
		if m.Kind == message.KindDigest {
			digest = append(digest, m)
		} else {
			single = append(single, m)
		}
	}
	if len(single) != 3 || len(digest) != 1 || len(digest[0].Incidents) != 7 {
		t.Fatalf("%d single messages, %d digests of %v", len(single), len(digest), digest)
	}
	d := digest[0]
	if d.Severity != "critical" || !strings.HasPrefix(d.Title, "digest: 7 incidents (7 opened, 0 closed): more than 3 opened within 1s") ||
		!strings.Contains(d.Text, "SIP/1009  call_rate critical  opened  from 203.0.113.9") {
		t.Fatalf("digest: %s\n%s", d.Title, d.Text)
	}
	// Alertmanager gets each incident on its own: its grouping is the
	// digest.
	testenv.WaitFor(t, "10 alerts", 10*time.Second, func() bool { return len(fake.incidents()) == 10 })

	// Their closes: one by one for the first three, one digest for the
	// seven.
	for i := range 10 {
		if _, err := f.book.Release(policy.ExtensionKey(1, ext(i)), t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	ms = waitMessages(t, rec, 8)
	if len(ms) != 8 || ms[7].Kind != message.KindDigest || len(ms[7].Incidents) != 7 || !strings.Contains(ms[7].Title, "(0 opened, 7 closed)") {
		t.Fatalf("after the closes: %d messages, the last %s", len(ms), ms[len(ms)-1].Title)
	}
}

// Observe never waits: with nobody reading, a full queue drops the event
// and counts it.
func TestObserveNeverWaits(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.QueueSize = 2
	n, err := New(Options{Config: cfg, Senders: []Sender{&recorder{name: nameWebhook}}})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		n.Observe(incident.Event{Kind: incident.EventOpened, ID: "inc-1"})
	}
	if s := n.Stats(); s.EventsDropped != 3 || s.LastDrop.IsZero() {
		t.Fatalf("stats %+v", s)
	}
}

// A sender whose receiver hangs holds up nothing: the book's calls return,
// the other senders deliver, its own queue drops what does not fit and
// counts it.
func TestHangingSenderBlocksNothing(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.QueueSize = 1
	cfg.Webhook.Timeout = config.Duration(time.Hour)
	hung := &recorder{name: nameWebhook, hold: make(chan struct{})}
	mail := &recorder{name: nameEmail}
	f := start(t, cfg, policy.Enforce, nil, hung, mail)
	f.result = policy.None
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 5 {
			f.alert(ext(i), t0)
		}
	}()
	<-done // the book's calls returned: the test would time out otherwise
	// The queues of one drop what does not fit, each counted: every event
	// is a message, or dropped; every message is sent by mail, or
	// dropped.
	testenv.WaitFor(t, "the events to be dealt with", 10*time.Second, func() bool {
		s := f.n.Stats()
		return s.EventsDropped+s.Senders[1].Sent+s.Senders[1].Dropped == 5
	})
	s := f.n.Stats()
	made := 5 - s.EventsDropped
	webhook := s.Senders[0]
	// The hung webhook: one message in its hands, at most one queued, the
	// rest dropped; none sent.
	if webhook.Name != nameWebhook || webhook.Sent != 0 || webhook.Dropped+2 < made {
		t.Fatalf("%d messages made; webhook %+v", made, webhook)
	}
	close(hung.hold)
	testenv.WaitFor(t, "the webhook to catch up", 10*time.Second, func() bool {
		return f.n.Stats().Senders[0].Sent+webhook.Dropped == made
	})
}

// The guard's trouble is told once it lasts trouble_after, and its end.
func TestTrouble(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.TroubleAfter = config.Duration(time.Minute)
	var mu sync.Mutex
	cond := Condition{}
	asked := 0
	set := func(c Condition) { mu.Lock(); cond, asked = c, 0; mu.Unlock() }
	probe := Probe{What: "ami", Name: "events", Check: func() Condition {
		mu.Lock()
		defer mu.Unlock()
		asked++
		return cond
	}}
	rec := &recorder{name: nameWebhook}
	start(t, cfg, policy.Enforce, []Probe{probe}, rec)
	// Down for less than trouble_after: nothing, however often asked.
	set(Condition{Down: true, Since: time.Now(), Problem: "login_refused", Detail: "Authentication failed"})
	testenv.WaitFor(t, "the probe to be asked twice", 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return asked >= 2 })
	if ms := rec.messages(); len(ms) != 0 {
		t.Fatalf("trouble shorter than trouble_after: %s", ms[0].Title)
	}
	set(Condition{Down: true, Since: time.Now().Add(-2 * time.Minute), Problem: "login_refused", Detail: "Authentication failed"})
	ms := waitMessages(t, rec, 1)
	down := ms[0]
	if down.Kind != message.KindTrouble || down.Event != message.EventAMIDown || down.Severity != "critical" ||
		!strings.HasPrefix(down.Title, "AMI session events down for 2m") || !strings.Contains(down.Title, "(login_refused: Authentication failed)") {
		t.Fatalf("trouble: %+v", down)
	}
	set(Condition{})
	ms = waitMessages(t, rec, 2)
	if up := ms[1]; len(ms) != 2 || up.Event != message.EventAMIUp || up.Trouble.Down {
		t.Fatalf("recovery: %+v", ms)
	}
}
