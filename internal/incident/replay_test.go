package incident

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// checkAttackMixed checks the responses decided over attack-mixed.ami in
// enforce mode: each stolen extension hung up, blocked and given a new
// secret once, each attacking address blocked once, whatever the number
// of critical alerts, and every response naming the incident of its key.
func checkAttackMixed(t *testing.T, decs []policy.Decision) {
	t.Helper()
	for _, key := range []policy.Key{sip200, pjsip300} {
		for _, act := range []policy.Action{policy.Hangup, policy.RotateSecret, policy.BlockIP} {
			if n := count(decs, key, act, policy.Running); n != 1 {
				t.Errorf("%s: %s decided %d times, want once", key, act, n)
			}
		}
	}
	want := map[netip.Addr]int{addr2: 1, addr5: 1, addr4: 1}
	got := blocks(decs, policy.Running)
	if len(got) != len(want) {
		t.Errorf("blocks %v, want %v", got, want)
	}
	for a, n := range want {
		if got[a] != n {
			t.Errorf("%s blocked %d times, want %d (all blocks: %v)", a, got[a], n, got)
		}
	}
	ids := map[policy.Key]string{}
	for _, d := range decs {
		if d.Action == policy.Alert {
			continue
		}
		if d.Incident == "" {
			t.Errorf("%s of %s names no incident", d.Action, d.Key)
			continue
		}
		if id, ok := ids[d.Key]; ok && id != d.Incident {
			t.Errorf("%s of %s names incident %s, earlier responses %s", d.Action, d.Key, d.Incident, id)
		}
		ids[d.Key] = d.Incident
		if d.Result == policy.Skipped || d.Result == policy.Would {
			t.Errorf("%s of %s: %s (%s)", d.Action, d.Key, d.Result, d.Detail)
		}
	}
	if len(ids) != 3 || ids[sip200] == ids[pjsip300] {
		t.Errorf("incidents %v, want one for SIP/200, PJSIP/300 and 127.0.0.4", ids)
	}
}

func TestReplayAttackMixed(t *testing.T) {
	alerts := alertsOf(t, attackMixed)
	store := &memStore{}
	r := newResponder(t, mustBook(t, Options{Mode: policy.Enforce, Store: store}))
	criticals := map[policy.Key]int{}
	logged := 0
	for i := range alerts {
		a := &alerts[i]
		if a.Severity == detector.Critical {
			criticals[policy.KeyOf(a)]++
		}
		for _, d := range r.alert(a) {
			if d.Action == policy.Alert {
				logged++
			}
		}
	}
	if r.saveErr != nil {
		t.Fatal(r.saveErr)
	}
	// The point of incidents: four criticals of SIP/200, one response each.
	if criticals[sip200] < 2 {
		t.Fatalf("the replay has %d critical alerts of SIP/200: it proves nothing", criticals[sip200])
	}
	checkAttackMixed(t, r.all)
	if logged != len(alerts) {
		t.Errorf("%d alerts logged, want every one of the %d (the default policy logs them all)", logged, len(alerts))
	}

	// What the book says of it.
	l := r.book.List(alerts[len(alerts)-1].Time)
	if len(l.Open) != 3 || len(l.Recent) != 0 {
		t.Fatalf("listing: %d open, %d recent; want 3 open", len(l.Open), len(l.Recent))
	}
	for _, rec := range l.Open {
		if rec.Key.IsExtension() != rec.Stopped {
			t.Errorf("%s (%s): stopped %v", rec.ID, rec.Key, rec.Stopped)
		}
		for _, ar := range rec.Actions {
			if ar.Result != policy.Done || ar.Attempts != 1 || len(ar.Outcomes) != 1 {
				t.Errorf("%s %s: %s after %d attempts, %d outcomes", rec.Key, ar.Action, ar.Result, ar.Attempts, len(ar.Outcomes))
			}
		}
	}
	if stop, ok := r.book.Stopped(sip200.Tech, sip200.Name, alerts[len(alerts)-1].Time); !ok || stop.Rule != detector.RuleCallRate {
		t.Errorf("SIP/200 stopped %v by %+v, want stopped by its call_rate incident", ok, stop)
	}
	if _, saves := store.last(); saves == 0 {
		t.Error("the book was never saved")
	}
}

// A restart in the middle of the attack (the book saved in the bans state
// file and loaded again) does not respond again to what was decided before
// it, whether the responses were carried out before the restart or were
// still running. The alerts are those of one detector over the whole
// replay: after a restart the guard rebuilds the detector's view of the
// extensions from Asterisk, and a fresh detector would hold SIP/200 at
// warning (never seen authenticating) where the guard would not.
func TestReplayResumedAfterRestart(t *testing.T) {
	// SIP/200's first critical is message 434 and its next 540; the cut
	// comes between them, long before PJSIP/300's attack.
	const cut = 500
	for _, tt := range []struct {
		name     string
		finished bool // the responses before the cut reported their outcomes
	}{{"carried out", true}, {"still running", false}} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bans.json")
			all := alertsOf(t, attackMixed)
			i := slices.IndexFunc(all, func(a detector.Alert) bool { return a.Seq >= cut })
			before, after := all[:i], all[i:]

			m := startBans(t, path)
			r := newResponder(t, mustBook(t, Options{Mode: policy.Enforce, Store: m}))
			for i := range before {
				if !tt.finished && i == len(before)-1 {
					r.result = policy.None
				}
				r.alert(&before[i])
			}
			if r.saveErr != nil {
				t.Fatal(r.saveErr)
			}
			if count(r.all, sip200, policy.RotateSecret, policy.Running) != 1 {
				t.Fatal("SIP/200 was not given a new secret before the cut")
			}
			if err := m.Close(context.Background()); err != nil {
				t.Fatal(err)
			}

			m = startBans(t, path)
			book := mustBook(t, Options{Mode: policy.Enforce, Store: m})
			restart := after[0].Time
			if err := book.Load(m.Incidents(), restart); err != nil {
				t.Fatal(err)
			}
			r2 := newResponder(t, book)
			sip200Criticals := 0
			for i := range after {
				if a := &after[i]; a.Severity == detector.Critical && policy.KeyOf(a) == sip200 {
					sip200Criticals++
				}
				r2.alert(&after[i])
			}
			if sip200Criticals == 0 {
				t.Fatal("no critical alert of SIP/200 after the restart: the test proves nothing")
			}
			checkAttackMixed(t, append(r.all, r2.all...))

			rec := find(t, book.List(restart), sip200)
			if !rec.Stopped {
				t.Error("SIP/200 is no longer stopped after the restart")
			}
			for _, ar := range rec.Actions {
				want := policy.Done
				if !tt.finished {
					want = policy.Skipped // interrupted: never run again
				}
				if ar.Result != want {
					t.Errorf("SIP/200 %s: %s, want %s", ar.Action, ar.Result, want)
				}
				if !tt.finished && ar.Outcomes[len(ar.Outcomes)-1].Detail != interrupted {
					t.Errorf("SIP/200 %s: outcome %+v does not say the guard stopped while it ran", ar.Action, ar.Outcomes)
				}
			}
		})
	}
}

// find returns the open incident of key in l.
func find(t *testing.T, l Listing, key policy.Key) Record {
	t.Helper()
	for _, rec := range l.Open {
		if rec.Key == key {
			return rec
		}
	}
	t.Fatalf("no open incident of %s", key)
	return Record{}
}

// The bans manager keeps the book in the state file.
var _ Store = (*bans.Manager)(nil)

// startBans starts a bans manager, enforcing with a dry-run firewall, on
// the state file at path.
func startBans(t *testing.T, path string) *bans.Manager {
	t.Helper()
	m, err := bans.New(bans.Options{Firewall: firewall.NewDryRun(zerolog.Nop()), StatePath: path, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

// Observe mode decides the same responses, each as Would once per
// incident, stops nothing and saves nothing.
func TestReplayObserve(t *testing.T) {
	alerts := alertsOf(t, attackMixed)
	r := newResponder(t, mustBook(t, Options{Mode: policy.Observe, Store: refusingStore{t}}))
	for i := range alerts {
		r.alert(&alerts[i])
	}
	for _, key := range []policy.Key{sip200, pjsip300} {
		for _, act := range []policy.Action{policy.Hangup, policy.RotateSecret, policy.BlockIP} {
			if n := count(r.all, key, act, policy.Would); n != 1 {
				t.Errorf("%s: %s would %d times, want once", key, act, n)
			}
		}
	}
	want := map[netip.Addr]int{addr2: 1, addr5: 1, addr4: 1}
	if got := blocks(r.all, policy.Would); len(got) != 3 || got[addr2] != 1 || got[addr5] != 1 || got[addr4] != 1 {
		t.Errorf("would block %v, want %v", got, want)
	}
	for _, d := range r.all {
		if d.Action != policy.Alert && (d.Result != policy.Would || d.Incident == "") {
			t.Errorf("observe mode decided %s of %s: %s in incident %q", d.Action, d.Key, d.Result, d.Incident)
		}
	}
	if _, ok := r.book.Stopped(sip200.Tech, sip200.Name, alerts[len(alerts)-1].Time); ok {
		t.Error("observe mode stopped SIP/200")
	}
}
