package incident

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// eventLog is an Observer that keeps what it is told.
type eventLog struct {
	mu  sync.Mutex
	all []Event
}

func (l *eventLog) observe(ev Event) {
	l.mu.Lock()
	l.all = append(l.all, ev)
	l.mu.Unlock()
}

// take returns the events so far and forgets them.
func (l *eventLog) take() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.all
	l.all = nil
	return out
}

// kinds writes events as kind, action and result, for comparison.
func kinds(evs []Event) []string {
	var out []string
	for _, ev := range evs {
		s := ev.Kind.String()
		if ev.Kind == EventOutcome {
			s += " " + ev.Action.String() + " " + ev.Result.String()
		}
		if ev.Kind == EventClosed {
			s += " " + ev.CloseReason
		}
		out = append(out, s)
	}
	return out
}

// The observer hears each incident update once: the opening, every
// outcome, the close (by Expire, found quiet by Decide, by Release), and
// nothing of the alerts that only join an open incident.
func TestObserverEvents(t *testing.T) {
	var log eventLog
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, Observer: log.observe}))
	first := r.alert(critical(detector.RuleCallRate, t0, thief))
	id := first[0].Incident
	want := []string{"opened", "outcome hangup done", "outcome block_ip done", "outcome rotate_secret done"}
	evs := log.take()
	if got := kinds(evs); !slices.Equal(got, want) {
		t.Fatalf("opening: %v, want %v", got, want)
	}
	for _, ev := range evs {
		if ev.ID != id || ev.Key != sip200 || ev.Rule != detector.RuleCallRate || ev.Severity != detector.Critical || ev.Mode != policy.Enforce {
			t.Fatalf("event %+v of incident %s", ev, id)
		}
	}
	if !evs[0].Time.Equal(t0) {
		t.Errorf("opened at %v, want %v", evs[0].Time, t0)
	}

	// A hundred alerts of the open incident: no event.
	for i := range 100 {
		r.alert(critical(detector.RulePrefixGuess, t0.Add(time.Duration(i)*time.Second), thief))
	}
	if got := log.take(); len(got) != 0 {
		t.Fatalf("alerts joining the incident: %v", kinds(got))
	}
	rec, ok := r.book.Get(id, t0.Add(2*time.Minute))
	if !ok || rec.AlertCount != 101 || len(rec.Actions) != 3 || rec.Closes.IsZero() {
		t.Fatalf("Get = %+v, %v", rec, ok)
	}
	if _, ok := r.book.Get("inc-none", t0); ok {
		t.Fatal("Get of an unknown incident")
	}

	// Closed by Expire.
	end := t0.Add(99*time.Second + quiet)
	if _, err := r.book.Expire(end); err != nil {
		t.Fatal(err)
	}
	evs = log.take()
	if got := kinds(evs); !slices.Equal(got, []string{"closed quiet"}) || evs[0].ID != id || !evs[0].Time.Equal(end) {
		t.Fatalf("Expire: %+v", evs)
	}

	// Found quiet by Decide: closed, then the new one opens.
	second := r.alert(critical(detector.RuleCallRate, end.Add(time.Hour), thief))[0].Incident
	log.take()
	later := end.Add(time.Hour + 2*quiet)
	third := r.alert(critical(detector.RuleCallRate, later, thief))[0].Incident
	evs = log.take()
	if got := kinds(evs); len(got) < 2 || got[0] != "closed quiet" || got[1] != "opened" || evs[0].ID != second || evs[1].ID != third {
		t.Fatalf("Decide after the quiet time: %v", kinds(evs))
	}

	// Released.
	if _, err := r.book.Release(sip200, later.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if evs = log.take(); !slices.Equal(kinds(evs), []string{"closed released"}) || evs[0].ID != third {
		t.Fatalf("Release: %v", kinds(evs))
	}
}

// In observe mode the outcomes the book decides come with the opening;
// a later alert that decides one (an address skipped) is an outcome event.
func TestObserverObserveMode(t *testing.T) {
	var log eventLog
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Observe, Observer: log.observe}))
	r.alert(critical(detector.RuleCallRate, t0, thief))
	evs := log.take()
	if got := kinds(evs); !slices.Equal(got, []string{"opened"}) || evs[0].Mode != policy.Observe {
		t.Fatalf("opening in observe mode: %v", kinds(evs))
	}
	rec, _ := r.book.Get(evs[0].ID, t0)
	for _, a := range rec.Actions {
		if a.Result != policy.Would {
			t.Fatalf("observe mode: %s %s", a.Action, a.Result)
		}
	}
	// The thief's address guesses passwords: its incident's block is
	// skipped (SIP/200's would block it), an outcome of the opening.
	r.alert(addrCritical(thief, t0.Add(time.Second)))
	evs = log.take()
	if got := kinds(evs); !slices.Equal(got, []string{"opened"}) {
		t.Fatalf("address incident: %v", got)
	}
	rec, _ = r.book.Get(evs[0].ID, t0)
	if len(rec.Actions) != 1 || rec.Actions[0].Result != policy.Skipped {
		t.Fatalf("address incident's actions: %+v", rec.Actions)
	}
}

// An outcome's error is kept with it.
func TestOutcomeKeepsError(t *testing.T) {
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce}))
	r.result = policy.None
	d := r.alert(critical(detector.RuleCallRate, t0, thief))[0]
	if err := r.book.Outcome(d.Incident, policy.Hangup, Outcome{Result: policy.Failed, Time: t0, Error: "AMI: not connected"}); err != nil {
		t.Fatal(err)
	}
	rec, _ := r.book.Get(d.Incident, t0)
	if o := rec.Actions[0].Outcomes; len(o) != 1 || o[0].Error != "AMI: not connected" {
		t.Fatalf("outcomes: %+v", o)
	}
}

// An alert that only joins an open incident tells the observer nothing
// and, with the incident's alerts list full, allocates nothing, as
// without an observer: the detector loop's path does not grow.
func TestDecideJoinObservedDoesNotAllocate(t *testing.T) {
	var log eventLog
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, Observer: log.observe}))
	for i := range maxAlerts {
		r.alert(critical(detector.RuleCallRate, t0.Add(time.Duration(i)*time.Second), thief))
	}
	log.take()
	a := critical(detector.RulePrefixGuess, t0.Add(time.Minute), thief)
	dst := make([]policy.Decision, 0, 8)
	if n := testing.AllocsPerRun(1000, func() { dst = r.book.Decide(r.tab, a, t0.Add(time.Minute), dst[:0]) }); n != 0 {
		t.Errorf("Decide allocates %v times", n)
	}
	if got := log.take(); len(got) != 0 {
		t.Errorf("events: %v", kinds(got))
	}
}
