package policy

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
)

func setOf(as ...Action) Set {
	var s Set
	for _, a := range as {
		s = s.With(a)
	}
	return s
}

func mustTable(t *testing.T, p *config.Policy) *Table {
	t.Helper()
	tab, err := NewTable(p)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func TestNewTable(t *testing.T) {
	p := config.Default().Policy
	p.NewSource.Warning = []string{} // a configured empty list: nothing, not even the alert
	tab := mustTable(t, &p)
	for _, tt := range []struct {
		rule detector.Rule
		sev  detector.Severity
		want Set
	}{
		{detector.RuleCallRate, detector.Critical, setOf(Alert, Hangup, RotateSecret, BlockIP)},
		{detector.RuleCallRate, detector.Warning, setOf(Alert)},
		{detector.RuleInternational, detector.Critical, setOf(Alert, Hangup, RotateSecret, BlockIP)},
		{detector.RuleAuthFailures, detector.Critical, setOf(Alert, BlockIP)},
		{detector.RuleFailedProbes, detector.Warning, setOf(Alert)},
		{detector.RuleNewSource, detector.Warning, 0},
		{detector.RuleNewSource, detector.Critical, setOf(Alert)},
		{0, detector.Critical, 0},
		{detector.Rule(200), detector.Critical, 0},
		{detector.RuleCallRate, 0, 0},
	} {
		if got := tab.Actions(tt.rule, tt.sev); got != tt.want {
			t.Errorf("Actions(%s, %s) = %08b, want %08b", tt.rule, tt.sev, got, tt.want)
		}
	}

	p.Concurrent.Critical = []string{"alert", "nuke"}
	if _, err := NewTable(&p); err == nil || err.Error() != `policy.concurrent.critical: "nuke" is not an action` {
		t.Fatalf("NewTable with an unknown action: %v", err)
	}
}

func TestNames(t *testing.T) {
	for _, a := range []Action{Alert, Hangup, BlockIP, RotateSecret} {
		b, err := a.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Action
		if err := back.UnmarshalText(b); err != nil || back != a {
			t.Errorf("%s: round trip gave %v, %v", a, back, err)
		}
	}
	if got := []string{Alert.String(), Hangup.String(), BlockIP.String(), RotateSecret.String()}; !slices.Equal(got,
		[]string{config.ActionAlert, config.ActionHangup, config.ActionBlockIP, config.ActionRotateSecret}) {
		t.Errorf("action names %v are not the configuration's", got)
	}
	for _, r := range []Result{Running, Done, Failed, Skipped, Would} {
		b, err := r.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Result
		if err := back.UnmarshalText(b); err != nil || back != r {
			t.Errorf("%s: round trip gave %v, %v", r, back, err)
		}
	}
	var r Result
	if err := r.UnmarshalText([]byte("")); err == nil {
		t.Error("an empty result was read")
	}
	if _, err := None.MarshalText(); err == nil {
		t.Error("None was written")
	}
	if ModeOf("enforce") != Enforce || ModeOf("observe") != Observe || ModeOf("") != Observe {
		t.Error("ModeOf")
	}
}

var (
	t0       = time.Date(2026, 11, 30, 1, 51, 0, 0, time.UTC)
	thief    = netip.MustParseAddr("203.0.113.9")
	guesser  = netip.MustParseAddr("198.51.100.4")
	sip200   = ExtensionKey(ami.TechSIP, "200")
	guessKey = AddressKey(guesser)
)

func extAlert(rule detector.Rule, sev detector.Severity, sources ...netip.Addr) *detector.Alert {
	return &detector.Alert{Time: t0, Rule: rule, Severity: sev, Tech: ami.TechSIP, Extension: "200",
		Sources: sources, Count: 5, Window: time.Second, Reason: "calls started"}
}

func addrAlert(rule detector.Rule, sev detector.Severity, ip netip.Addr) *detector.Alert {
	return &detector.Alert{Time: t0, Rule: rule, Severity: sev, IP: ip, Count: 5, Window: time.Minute, Reason: "failed authentications"}
}

// incWith is an open incident whose actions got as far as ps say.
func incWith(id string, rule detector.Rule, ps map[Action]Progress) Incident {
	inc := Incident{ID: id, Rule: rule}
	for a, p := range ps {
		inc.SetProgress(a, p)
	}
	return inc
}

// brief is what a test compares of a decision.
type brief struct {
	Action    Action
	Result    Result
	Key       Key
	Addr      netip.Addr
	Incident  string
	OpenedBy  detector.Rule
	Attempt   uint8
	BlockedBy string
}

func briefs(ds []Decision) []brief {
	out := make([]brief, len(ds))
	for i, d := range ds {
		out[i] = brief{d.Action, d.Result, d.Key, d.Addr, d.Incident, d.OpenedBy, d.Attempt, d.BlockedBy.ID}
	}
	return out
}

func TestDecide(t *testing.T) {
	all := config.Default().Policy
	// Every action for the address rules too: an address still gets only
	// the alert and block_ip.
	all.AuthFailures.Critical = []string{"alert", "hangup", "rotate_secret", "block_ip"}
	tab := mustTable(t, &all)
	const (
		cr  = detector.RuleCallRate
		pg  = detector.RulePrefixGuess
		af  = detector.RuleAuthFailures
		id  = "inc-00000001"
		own = "inc-0000000e"
	)
	owner := Ref{ID: own, Key: sip200}
	for _, tt := range []struct {
		name  string
		alert *detector.Alert
		mode  Mode
		inc   Incident
		want  []brief
	}{
		{"extension critical opens", extAlert(cr, detector.Critical, thief, guesser), Enforce, Incident{}, []brief{
			{Action: Alert, Result: Running, Key: sip200, OpenedBy: cr},
			{Action: Hangup, Result: Running, Key: sip200, OpenedBy: cr, Attempt: 1},
			{Action: BlockIP, Result: Running, Key: sip200, Addr: thief, OpenedBy: cr, Attempt: 1},
			{Action: RotateSecret, Result: Running, Key: sip200, OpenedBy: cr, Attempt: 1},
		}},
		{"no source: block_ip without an address", extAlert(cr, detector.Critical), Enforce, Incident{}, []brief{
			{Action: Alert, Result: Running, Key: sip200, OpenedBy: cr},
			{Action: Hangup, Result: Running, Key: sip200, OpenedBy: cr, Attempt: 1},
			{Action: BlockIP, Result: Running, Key: sip200, OpenedBy: cr, Attempt: 1},
			{Action: RotateSecret, Result: Running, Key: sip200, OpenedBy: cr, Attempt: 1},
		}},
		{"warning only alerts", extAlert(cr, detector.Warning, thief), Enforce, Incident{}, []brief{
			{Action: Alert, Result: Running, Key: sip200, OpenedBy: cr},
		}},
		{"warning in an open incident names it", extAlert(pg, detector.Warning, thief), Enforce, incWith(id, cr, nil), []brief{
			{Action: Alert, Result: Running, Key: sip200, Incident: id, OpenedBy: cr},
		}},
		{"address: alert and block only", addrAlert(af, detector.Critical, guesser), Enforce, Incident{}, []brief{
			{Action: Alert, Result: Running, Key: guessKey, OpenedBy: af},
			{Action: BlockIP, Result: Running, Key: guessKey, Addr: guesser, OpenedBy: af, Attempt: 1},
		}},
		{"done, running and skipped are not decided again", extAlert(pg, detector.Critical, thief), Enforce,
			incWith(id, cr, map[Action]Progress{Hangup: {Result: Done, Attempts: 1}, BlockIP: {Result: Running, Attempts: 1}, RotateSecret: {Result: Skipped, Attempts: 1}}),
			[]brief{{Action: Alert, Result: Running, Key: sip200, Incident: id, OpenedBy: cr}}},
		{"a failed action is tried again", extAlert(pg, detector.Critical, thief), Enforce,
			incWith(id, cr, map[Action]Progress{Hangup: {Result: Done, Attempts: 1}, BlockIP: {Result: Done, Attempts: 1}, RotateSecret: {Result: Failed, Attempts: 2}}),
			[]brief{
				{Action: Alert, Result: Running, Key: sip200, Incident: id, OpenedBy: cr},
				{Action: RotateSecret, Result: Running, Key: sip200, Incident: id, OpenedBy: cr, Attempt: 3},
			}},
		{"at most MaxAttempts times", extAlert(pg, detector.Critical, thief), Enforce,
			incWith(id, cr, map[Action]Progress{Hangup: {Result: Done, Attempts: 1}, BlockIP: {Result: Done, Attempts: 1}, RotateSecret: {Result: Failed, Attempts: MaxAttempts}}),
			[]brief{{Action: Alert, Result: Running, Key: sip200, Incident: id, OpenedBy: cr}}},
		{"observe: would", extAlert(cr, detector.Critical, thief), Observe, Incident{}, []brief{
			{Action: Alert, Result: Running, Key: sip200, OpenedBy: cr},
			{Action: Hangup, Result: Would, Key: sip200, OpenedBy: cr},
			{Action: BlockIP, Result: Would, Key: sip200, Addr: thief, OpenedBy: cr},
			{Action: RotateSecret, Result: Would, Key: sip200, OpenedBy: cr},
		}},
		{"observe: would once per incident", extAlert(pg, detector.Critical, thief), Observe,
			incWith(id, cr, map[Action]Progress{Hangup: {Result: Would}, BlockIP: {Result: Would}, RotateSecret: {Result: Would}}),
			[]brief{{Action: Alert, Result: Running, Key: sip200, Incident: id, OpenedBy: cr}}},
		{"observe does not retry what failed", extAlert(pg, detector.Critical, thief), Observe,
			incWith(id, cr, map[Action]Progress{Hangup: {Result: Done, Attempts: 1}, BlockIP: {Result: Done, Attempts: 1}, RotateSecret: {Result: Failed, Attempts: 1}}),
			[]brief{{Action: Alert, Result: Running, Key: sip200, Incident: id, OpenedBy: cr}}},
		{"enforce after observe: for real", extAlert(pg, detector.Critical, thief), Enforce,
			incWith(id, cr, map[Action]Progress{Hangup: {Result: Would}, BlockIP: {Result: Would}, RotateSecret: {Result: Would}}),
			[]brief{
				{Action: Alert, Result: Running, Key: sip200, Incident: id, OpenedBy: cr},
				{Action: Hangup, Result: Running, Key: sip200, Incident: id, OpenedBy: cr, Attempt: 1},
				{Action: BlockIP, Result: Running, Key: sip200, Addr: thief, Incident: id, OpenedBy: cr, Attempt: 1},
				{Action: RotateSecret, Result: Running, Key: sip200, Incident: id, OpenedBy: cr, Attempt: 1},
			}},
		{"a dry run's would is final", extAlert(pg, detector.Critical, thief), Enforce,
			incWith(id, cr, map[Action]Progress{Hangup: {Result: Done, Attempts: 1}, BlockIP: {Result: Would, Attempts: 1}, RotateSecret: {Result: Done, Attempts: 1}}),
			[]brief{{Action: Alert, Result: Running, Key: sip200, Incident: id, OpenedBy: cr}}},
		{"address an extension's incident blocked", addrAlert(af, detector.Critical, guesser), Enforce, Incident{Owner: owner}, []brief{
			{Action: Alert, Result: Running, Key: guessKey, OpenedBy: af},
			{Action: BlockIP, Result: Skipped, Key: guessKey, Addr: guesser, OpenedBy: af, BlockedBy: own},
		}},
		{"said once", addrAlert(af, detector.Critical, guesser), Enforce,
			Incident{ID: id, Rule: af, Owner: owner, progress: [numActions]Progress{BlockIP: {Result: Skipped, BlockedBy: own}}},
			[]brief{{Action: Alert, Result: Running, Key: guessKey, Incident: id, OpenedBy: af}}},
		{"blocked once the owner is over", addrAlert(af, detector.Critical, guesser), Enforce,
			incWith(id, af, map[Action]Progress{BlockIP: {Result: Skipped, BlockedBy: own}}),
			[]brief{
				{Action: Alert, Result: Running, Key: guessKey, Incident: id, OpenedBy: af},
				{Action: BlockIP, Result: Running, Key: guessKey, Addr: guesser, Incident: id, OpenedBy: af, Attempt: 1},
			}},
		{"an address blocked itself first", addrAlert(af, detector.Critical, guesser), Enforce,
			Incident{ID: id, Rule: af, Owner: owner, progress: [numActions]Progress{BlockIP: {Result: Done, Attempts: 1}}},
			[]brief{{Action: Alert, Result: Running, Key: guessKey, Incident: id, OpenedBy: af}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			inc := tt.inc
			before := inc
			got := tab.Decide(tt.alert, tt.mode, &inc, nil)
			if !slices.Equal(briefs(got), tt.want) {
				t.Fatalf("Decide:\n got %+v\nwant %+v", briefs(got), tt.want)
			}
			if inc != before {
				t.Fatal("Decide changed the incident")
			}
			for _, d := range got {
				switch {
				case d.Action == Alert && d.Reason != "":
					t.Errorf("alert decision has a reason %q", d.Reason)
				case d.Action != Alert && d.Reason == "":
					t.Errorf("%s decision has no reason", d.Action)
				case (d.Result == Would || d.Result == Skipped) && d.Detail == "":
					t.Errorf("%s %s has no detail", d.Action, d.Result)
				}
			}
		})
	}
}

func TestDecideReasonAndDetail(t *testing.T) {
	tab := mustTable(t, &config.Default().Policy)
	inc := Incident{Owner: Ref{ID: "inc-0000000e", Key: sip200}}
	got := tab.Decide(addrAlert(detector.RuleAuthFailures, detector.Critical, guesser), Enforce, &inc, nil)
	if len(got) != 2 {
		t.Fatalf("%d decisions", len(got))
	}
	if want := "auth_failures critical: address 198.51.100.4: 5 failed authentications in 1m0s"; got[1].Reason != want {
		t.Errorf("reason %q, want %q", got[1].Reason, want)
	}
	if want := "198.51.100.4 is blocked by incident inc-0000000e of SIP/200, which owns it"; got[1].Detail != want {
		t.Errorf("detail %q, want %q", got[1].Detail, want)
	}
}

func TestApply(t *testing.T) {
	var inc Incident
	for _, d := range []Decision{
		{Action: Alert, Result: Running},
		{Action: Hangup, Result: Running},
		{Action: BlockIP, Result: Skipped, BlockedBy: Ref{ID: "inc-0000000e"}},
		{Action: RotateSecret, Result: Would},
	} {
		inc.Apply(&d)
	}
	want := map[Action]Progress{
		Alert: {}, Hangup: {Result: Running, Attempts: 1}, BlockIP: {Result: Skipped, BlockedBy: "inc-0000000e"}, RotateSecret: {Result: Would},
	}
	for a, p := range want {
		if got := inc.Progress(a); got != p {
			t.Errorf("%s: %+v, want %+v", a, got, p)
		}
	}
	inc.SetProgress(Hangup, Progress{Result: Failed, Attempts: 1})
	inc.Apply(&Decision{Action: Hangup, Result: Running})
	if got := inc.Progress(Hangup); got != (Progress{Result: Running, Attempts: 2}) {
		t.Errorf("second attempt: %+v", got)
	}
}

// The per-alert path of the policy alone: an alert of an open incident
// that has done everything (the common case during an attack), and one
// that opens an incident.
func BenchmarkDecide(b *testing.B) {
	tab, err := NewTable(&config.Default().Policy)
	if err != nil {
		b.Fatal(err)
	}
	a := extAlert(detector.RulePrefixGuess, detector.Critical, thief)
	done := incWith("inc-00000001", detector.RuleCallRate, map[Action]Progress{
		Hangup: {Result: Done, Attempts: 1}, BlockIP: {Result: Done, Attempts: 1}, RotateSecret: {Result: Done, Attempts: 1}})
	dst := make([]Decision, 0, 8)
	b.Run("open-incident", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			dst = tab.Decide(a, Enforce, &done, dst[:0])
		}
	})
	b.Run("opens", func(b *testing.B) {
		b.ReportAllocs()
		var none Incident
		for b.Loop() {
			dst = tab.Decide(a, Enforce, &none, dst[:0])
		}
	})
}
