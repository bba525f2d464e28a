package crowdsec

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/crowdsec/cstest"
)

// In observe mode the pulled decisions are only logged as "would": no
// ban. When the guard enforces, a pull of every active decision applies
// them.
func TestPullObserveThenEnforce(t *testing.T) {
	t.Parallel()
	l := cstest.Shared(t)
	tag := cstest.Name("observe")
	ip := randomAddr(t, "203.0.113.0/24")
	rng := netip.MustParsePrefix(fmt.Sprintf("198.19.%d.0/24", ip.As4()[3]))
	cscli(t, l, "decisions", "add", "--ip", ip.String(), "--duration", "1h", "--reason", tag)
	cscli(t, l, "decisions", "add", "--range", rng.String(), "--duration", "2h", "--reason", tag)

	var enforcing atomic.Bool // observe mode from the start
	s := startService(t, Options{URL: l.URL, Pull: true, APIKey: addBouncer(t, l), ScenariosContaining: []string{tag}, Enforcing: enforcing.Load})
	waitFor(t, "both decisions logged as would", func() bool { return s.Stats().Decisions[Would] >= 2 })
	if got := s.bans.List(); len(got) != 0 {
		t.Fatalf("observe mode banned %+v", got)
	}
	would := s.logs.lines(t, "CrowdSec decision not applied: mode is observe, it would be banned")
	if len(would) != 2 || would[0]["result"] != "would" || would[0]["level"] != "info" {
		t.Errorf("the would lines: %v", would)
	}

	enforcing.Store(true)
	waitFor(t, "both decisions banned and counted", func() bool {
		_, ok1 := banOf(s.bans, single(ip.String()))
		_, ok2 := banOf(s.bans, rng)
		return ok1 && ok2 && s.Stats().Decisions[Applied] >= 2
	})
	b, _ := banOf(s.bans, rng)
	if b.Origin != bans.OriginCrowdSec || time.Until(b.Until) < 110*time.Minute {
		t.Errorf("the range's ban %+v, want origin crowdsec for about 2h", b)
	}
	if s.Stats().Decisions[Applied] != 2 {
		t.Errorf("stats %+v, want 2 applied", s.Stats())
	}
}

// Decisions the guard must never apply, written to the real Local API with
// cscli, are refused and counted by reason: the whole Internet in IPv4 and
// IPv6, a range wider than the configuration allows, the AMI server, the
// Local API itself, an allow-listed network and a range holding it. The
// one decision of the lot that is fine is applied.
func TestHostileDecisionsFromTheLocalAPI(t *testing.T) {
	t.Parallel()
	l := cstest.Shared(t)
	tag := cstest.Name("hostile")
	ami := netip.MustParsePrefix("192.0.2.10/32")
	allowed := netip.MustParsePrefix("198.51.100.0/24")
	for _, d := range [][]string{
		{"--range", "0.0.0.0/0"},
		{"--range", "::/0"},
		{"--range", "10.0.0.0/8"},                      // wider than /24
		{"--range", "2001:db8::/32"},                   // wider than /48
		{"--ip", "192.0.2.10"},                         // the AMI server
		{"--ip", "127.0.0.1"},                          // the Local API
		{"--ip", "198.51.100.7"},                       // in allow.networks
		{"--range", "198.51.100.0/26"},                 // inside it
		{"--range", "192.0.2.0/24"},                    // holds the AMI server
		{"--ip", "203.0.113.201"},                      // fine
		{"--type", "captcha", "--ip", "203.0.113.202"}, // not a ban
	} {
		cscli(t, l, append([]string{"decisions", "add", "--duration", "1h", "--reason", tag}, d...)...)
	}
	s := startService(t, Options{URL: l.URL, Pull: true, APIKey: addBouncer(t, l), ScenariosContaining: []string{tag},
		Protected: func() []netip.Prefix { return []netip.Prefix{ami, allowed} }})
	waitFor(t, "the first pull", func() bool { return s.Stats().Pulls >= 1 })
	st := s.Stats()
	want := map[Reason]uint64{RefusedTooWide: 4, RefusedProtected: 5}
	for r, n := range want {
		if st.Refused[r] != n {
			t.Errorf("refused %s: %d, want %d (stats %+v)", r, st.Refused[r], n, st)
		}
	}
	if st.Decisions[Refused] != 9 || st.Decisions[Applied] != 1 || st.Decisions[Ignored] != 1 {
		t.Errorf("decisions %+v, want 9 refused, 1 applied, 1 ignored", st.Decisions)
	}
	got := s.bans.List()
	if len(got) != 1 || got[0].Prefix != single("203.0.113.201") {
		t.Errorf("bans %+v, want only 203.0.113.201", got)
	}
	if lines := s.logs.lines(t, "CrowdSec decision refused"); len(lines) != 9 || lines[0]["level"] != "warn" {
		t.Errorf("%d refused lines, want 9 at warn", len(lines))
	}
}
