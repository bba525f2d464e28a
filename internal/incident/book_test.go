package incident

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

var (
	t0     = time.Date(2026, 11, 30, 1, 51, 0, 0, time.UTC)
	quiet  = 15 * time.Minute
	thief  = netip.MustParseAddr("203.0.113.9")
	office = netip.MustParseAddr("192.0.2.10")
	guess  = netip.MustParseAddr("198.51.100.4")
)

func critical(rule detector.Rule, at time.Time, sources ...netip.Addr) *detector.Alert {
	return &detector.Alert{Time: at, Rule: rule, Severity: detector.Critical, Tech: ami.TechSIP, Extension: "200",
		Sources: sources, Count: 5, Window: time.Second, Reason: "calls started"}
}

func addrCritical(ip netip.Addr, at time.Time) *detector.Alert {
	return &detector.Alert{Time: at, Rule: detector.RuleAuthFailures, Severity: detector.Critical, IP: ip,
		Count: 5, Window: time.Minute, Reason: "failed authentications"}
}

// responses returns the decisions other than Alert, as action and result.
type ar struct {
	Action policy.Action
	Result policy.Result
}

func responses(ds []policy.Decision) []ar {
	var out []ar
	for _, d := range ds {
		if d.Action != policy.Alert {
			out = append(out, ar{d.Action, d.Result})
		}
	}
	return out
}

var everything = []ar{{policy.Hangup, policy.Running}, {policy.BlockIP, policy.Running}, {policy.RotateSecret, policy.Running}}

// An incident closes when no alert of its key came for the quiet time, at
// its last alert plus the quiet time; the next alert opens a new one and
// responds again.
func TestQuietExpiry(t *testing.T) {
	for _, tt := range []struct {
		name   string
		expire bool // Expire runs before the next alert (else Decide finds it quiet)
	}{{"by Expire", true}, {"found by Decide", false}} {
		t.Run(tt.name, func(t *testing.T) {
			r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce}))
			first := r.alert(critical(detector.RuleCallRate, t0, thief))
			if got := responses(first); !slices.Equal(got, everything) {
				t.Fatalf("first critical: %v", got)
			}
			id := first[0].Incident
			last := t0.Add(10 * time.Minute)
			if got := responses(r.alert(critical(detector.RulePrefixGuess, last, thief))); got != nil {
				t.Fatalf("second critical of the incident: %v", got)
			}
			end := last.Add(quiet)
			if closed, err := r.book.Expire(end.Add(-time.Nanosecond)); err != nil || len(closed) != 0 {
				t.Fatalf("Expire before the quiet time: %v, %v", closed, err)
			}
			if _, ok := r.book.Stopped(ami.TechSIP, "200", end.Add(-time.Nanosecond)); !ok {
				t.Fatal("not stopped within the quiet time")
			}
			if _, ok := r.book.Stopped(ami.TechSIP, "200", end); ok {
				t.Fatal("still stopped after the quiet time")
			}
			if tt.expire {
				closed, err := r.book.Expire(end)
				if err != nil || len(closed) != 1 || closed[0].ID != id || !closed[0].Closed.Equal(end) || closed[0].CloseReason != ClosedQuiet {
					t.Fatalf("Expire at the quiet time: %+v, %v", closed, err)
				}
			}
			next := r.alert(critical(detector.RuleInternational, end.Add(time.Hour), thief))
			if got := responses(next); !slices.Equal(got, everything) {
				t.Fatalf("critical after the incident closed: %v", got)
			}
			if next[0].Incident == id || next[0].Incident == "" || next[0].OpenedBy != detector.RuleInternational {
				t.Fatalf("new incident %q opened by %s, after %q", next[0].Incident, next[0].OpenedBy, id)
			}
			l := r.book.List(end.Add(time.Hour))
			if len(l.Open) != 1 || len(l.Recent) != 1 || l.Recent[0].ID != id || !l.Recent[0].Closed.Equal(end) || l.Recent[0].Stopped {
				t.Fatalf("listing: %+v", l)
			}
		})
	}
}

// Release ends an extension's stop at once; its next alert opens a new
// incident.
func TestRelease(t *testing.T) {
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce}))
	decs := r.alert(critical(detector.RuleCallRate, t0, thief))
	stop, ok := r.book.Stopped(ami.TechSIP, "200", t0.Add(time.Minute))
	if !ok || stop != (Stop{Incident: decs[0].Incident, Rule: detector.RuleCallRate}) {
		t.Fatalf("Stopped = %+v, %v", stop, ok)
	}
	if _, ok := r.book.Stopped(ami.TechPJSIP, "200", t0); ok {
		t.Fatal("PJSIP/200 stopped for SIP/200's incident")
	}
	rec, err := r.book.Release(sip200, t0.Add(2*time.Minute))
	if err != nil || rec.ID != decs[0].Incident || rec.CloseReason != ClosedReleased || rec.Stopped {
		t.Fatalf("Release = %+v, %v", rec, err)
	}
	if _, ok := r.book.Stopped(ami.TechSIP, "200", t0.Add(3*time.Minute)); ok {
		t.Fatal("still stopped after Release")
	}
	if _, err := r.book.Release(sip200, t0.Add(3*time.Minute)); !errors.Is(err, ErrNotOpen) {
		t.Fatalf("second Release: %v", err)
	}
	if got := responses(r.alert(critical(detector.RulePrefixGuess, t0.Add(4*time.Minute), thief))); !slices.Equal(got, everything) {
		t.Fatalf("critical after Release: %v", got)
	}
}

// A hangup refused (skipped) does not stop the extension; one that failed
// still does (its incident decided to stop it), and is tried again.
func TestStopFollowsHangup(t *testing.T) {
	for _, tt := range []struct {
		result  policy.Result
		stopped bool
	}{{policy.Done, true}, {policy.Failed, true}, {policy.Skipped, false}} {
		r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce}))
		r.result = tt.result
		r.alert(critical(detector.RuleCallRate, t0, thief))
		if _, ok := r.book.Stopped(ami.TechSIP, "200", t0); ok != tt.stopped {
			t.Errorf("hangup %s: stopped %v, want %v", tt.result, ok, tt.stopped)
		}
	}
}

// A failed action is decided again by later alerts, MaxAttempts times in
// all; the others are not.
func TestFailedRetriedBounded(t *testing.T) {
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce}))
	r.result = policy.Failed
	var rotations []uint8
	for i := range 5 {
		for _, d := range r.alert(critical(detector.RuleCallRate, t0.Add(time.Duration(i)*time.Minute), thief)) {
			if d.Action == policy.RotateSecret {
				rotations = append(rotations, d.Attempt)
			}
		}
	}
	if !slices.Equal(rotations, []uint8{1, 2, 3}) {
		t.Fatalf("rotations decided as attempts %v, want 1, 2, 3", rotations)
	}
	rec := find(t, r.book.List(t0.Add(5*time.Minute)), sip200)
	for _, a := range rec.Actions {
		if a.Result != policy.Failed || a.Attempts != policy.MaxAttempts || len(a.Outcomes) != policy.MaxAttempts {
			t.Errorf("%s: %s, %d attempts, %d outcomes", a.Action, a.Result, a.Attempts, len(a.Outcomes))
		}
	}
}

// An address that an extension's open incident blocked is not blocked
// again by the address's own incident; once the extension's incident is
// over, it is.
func TestOwnedAddressNotBlockedAgain(t *testing.T) {
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce}))
	ext := r.alert(critical(detector.RuleCallRate, t0, thief))
	extID := ext[0].Incident
	if ref, ok := r.book.Owner(thief, t0); !ok || ref != (policy.Ref{ID: extID, Key: sip200}) {
		t.Fatalf("Owner(%s) = %+v, %v", thief, ref, ok)
	}

	addrKey := policy.AddressKey(thief)
	got := r.alert(addrCritical(thief, t0.Add(time.Minute)))
	if len(got) != 2 || got[1].Action != policy.BlockIP || got[1].Result != policy.Skipped || got[1].BlockedBy.ID != extID || got[1].Incident == "" {
		t.Fatalf("address alert of an owned address: %+v", got)
	}
	addrID := got[1].Incident
	if got := responses(r.alert(addrCritical(thief, t0.Add(2*time.Minute)))); got != nil {
		t.Fatalf("second address alert: %v, want nothing (said once)", got)
	}
	rec := find(t, r.book.List(t0.Add(2*time.Minute)), addrKey)
	if len(rec.Actions) != 1 || rec.Actions[0].Result != policy.Skipped || rec.Actions[0].BlockedBy != extID || len(rec.Actions[0].Outcomes) != 1 {
		t.Fatalf("address incident: %+v", rec.Actions)
	}

	if _, err := r.book.Release(sip200, t0.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	got = r.alert(addrCritical(thief, t0.Add(4*time.Minute)))
	if g := responses(got); !slices.Equal(g, []ar{{policy.BlockIP, policy.Running}}) || got[1].Incident != addrID {
		t.Fatalf("address alert once the extension's incident is over: %+v", got)
	}
	if ref, ok := r.book.Owner(thief, t0.Add(4*time.Minute)); !ok || ref.ID != addrID {
		t.Fatalf("Owner(%s) after its own block = %+v, %v", thief, ref, ok)
	}
}

// An address its own incident blocked stays that incident's when an
// extension's incident later decides to block it: Owner names the
// address's incident, so the guard does not ban the address again.
func TestAddressIncidentKeepsItsAddress(t *testing.T) {
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce}))
	addrID := r.alert(addrCritical(thief, t0))[1].Incident
	r.result = policy.None // the extension's block is being carried out
	decs := r.alert(critical(detector.RuleCallRate, t0.Add(time.Minute), thief))
	if !slices.Contains(responses(decs), ar{policy.BlockIP, policy.Running}) {
		t.Fatalf("the extension's alert: %+v, want its block_ip decided", decs)
	}
	if ref, ok := r.book.Owner(thief, t0.Add(time.Minute)); !ok || ref != (policy.Ref{ID: addrID, Key: policy.AddressKey(thief)}) {
		t.Fatalf("Owner(%s) = %+v, %v; want the address's own incident %s", thief, ref, ok, addrID)
	}
}

// The address an extension's incident owns is the one it reports having
// blocked (the live call's), not the alert's source it was decided with.
func TestOwnerIsTheAddressBlocked(t *testing.T) {
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce}))
	r.result = policy.None
	decs := r.alert(critical(detector.RuleCallRate, t0, office))
	id := decs[0].Incident
	if ref, ok := r.book.Owner(office, t0); !ok || ref.ID != id {
		t.Fatal("the address being blocked is not owned meanwhile")
	}
	if err := r.book.Outcome(id, policy.BlockIP, Outcome{Result: policy.Done, Target: thief.String(), Time: t0}); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.book.Owner(office, t0); ok {
		t.Error("the source decided with is still owned after the live call's address was blocked")
	}
	if ref, ok := r.book.Owner(thief, t0); !ok || ref.ID != id {
		t.Error("the address blocked is not owned")
	}
	if err := r.book.Outcome("inc-nope", policy.BlockIP, Outcome{Result: policy.Done, Time: t0}); !errors.Is(err, ErrUnknown) {
		t.Errorf("Outcome of an unknown incident: %v", err)
	}
	if err := r.book.Outcome(id, policy.BlockIP, Outcome{Result: policy.Running, Time: t0}); err == nil {
		t.Error("an outcome Running was taken")
	}
}

// From observe to enforce, an incident's Would actions are carried out
// for real at its next alert; back in observe, nothing more.
func TestModeSwitch(t *testing.T) {
	store := &memStore{}
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Observe, Store: store}))
	decs := r.alert(critical(detector.RuleCallRate, t0, thief))
	if got := responses(decs); !slices.Equal(got, []ar{{policy.Hangup, policy.Would}, {policy.BlockIP, policy.Would}, {policy.RotateSecret, policy.Would}}) {
		t.Fatalf("observe: %v", got)
	}
	if _, n := store.last(); n != 0 {
		t.Fatal("observe mode saved")
	}
	if err := r.book.SetMode(policy.Enforce); err != nil {
		t.Fatal(err)
	}
	if _, n := store.last(); n != 1 {
		t.Fatalf("SetMode(Enforce) saved %d times, want once (the changes made in observe mode)", n)
	}
	next := r.alert(critical(detector.RulePrefixGuess, t0.Add(time.Minute), thief))
	if got := responses(next); !slices.Equal(got, everything) || next[0].Incident != decs[0].Incident {
		t.Fatalf("enforce after observe: %v in %s", got, next[0].Incident)
	}
	if err := r.book.SetMode(policy.Observe); err != nil {
		t.Fatal(err)
	}
	if got := responses(r.alert(critical(detector.RuleInternational, t0.Add(2*time.Minute), thief))); got != nil {
		t.Fatalf("observe after enforce: %v", got)
	}
}

// Decide records in memory only (it runs on the detector loop, and a
// hang-up must not wait for a disk write); Flush saves the responses
// decided as running, so that a crash while carrying out a rotation does
// not run it again. A failed save is reported, the decisions stand, and
// the next Flush or Expire saves.
func TestDecideRecordsFlushSaves(t *testing.T) {
	store := &memStore{}
	book := mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, Store: store})
	tab := newResponder(t, book).tab
	decs := book.Decide(tab, critical(detector.RuleCallRate, t0, thief), t0, nil)
	if _, n := store.last(); n != 0 {
		t.Fatalf("Decide saved %d times, want none", n)
	}
	if err := book.Flush(); err != nil {
		t.Fatal(err)
	}
	raw, n := store.last()
	if n != 1 {
		t.Fatalf("%d saves after Flush, want 1", n)
	}
	var recs []Record
	if err := json.Unmarshal(raw, &recs); err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].ID != decs[0].Incident || len(recs[0].Actions) != 3 {
		t.Fatalf("saved %+v", recs)
	}
	for _, a := range recs[0].Actions {
		if a.Result != policy.Running || a.Attempts != 1 {
			t.Errorf("saved %s as %s after %d attempts", a.Action, a.Result, a.Attempts)
		}
	}

	store.err = errors.New("disk full")
	got := book.Decide(tab, addrCritical(guess, t0.Add(time.Second)), t0.Add(time.Second), nil)
	if g := responses(got); !slices.Equal(g, []ar{{policy.BlockIP, policy.Running}}) {
		t.Fatalf("decisions with a failing store: %v", g)
	}
	if err := book.Flush(); err == nil || !errors.Is(err, store.err) {
		t.Fatalf("Flush with a failing store: %v", err)
	}
	store.err = nil
	if _, err := book.Expire(t0.Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	raw, _ = store.last()
	if err := json.Unmarshal(raw, &recs); err != nil || len(recs) != 2 {
		t.Fatalf("after the store recovered: %d incidents saved, %v", len(recs), err)
	}
	// Nothing changed: nothing written.
	_, n = store.last()
	if _, err := book.Expire(t0.Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := book.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, n2 := store.last(); n2 != n {
		t.Fatal("a book that had not changed was saved")
	}
}

// Closed incidents are kept for KeepClosed, and at most MaxClosed.
func TestClosedKeptForAWhile(t *testing.T) {
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, KeepClosed: 24 * time.Hour, MaxClosed: 3}))
	var ids []string
	for i := range 5 {
		at := t0.Add(time.Duration(i) * time.Hour)
		ids = append(ids, r.alert(addrCritical(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), at))[0].Incident)
	}
	l := r.book.List(t0.Add(5 * time.Hour))
	var recent []string
	for _, rec := range l.Recent {
		recent = append(recent, rec.ID)
	}
	if want := []string{ids[4], ids[3], ids[2]}; !slices.Equal(recent, want) {
		t.Fatalf("recent %v, want the 3 newest, newest first: %v", recent, want)
	}
	l = r.book.List(t0.Add(4*time.Hour + quiet + 24*time.Hour))
	if len(l.Recent) != 1 || l.Recent[0].ID != ids[4] {
		t.Fatalf("after a day: %+v", l.Recent)
	}
	if err := r.book.Outcome(ids[0], policy.BlockIP, Outcome{Result: policy.Done, Time: t0}); !errors.Is(err, ErrUnknown) {
		t.Fatalf("Outcome of a dropped incident: %v", err)
	}
}

// The guard uses the book from its detector loop (Decide, Stopped,
// Expire), its responder's goroutines (Outcome) and its admin endpoint
// (List, Release) at once.
func TestConcurrentUse(t *testing.T) {
	store := &memStore{}
	book := mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, Store: store})
	tab := newResponder(t, book).tab
	outcomes := make(chan policy.Decision, 64)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for d := range outcomes {
				if err := book.Outcome(d.Incident, d.Action, Outcome{Result: policy.Done, Target: d.Key.String(), Time: t0}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 200 {
			now := t0.Add(time.Duration(i) * time.Second)
			book.Stopped(ami.TechSIP, "200", now)
			book.List(now)
			book.Owner(thief, now)
		}
	})
	for i := range 200 {
		now := t0.Add(time.Duration(i) * time.Second)
		a := critical(detector.RuleCallRate, now, thief)
		a.Extension = strconv.Itoa(200 + i%20)
		decs := book.Decide(tab, a, now, nil)
		for _, d := range decs {
			if d.Result == policy.Running && d.Action != policy.Alert {
				outcomes <- d
			}
		}
		if _, err := book.Expire(now); err != nil {
			t.Fatal(err)
		}
	}
	close(outcomes)
	wg.Wait()
	l := book.List(t0.Add(200 * time.Second))
	if len(l.Open) != 20 {
		t.Fatalf("%d open incidents, want 20", len(l.Open))
	}
	for _, rec := range l.Open {
		for _, a := range rec.Actions {
			if a.Result != policy.Done || a.Attempts != 1 {
				t.Errorf("%s %s: %s after %d attempts", rec.Key, a.Action, a.Result, a.Attempts)
			}
		}
	}
}

// With a dry-run firewall block_ip's outcome is Would: final for the
// incident, and the address is the incident's, so neither a later alert
// nor the address's own incident records it again.
func TestDryRunBlockOnce(t *testing.T) {
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce}))
	r.result = policy.Would
	first := r.alert(critical(detector.RuleCallRate, t0, thief))
	if got := responses(first); !slices.Equal(got, everything) {
		t.Fatalf("first critical: %v", got)
	}
	if got := responses(r.alert(critical(detector.RulePrefixGuess, t0.Add(time.Second), thief))); got != nil {
		t.Fatalf("second critical after a dry run: %v", got)
	}
	got := r.alert(addrCritical(thief, t0.Add(2*time.Second)))
	if g := responses(got); !slices.Equal(g, []ar{{policy.BlockIP, policy.Skipped}}) || got[1].BlockedBy.ID != first[0].Incident {
		t.Fatalf("address alert after the extension's dry-run block: %+v", got)
	}
}
