package guard

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// incidentOf returns the incident id of the first outcome about key.
func incidentOf(t *testing.T, h *harness, key policy.Key) string {
	t.Helper()
	l := h.outcomes.list(func(o *Outcome) bool { return o.Key == key })
	if len(l) == 0 {
		t.Fatalf("no outcome about %s", key)
	}
	return l[0].Incident
}

// A guard restarted in the middle of the attack, on the same state file,
// runs nothing again that the first one did: SIP/200 keeps its one new
// secret and its one ban, and stays stopped under the first guard's
// incident, even when a burst of its calls raises a new critical alert in
// the restarted guard. The attack on PJSIP/300, which comes after the
// restart, is answered once by the new guard.
func TestRestartMidAttackRunsNothingAgain(t *testing.T) {
	data, err := os.ReadFile(transcripts + "attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	fw := newCountingFirewall()
	h1 := startGuardOn(t, amitest.Options{Transcript: bytes.NewReader(data), Speed: 4, AutoPlay: true}, nil, fw, nil)
	srv := h1.srv
	waitFor(t, "SIP/200's new secret", 20*time.Second, func() bool { return h1.outcomes.has(policy.RotateSecret, policy.Done, sip200Key) })
	// Asterisk goes on while the guard restarts; the stream waits here
	// only so that the restarted guard misses as little as a real one.
	srv.Stall(true)
	h1.stop(t)
	inc200 := incidentOf(t, h1, sip200Key)
	if h1.outcomes.has(policy.RotateSecret, policy.Done, pjsip300Key) {
		t.Fatal("the first guard answered PJSIP/300 too: the restart is not in the middle of the attack")
	}

	h2 := runGuard(t, srv, h1.cfg, fw, nil)
	g2 := <-h2.guard
	srv.Stall(false)
	select {
	case <-srv.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("transcript not streamed")
	}
	waitFor(t, "PJSIP/300's new secret from the restarted guard", 20*time.Second, func() bool {
		return h2.outcomes.has(policy.RotateSecret, policy.Done, pjsip300Key)
	})

	// SIP/200 is still stopped: a burst of its calls is hung up, each
	// naming the first guard's incident.
	alertsBefore := incidentsByKey(g2.book.List(time.Now()))[sip200Key].AlertCount
	var calls []string
	for range 5 {
		calls = append(calls, newCall(h2, sip200Key))
	}
	for _, ch := range calls {
		if o := stoppedHangup(t, h2, ch); o.Result != policy.Done || o.Incident != inc200 || o.Rule != detector.RuleCallRate {
			t.Errorf("hang-up of %s after the restart: %+v; want done in incident %s opened by call_rate", ch, o, inc200)
		}
	}
	// The burst is a critical alert of SIP/200 in the restarted guard: its
	// incident takes it and decides nothing again.
	waitFor(t, "the burst's critical alert in SIP/200's incident", 10*time.Second, func() bool {
		rec := incidentsByKey(g2.book.List(time.Now()))[sip200Key]
		for _, a := range rec.Alerts[min(alertsBefore, len(rec.Alerts)):] {
			if a.Severity == detector.Critical.String() {
				return true
			}
		}
		return false
	})
	rec := incidentsByKey(g2.book.List(time.Now()))[sip200Key]
	if rec.ID != inc200 || !rec.Stopped || len(rec.Actions) != 3 {
		t.Fatalf("SIP/200 after the restart: incident %s stopped %v with %d actions; want %s, stopped, its 3 actions", rec.ID, rec.Stopped, len(rec.Actions), inc200)
	}
	for _, a := range rec.Actions {
		if a.Result != policy.Done || a.Attempts != 1 {
			t.Errorf("SIP/200 %s: %s after %d attempts, want done once", a.Action, a.Result, a.Attempts)
		}
	}
	h2.stop(t)

	for _, o := range h2.outcomes.list(nil) {
		if o.Key == sip200Key && o.AlertRule != 0 {
			t.Errorf("the restarted guard acted on SIP/200's alert again: %+v", o)
		}
	}
	if n := updateConfigs(srv); len(n) != 2 || n["200"] != 1 || n["300-auth"] != 1 {
		t.Errorf("UpdateConfig by section over both guards: %v; want one for 200 and one for 300-auth", n)
	}
	ip := netip.MustParseAddr
	if got, want := fw.counts(), map[netip.Addr]int{ip("127.0.0.2"): 1, ip("127.0.0.5"): 1, ip("127.0.0.4"): 1}; !maps.Equal(got, want) {
		t.Errorf("blocks by address over both guards: %v, want %v", got, want)
	}
}

// Observe mode decides what enforce mode would, each action once per
// incident, reports each as would in its incident, and changes nothing:
// no hang-up, no new secret, no ban, no state or secrets file written.
func TestObserveModeWouldOncePerIncident(t *testing.T) {
	fw := newCountingFirewall()
	h := startGuardWith(t, "attack-mixed.ami", 4, func(c *config.Config) { c.Mode = config.ModeObserve }, fw)
	g := <-h.guard
	select {
	case <-h.srv.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("transcript not streamed")
	}
	// A password guesser after the transcript: once its would-block is
	// reported, the guard has decided every event before it.
	guesser := policy.AddressKey(netip.MustParseAddr("192.0.2.99"))
	guessing(h.srv, "192.0.2.99")
	waitFor(t, "the would-block of 192.0.2.99", 10*time.Second, func() bool { return h.outcomes.has(policy.BlockIP, policy.Would, guesser) })
	list := g.book.List(time.Now())
	h.stop(t)

	count := map[policy.Key]map[policy.Action]int{}
	for _, o := range h.outcomes.list(nil) {
		if o.Result != policy.Would || o.Incident == "" || o.Rule == 0 {
			t.Errorf("outcome %+v: want would, in an incident", o)
		}
		if count[o.Key] == nil {
			count[o.Key] = map[policy.Action]int{}
		}
		count[o.Key][o.Action]++
	}
	want := map[policy.Key]map[policy.Action]int{
		sip200Key:   {policy.Hangup: 1, policy.BlockIP: 1, policy.RotateSecret: 1},
		pjsip300Key: {policy.Hangup: 1, policy.BlockIP: 1, policy.RotateSecret: 1},
		addr4Key:    {policy.BlockIP: 1},
		guesser:     {policy.BlockIP: 1},
	}
	if fmt.Sprint(count) != fmt.Sprint(want) {
		t.Errorf("would-outcomes by incident: %v, want %v", count, want)
	}
	if len(list.Open) != len(want) {
		t.Errorf("%d open incidents, want %d", len(list.Open), len(want))
	}
	for _, r := range list.Open {
		if r.Stopped {
			t.Errorf("observe mode stopped %s", r.Key)
		}
	}
	for _, a := range h.srv.Actions() {
		if a.Name == "Hangup" || a.Name == "UpdateConfig" {
			t.Errorf("observe mode sent %s", a.Name)
		}
	}
	if n := fw.counts(); len(n) != 0 {
		t.Errorf("observe mode blocked %v", n)
	}
	for _, f := range []string{h.cfg.Response.StateFile, h.cfg.Response.SecretsFile} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("observe mode wrote %s (%v)", f, err)
		}
	}
}

// An extension's incident does not ban an address another open incident
// holds: a thief who guessed passwords from an address (banned by that
// address's incident) and then calls on a stolen secret from it is not
// banned a second time.
func TestExtensionBlockSkipsAnAddressAnotherIncidentHolds(t *testing.T) {
	fw := newCountingFirewall()
	h := startGuardOn(t, amitest.Options{}, nil, fw, nil)
	waitLoggedIn(t, h)
	thief := netip.MustParseAddr("192.0.2.66")
	guessing(h.srv, thief.String())
	waitFor(t, "the ban of the guesser", 10*time.Second, func() bool {
		return h.outcomes.has(policy.BlockIP, policy.Done, policy.AddressKey(thief))
	})
	owner := incidentOf(t, h, policy.AddressKey(thief))
	h.srv.Inject(securityFrame("SuccessfulAuth", "SIP", "200", "IPV4/UDP/"+thief.String()+"/5060", "UsingPassword: 1"))
	for range 5 {
		newCall(h, sip200Key)
	}
	var got []Outcome
	waitFor(t, "SIP/200's block_ip outcome", 10*time.Second, func() bool {
		got = h.outcomes.list(func(o *Outcome) bool { return o.Key == sip200Key && o.Action == policy.BlockIP })
		return len(got) > 0
	})
	o := got[0]
	if o.Result != policy.Skipped || o.Target != thief.String() || !strings.Contains(o.Detail, "blocked by incident "+owner) || o.Incident == owner {
		t.Errorf("SIP/200's block_ip: %+v; want skipped, %s held by incident %s", o, thief, owner)
	}
	if n := fw.counts()[thief]; n != 1 {
		t.Errorf("%s blocked %d times, want once", thief, n)
	}
}
