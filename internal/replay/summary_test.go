package replay

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

// defaultPolicy is config.Default()'s: the call rules hang up, rotate and
// block when critical, the address rules block, new_source only logs;
// warnings only log.
func defaultPolicy(enforce bool) Policy {
	return Policy{
		Acts: func(r detector.Rule, s detector.Severity) bool {
			return s == detector.Critical && r != detector.RuleNewSource
		},
		Enforce: enforce,
	}
}

func summarize(t *testing.T, file string, pol Policy) FileSummary {
	t.Helper()
	fr := &FileResult{Path: file}
	fr.Result, fr.Err = File(transcripts+file, detector.Default(), func(a *detector.Alert) { fr.Alerts = append(fr.Alerts, *a) })
	if fr.Err != nil {
		t.Fatal(fr.Err)
	}
	return Summarize(fr, pol)
}

func findKey(s FileSummary, name string) *Key {
	for i := range s.Keys {
		if s.Keys[i].Name() == name {
			return &s.Keys[i]
		}
	}
	return nil
}

func TestSummarizeAttackMixed(t *testing.T) {
	s := summarize(t, "attack-mixed.ami", defaultPolicy(false))
	addr := netip.MustParseAddr
	for _, want := range []struct {
		name  string
		tech  ami.Tech
		addrs []netip.Addr
		rule  detector.Rule // a rule that went critical
	}{
		{"SIP/200", ami.TechSIP, []netip.Addr{addr("127.0.0.2")}, detector.RuleInternational},
		{"PJSIP/300", ami.TechPJSIP, []netip.Addr{addr("127.0.0.5")}, detector.RulePrefixGuess},
		{"127.0.0.4", 0, nil, detector.RuleAuthFailures},
	} {
		k := findKey(s, want.name)
		if k == nil {
			t.Errorf("%s missing from %+v", want.name, s.Keys)
			continue
		}
		if k.Severity != detector.Critical || k.Verdict != VerdictWouldAct || k.Tech != want.tech ||
			!slices.Equal(k.Addresses, want.addrs) || k.Rules[0].Severity != detector.Critical ||
			!slices.ContainsFunc(k.Rules, func(r RuleCount) bool { return r.Rule == want.rule && r.Severity == detector.Critical }) {
			t.Errorf("%s: %+v", want.name, k)
		}
	}
	if k := findKey(s, "SIP/200"); k != nil {
		i := slices.IndexFunc(k.Rules, func(r RuleCount) bool { return r.Rule == detector.RuleInternational })
		if i < 0 || k.Rules[i].Count != 20 {
			t.Errorf("SIP/200 rules %+v, want international counted 20 calls", k.Rules)
		}
	}
	if k := findKey(s, "127.0.0.4"); k != nil && !slices.Equal(k.Accounts, []string{"200", "201", "1000"}) {
		t.Errorf("127.0.0.4 tried %v", k.Accounts)
	}
	// The legitimate user, SIP/201 from 127.0.0.3, is nowhere critical.
	for _, k := range s.Keys {
		if k.Severity == detector.Critical && (k.Extension == "201" || k.IP == addr("127.0.0.3") || slices.Contains(k.Addresses, addr("127.0.0.3"))) {
			t.Errorf("critical for the legitimate user: %+v", k)
		}
	}
	// The most serious first.
	for i := 1; i < len(s.Keys); i++ {
		if s.Keys[i].Verdict > s.Keys[i-1].Verdict {
			t.Errorf("keys out of order: %v before %v", s.Keys[i-1].Name(), s.Keys[i].Name())
		}
	}
	if s.Result.Messages != 4093 || s.Result.Skipped != 3729 || s.Result.Alerts != 15 {
		t.Errorf("result %+v", s.Result)
	}
}

func TestSummarizeVerdicts(t *testing.T) {
	for _, tc := range []struct {
		name string
		pol  Policy
		want Verdict
	}{
		{"observe", defaultPolicy(false), VerdictWouldAct},
		{"enforce", defaultPolicy(true), VerdictStopped},
		{"no actions", Policy{Acts: func(detector.Rule, detector.Severity) bool { return false }, Enforce: true}, VerdictNoAction},
		{"hang up on warnings", Policy{Acts: func(detector.Rule, detector.Severity) bool { return true }, Enforce: true}, VerdictStopped},
	} {
		s := summarize(t, "attack-mixed.ami", tc.pol)
		if k := findKey(s, "SIP/200"); k == nil || k.Verdict != tc.want {
			t.Errorf("%s: SIP/200 %+v, want %v", tc.name, k, tc.want)
		}
		// 127.0.0.2 only probed unroutable numbers a few times: a warning.
		want := VerdictWarning
		if tc.name == "hang up on warnings" {
			want = VerdictStopped
		}
		if k := findKey(s, "127.0.0.2"); k == nil || k.Severity != detector.Warning || k.Verdict != want {
			t.Errorf("%s: 127.0.0.2 %+v, want %v", tc.name, k, want)
		}
	}
}

func TestWriteSummary(t *testing.T) {
	files := []FileSummary{
		summarize(t, "attack-mixed.ami", defaultPolicy(false)),
		summarize(t, "pjsip-bruteforce.ami", defaultPolicy(false)),
		{Path: "gone.ami", Err: errGone},
	}
	var buf bytes.Buffer
	if err := WriteSummary(&buf, files); err != nil {
		t.Fatal(err)
	}
	want := `attack-mixed.ami: 4093 messages (3729 of unused events skipped, 0 malformed, 0 oversized), 15 alerts
  SIP/200    would act  critical  from 127.0.0.2        call_rate 5 calls, concurrent 8 live calls, prefix_guess 3 prefixes, international 20 calls
  PJSIP/300  would act  critical  from 127.0.0.5        prefix_guess 3 prefixes (warning: call_rate 3 calls, concurrent 4 live calls)
  127.0.0.4  would act  critical  tried 200, 201, 1000  auth_failures 5 failures
  127.0.0.2  warning    warning                         failed_probes 3 attempts
pjsip-bruteforce.ami: 17 messages (0 of unused events skipped, 0 malformed, 0 oversized), 2 alerts
  127.0.0.6  would act  critical  tried 300, 301, 9999, admin  auth_failures 5 failures
replay failed after 0 messages: gone.ami: no such transcript
total: 3 files (1 failed), 4110 messages (3729 of unused events skipped, 0 malformed, 0 oversized), 17 alerts
`
	if got := buf.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

var errGone = errors.New("gone.ami: no such transcript")

func TestWhoListsAFew(t *testing.T) {
	k := Key{IP: netip.MustParseAddr("192.0.2.1"), Accounts: strings.Fields("100 101 102 103 104 105")}
	if got, want := k.who(), "tried 100, 101, 102, 103 and 2 more"; got != want {
		t.Errorf("who() = %q, want %q", got, want)
	}
}
