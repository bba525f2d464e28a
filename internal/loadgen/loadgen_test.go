package loadgen

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
)

// readFrames parses a stream of frames (no banner) with the project's reader.
func readFrames(t *testing.T, data []byte, banner bool) [][]string {
	t.Helper()
	r := ami.NewReader(bytes.NewReader(data), ami.ReaderOptions{})
	if banner {
		if _, err := r.ReadBanner(); err != nil {
			t.Fatal(err)
		}
	}
	var out [][]string
	var m ami.Message
	for {
		err := r.Next(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for i := 0; i < m.Len(); i++ {
			if k := string(m.Key(i)); k != "TimeReceived" {
				keys = append(keys, k)
			}
		}
		out = append(out, keys)
	}
}

// TestLegitCallFramesAreReal renders one legitimate call (every class, as
// attack-mixed.ami was recorded) and checks, frame by frame, that its
// header set and order are those of 201's call in the real transcript, read
// straight from the fixture file.
func TestLegitCallFramesAreReal(t *testing.T) {
	tpl, err := loadTemplates()
	if err != nil {
		t.Fatal(err)
	}
	real, err := os.ReadFile("../../testdata/transcripts/attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	realFrames := readFrames(t, real, true)
	// Every key list of the real transcript, to find each frame's twin.
	seen := map[string]bool{}
	for _, k := range realFrames {
		seen[strings.Join(k, "\x00")] = true
	}

	cfg := config.Default()
	g := newGenerator(Options{Rate: 1000, Duration: time.Second, Extensions: 10, Seed: 1}, tpl, cfg)
	b := &batch{mask: classAll, now: time.Now(), tv: eventTV(time.Now())}
	g.legitCall(b) // first call of its extension: registration, then the call
	var c *call
	for _, s := range g.wheel {
		if len(s) > 0 {
			c = s[0]
		}
	}
	if c == nil {
		t.Fatal("no call scheduled")
	}
	g.teardown(c, b)
	got := readFrames(t, b.buf, false)

	// The real sequence: 201's registration, then its call as the template
	// extraction found it.
	var want [][]string
	for _, f := range tpl.rawSIPRegister {
		want = append(want, keysOf(&f))
	}
	for _, f := range tpl.sipCall.rawSetup {
		want = append(want, keysOf(&f))
	}
	for _, f := range tpl.sipCall.rawTeardown {
		want = append(want, keysOf(&f))
	}
	if len(got) != len(want) {
		t.Fatalf("generated %d frames, the real call has %d", len(got), len(want))
	}
	for i := range got {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("frame %d: keys\n%v\nwant\n%v", i, got[i], want[i])
		}
		if !seen[strings.Join(got[i], "\x00")] {
			t.Fatalf("frame %d (%s): no frame of attack-mixed.ami has these keys in this order", i, got[i][0])
		}
	}
	// The call is a real call: the events the guard decodes say so.
	events := []string{}
	r := ami.NewReader(bytes.NewReader(b.buf), ami.ReaderOptions{})
	var m ami.Message
	var ev ami.Event
	for r.Next(&m) == nil {
		events = append(events, m.Get("Event"))
		if ami.Decode(&m, &ev) && ev.Kind == ami.KindNewchannel && m.Get("Uniqueid") == m.Get("Linkedid") {
			if !strings.HasPrefix(ev.Channel, "SIP/"+c.vals[pEXT]+"-") || m.Get("Exten") != c.vals[pNUM] {
				t.Fatalf("Newchannel: channel %q exten %q", ev.Channel, m.Get("Exten"))
			}
		}
	}
	for _, e := range []string{"ChallengeSent", "PeerStatus", "SuccessfulAuth", "Newchannel", "VarSet", "DialBegin", "Newstate", "DialEnd", "BridgeEnter", "BridgeLeave", "Hangup"} {
		if !slices.Contains(events, e) {
			t.Fatalf("no %s in the generated call: %v", e, events)
		}
	}
	if events[len(events)-1] != "Hangup" || events[len(events)-2] != "Hangup" {
		t.Fatalf("the call does not end with the Hangup of both legs: %v", events[len(events)-3:])
	}
	// And with the guard's mask, dialplan and cdr frames are left out.
	b2 := &batch{mask: classCall | classSecurity | classSystem, now: time.Now(), tv: eventTV(time.Now())}
	g.teardown(c, b2)
	for _, k := range readFrames(t, b2.buf, false) {
		if k[0] != "Event" {
			t.Fatal("not an event")
		}
	}
	if bytes.Contains(b2.buf, []byte("Event: VarSet")) || bytes.Contains(b2.buf, []byte("Event: Cdr")) {
		t.Fatal("VarSet or Cdr sent although the mask excludes them")
	}
}

func keysOf(f *rawFrame) []string {
	var k []string
	for _, h := range f.hdrs {
		k = append(k, h[0])
	}
	return k
}

// TestAttackFramesAreReal checks the other templates against the fixture.
func TestAttackFramesAreReal(t *testing.T) {
	tpl, err := loadTemplates()
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, tfs []tframe, raws []rawFrame) {
		var vals [numPH]string
		for i := range vals {
			vals[i] = "x"
		}
		for i := range tfs {
			got := readFrames(t, tfs[i].render(nil, &vals), false)
			if len(got) != 1 || !slices.Equal(got[0], keysOf(&raws[i])) {
				t.Fatalf("%s frame %d: %v, want %v", name, i, got, keysOf(&raws[i]))
			}
		}
	}
	check("sip register", tpl.sipRegister, tpl.rawSIPRegister)
	check("pjsip register", tpl.pjsipRegister, tpl.rawPJSIPRegister)
	check("auth failure", tpl.sipAuthFail, tpl.rawSIPAuthFail)
	check("failed acl", []tframe{tpl.failedACL}, []rawFrame{tpl.rawFailedACL})
	check("pjsip call", tpl.pjsipCall.setup, tpl.pjsipCall.rawSetup)
	check("pjsip teardown", tpl.pjsipCall.teardown, tpl.pjsipCall.rawTeardown)
	if tpl.pjsipCall.setup[0].event != "ChallengeSent" || tpl.pjsipCall.setup[1].event != "SuccessfulAuth" {
		t.Fatal("a PJSIP call starts with its INVITE's ChallengeSent and SuccessfulAuth")
	}
}

func TestRegexExt(t *testing.T) {
	for re, want := range map[string]string{
		`/^SIP\/200-[0-9a-f]{8}$/`:         "SIP/200",
		`/^PJSIP\/8001-[0-9a-f]{8}$/`:      "PJSIP/8001",
		`/^SIP\/office\.200-[0-9a-f]{8}$/`: "SIP/office.200",
	} {
		if got, ok := regexExt(re); !ok || got != want {
			t.Errorf("regexExt(%s) = %q, %v", re, got, ok)
		}
	}
}

// TestShortRun runs the guard against 2,000 events/s for 3 s with one
// attack of each kind: every attack is caught, no legitimate extension is
// acted on, and the report adds up.
func TestShortRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the guard for a few seconds")
	}
	rep, err := Run(context.Background(), Options{Rate: 2000, Duration: 3 * time.Second, Extensions: 200, Attacks: 4, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.Text(&out)
	t.Log("\n" + out.String())
	if rep.Missed != 0 || rep.Caught != 4 {
		t.Errorf("caught %d, missed %d", rep.Caught, rep.Missed)
	}
	if len(rep.LegitActedOn) != 0 {
		t.Errorf("legitimate extensions acted on: %v", rep.LegitActedOn)
	}
	// Consistency.
	if rep.Caught+rep.Missed != len(rep.Attacks) {
		t.Errorf("caught+missed %d != %d attacks", rep.Caught+rep.Missed, len(rep.Attacks))
	}
	if rep.GuardDropped != 0 {
		t.Errorf("dropped %d at 2,000 events/s", rep.GuardDropped)
	}
	if rep.GuardReceived < rep.EventsSent {
		t.Errorf("guard received %d < sent %d", rep.GuardReceived, rep.EventsSent)
	}
	if want := rep.RateOffered * rep.DurationSec; float64(rep.EventsSent)+float64(rep.EventsSkipped) < 0.9*want || float64(rep.EventsSent) > 1.1*want {
		t.Errorf("sent %d events in %.2f s at %.0f/s", rep.EventsSent, rep.DurationSec, rep.RateOffered)
	}
	kinds := map[string]bool{}
	var n int
	for _, a := range rep.Attacks {
		kinds[a.Kind] = true
		if a.CallsThru > a.CallsSent || a.CallsSent > a.Attempts {
			t.Errorf("%s: calls through %d, calls %d, attempts %d", a.Kind, a.CallsThru, a.CallsSent, a.Attempts)
		}
		if a.Caught && a.ReactionMs < 0 {
			t.Errorf("%s caught without a reaction time", a.Kind)
		}
		if a.Caught && a.ReactionMs >= 0 {
			n++
			if a.ReactionMs > rep.ReactionMax {
				t.Errorf("%s reaction %.3f > max %.3f", a.Kind, a.ReactionMs, rep.ReactionMax)
			}
		}
		if a.Kind == AttackBruteForce && a.CallsSent != 0 {
			t.Errorf("brute force placed %d calls", a.CallsSent)
		}
	}
	if len(kinds) != 4 {
		t.Errorf("attack kinds %v", kinds)
	}
	if n > 0 && !(rep.ReactionP50 <= rep.ReactionP99 && rep.ReactionP99 <= rep.ReactionMax) {
		t.Errorf("p50 %.3f p99 %.3f max %.3f", rep.ReactionP50, rep.ReactionP99, rep.ReactionMax)
	}
	if rep.Actions["hangup"] == 0 || rep.Actions["login"] < 2 {
		t.Errorf("actions %v", rep.Actions)
	}
	if rep.ProcessCPUSec <= 0 || rep.PeakRSSMiB <= 0 || rep.GuardCPUSec > rep.ProcessCPUSec {
		t.Errorf("cpu %.2f (guard %.2f) rss %.1f", rep.ProcessCPUSec, rep.GuardCPUSec, rep.PeakRSSMiB)
	}
}
