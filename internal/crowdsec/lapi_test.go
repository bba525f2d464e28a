package crowdsec

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/crowdsec/cstest"
)

// Against the real Local API: guard A pushes its bans, guard B (which
// never saw the attacker) pulls them and bans the same address and range;
// A recognises its own decision and leaves its ban alone; a dry-run ban is
// pushed simulated and B never applies it; a decision deleted upstream
// lifts B's ban and never A's.
func TestPushPullBetweenGuards(t *testing.T) {
	t.Parallel()
	l := cstest.Shared(t)
	machine, pw := addMachine(t, l)
	bansA := newBans(t, false)
	a := startService(t, Options{URL: l.URL, Push: true, Pull: true, MachineID: machine, Password: pw, APIKey: addBouncer(t, l),
		ScenariosContaining: []string{ScenarioPrefix}, Bans: bansA})
	b := startService(t, Options{URL: l.URL, Pull: true, APIKey: addBouncer(t, l), ScenariosContaining: []string{ScenarioPrefix}})

	attacker := randomAddr(t, "203.0.113.0/24")
	ban, err := bansA.Ban(t.Context(), bans.Request{Addr: attacker, TTL: time.Hour, Reason: "auth_failures critical: 5 failed authentications in 1m", Rule: "auth_failures"})
	if err != nil {
		t.Fatal(err)
	}
	a.Banned(ban)
	rng := netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/28", attacker.As4()[3]))
	rangeBan, err := bansA.Ban(t.Context(), bans.Request{Prefix: rng, TTL: 2 * time.Hour, Reason: "a range", Rule: "prefix_guess"})
	if err != nil {
		t.Fatal(err)
	}
	a.Banned(rangeBan)

	// The LAPI holds A's decisions as A sent them.
	waitFor(t, "A's decisions in the Local API", func() bool {
		_, ok1 := lapiDecision(t, l, attacker.String())
		_, ok2 := lapiDecision(t, l, rng.String())
		return ok1 && ok2
	})
	d, _ := lapiDecision(t, l, attacker.String())
	if d.Origin != OriginAstguard || d.Scenario != "astguard/auth_failures" || d.Scope != ScopeIP || d.Type != "ban" || d.Simulated {
		t.Errorf("the Local API's decision of %s: %+v", attacker, d)
	}
	if left, err := time.ParseDuration(d.Duration); err != nil || left <= 50*time.Minute || left > time.Hour {
		t.Errorf("its duration %q, want what is left of the 1h ban", d.Duration)
	}
	if d, _ := lapiDecision(t, l, rng.String()); d.Scope != ScopeRange || d.Scenario != "astguard/prefix_guess" {
		t.Errorf("the Local API's decision of %s: %+v", rng, d)
	}

	// B bans both, as bans of origin crowdsec.
	waitFor(t, "B's bans of A's decisions", func() bool {
		t1, ok1 := tracked(b.Service, single(attacker.String()))
		t2, ok2 := tracked(b.Service, rng)
		return ok1 && ok2 && t1.Result == Applied && t2.Result == Applied
	})
	for _, p := range []netip.Prefix{single(attacker.String()), rng} {
		bb, _ := banOf(b.bans, p)
		if bb.Origin != bans.OriginCrowdSec || bb.DryRun || !strings.Contains(bb.Reason, "astguard/") {
			t.Errorf("B's ban of %s: %+v", p, bb)
		}
		if tr, _ := tracked(b.Service, p); tr.Result != Applied {
			t.Errorf("B's decision for %s: %+v, want applied", p, tr)
		}
	}
	if bb, _ := banOf(b.bans, single(attacker.String())); bb.Until.Sub(ban.Until).Abs() > 5*time.Second {
		t.Errorf("B's ban ends at %v, A's at %v", bb.Until, ban.Until)
	}

	// A pulls its own decisions back and leaves its bans as they are.
	waitFor(t, "A's pull of its own decisions", func() bool {
		t1, ok1 := tracked(a.Service, single(attacker.String()))
		t2, ok2 := tracked(a.Service, rng)
		return ok1 && ok2 && t1.Result == Own && t2.Result == Own
	})
	if got, _ := banOf(bansA, single(attacker.String())); got.Origin != bans.OriginAstguard || !got.Until.Equal(ban.Until) || got.Reason != ban.Reason {
		t.Errorf("A's own ban after its pull: %+v, want %+v", got, ban)
	}

	// A dry-run ban goes up simulated; B never applies it.
	dryBans := newBans(t, true)
	dry := startService(t, Options{URL: l.URL, Push: true, MachineID: machine, Password: pw, Bans: dryBans})
	dryAddr := randomAddr(t, "192.0.2.0/24")
	dryBan, err := dryBans.Ban(t.Context(), bans.Request{Addr: dryAddr, TTL: time.Hour, Reason: "dry", Rule: "auth_failures"})
	if err != nil || !dryBan.DryRun {
		t.Fatalf("dry-run ban %+v, %v", dryBan, err)
	}
	dry.Banned(dryBan)
	waitFor(t, "the simulated decision in the Local API", func() bool {
		d, ok := lapiDecision(t, l, dryAddr.String())
		return ok && d.Simulated
	})
	pulls := b.Stats().Pulls
	waitFor(t, "two more pulls of B", func() bool { return b.Stats().Pulls >= pulls+2 })
	if _, ok := banOf(b.bans, single(dryAddr.String())); ok {
		t.Errorf("B banned %s from a simulated decision", dryAddr)
	}

	// Deleted upstream: B lifts its ban, A keeps its own.
	cscli(t, l, "decisions", "delete", "--ip", attacker.String())
	waitFor(t, "B's ban lifted", func() bool {
		_, ok := banOf(b.bans, single(attacker.String()))
		return !ok && b.Stats().Decisions[Lifted] >= 1
	})
	if _, ok := banOf(b.bans, rng); !ok {
		t.Error("B's range ban went with the address's decision")
	}
	pulls = a.Stats().Pulls
	waitFor(t, "two more pulls of A", func() bool { return a.Stats().Pulls >= pulls+2 })
	if got, ok := banOf(bansA, single(attacker.String())); !ok || got.Origin != bans.OriginAstguard {
		t.Errorf("A's own ban after the deletion upstream: %+v, %v", got, ok)
	}
}

// A burst of bans is pushed whole: the client library would compress a
// body over 5 KiB, which a Local API before 1.5 (Debian's 1.4.6) cannot
// read, so the guard sends them in smaller batches.
func TestPushBurst(t *testing.T) {
	t.Parallel()
	l := cstest.Shared(t)
	machine, pw := addMachine(t, l)
	m := newBans(t, false)
	s := startService(t, Options{URL: l.URL, Push: true, MachineID: machine, Password: pw, Bans: m})
	var want []string
	for i := range 40 {
		a := netip.AddrFrom4([4]byte{100, 64, byte(randomAddr(t, "203.0.113.0/24").As4()[3]), byte(i + 1)})
		b, err := m.Ban(t.Context(), bans.Request{Addr: a, TTL: time.Hour, Reason: strings.Repeat("x", 100), Rule: "failed_probes"})
		if err != nil {
			t.Fatal(err)
		}
		s.Banned(b)
		want = append(want, a.String())
	}
	waitFor(t, "40 alerts sent", func() bool { return s.Stats().AlertsSent >= 40 })
	for _, w := range want {
		if _, ok := lapiDecision(t, l, w); !ok {
			t.Errorf("no decision for %s in the Local API", w)
		}
	}
	// A request may fail while cscli holds the database (a 500 the guard
	// retries); none is refused.
	if st := s.Stats(); st.AlertsRejected != 0 || st.AlertsSent != 40 || st.AlertsQueued != 0 {
		t.Errorf("push stats %+v", st)
	}
}
