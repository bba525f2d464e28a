package incident

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// What the book saves, it loads as it was: the listing of the loaded book
// is the listing of the book that saved.
func TestSaveLoadRoundTrip(t *testing.T) {
	store := &memStore{}
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, Store: store}))
	r.alert(critical(detector.RuleCallRate, t0, thief, office))
	r.alert(addrCritical(thief, t0.Add(time.Second)))
	r.alert(addrCritical(guess, t0.Add(2*time.Second)))
	r.result = policy.Failed
	r.alert(critical(detector.RulePrefixGuess, t0.Add(3*time.Second), thief))
	if _, err := r.book.Release(policy.AddressKey(guess), t0.Add(4*time.Second)); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(5 * time.Second)
	want := r.book.List(now)

	raw, _ := store.last()
	loaded := mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, Store: store})
	if err := loaded.Load(raw, now); err != nil {
		t.Fatal(err)
	}
	if got := loaded.List(now); !reflect.DeepEqual(got, want) {
		t.Fatalf("loaded:\n%+v\nwant\n%+v", got, want)
	}
	if _, ok := loaded.Stopped(sip200.Tech, sip200.Name, now); !ok {
		t.Error("SIP/200 not stopped after Load")
	}
	if ref, ok := loaded.Owner(thief, now); !ok || ref.Key != sip200 {
		t.Errorf("Owner(%s) after Load = %+v, %v; want SIP/200's incident", thief, ref, ok)
	}
	if err := loaded.Load(raw, now); err == nil {
		t.Error("a second Load was taken")
	}
}

// The JSON form of a listing, as `guard incidents --json` will print it.
func TestRecordJSON(t *testing.T) {
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, NewID: func() string { return "inc-0000abcd" }}))
	r.alert(addrCritical(guess, t0))
	b, err := json.Marshal(r.book.List(t0.Add(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"open":[{"id":"inc-0000abcd","ip":"198.51.100.4","rule":"auth_failures","severity":"critical",` +
		`"opened":"2026-11-30T01:51:00Z","last_alert":"2026-11-30T01:51:00Z","closes":"2026-11-30T02:06:00Z","stopped":false,` +
		`"alert_count":1,"alerts":[{"time":"2026-11-30T01:51:00Z","seq":0,"rule":"auth_failures","severity":"critical",` +
		`"ip":"198.51.100.4","sources":[],"count":5,"window":"1m0s","reason":"address 198.51.100.4: 5 failed authentications in 1m0s"}],` +
		`"actions":[{"action":"block_ip","result":"done","attempts":1,"outcomes":[{"result":"done","target":"198.51.100.4",` +
		`"time":"2026-11-30T01:51:00Z","detail":"carried out by the test"}]}]}],"recent":[]}`
	if string(b) != want {
		t.Fatalf("JSON:\n%s\nwant\n%s", b, want)
	}
}

// Incidents the guard saved before a restart: those whose quiet time
// passed meanwhile are closed at their end; an action that was running is
// skipped, never run again, and says why; the changes are saved at once.
func TestLoadAfterDowntime(t *testing.T) {
	store := &memStore{}
	r := newResponder(t, mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, Store: store}))
	r.alert(addrCritical(guess, t0))
	r.result = policy.None // the guard stops while SIP/200's responses run
	r.alert(critical(detector.RuleCallRate, t0.Add(10*time.Minute), thief))
	raw, saves := store.last()

	loaded := mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, Store: store})
	now := t0.Add(20 * time.Minute) // past the address's quiet time, not SIP/200's
	if err := loaded.Load(raw, now); err != nil {
		t.Fatal(err)
	}
	if _, n := store.last(); n != saves+1 {
		t.Errorf("Load saved %d times, want once", n-saves)
	}
	l := loaded.List(now)
	if len(l.Recent) != 1 || l.Recent[0].Key != policy.AddressKey(guess) || !l.Recent[0].Closed.Equal(t0.Add(quiet)) {
		t.Fatalf("recent %+v, want the address's incident closed at its quiet time", l.Recent)
	}
	rec := find(t, l, sip200)
	for _, a := range rec.Actions {
		if a.Result != policy.Skipped || len(a.Outcomes) != 1 || a.Outcomes[0].Detail != interrupted {
			t.Errorf("%s after the restart: %+v", a.Action, a)
		}
	}
	if _, ok := loaded.Stopped(sip200.Tech, sip200.Name, now); !ok {
		t.Error("SIP/200 not stopped after the restart")
	}
	if decs := loaded.Decide(r.tab, critical(detector.RulePrefixGuess, now, thief), now, nil); len(responses(decs)) != 0 {
		t.Fatalf("after the restart: %v", responses(decs))
	}
}

// Content that cannot be used is refused whole: the book stays empty.
func TestLoadRefusesBadContent(t *testing.T) {
	good := `{"id":"inc-1","tech":"SIP","extension":"200","rule":"call_rate","severity":"critical","opened":"2026-11-30T01:51:00Z","last_alert":"2026-11-30T01:51:00Z","stopped":true,"alert_count":1,"alerts":[],"actions":[]}`
	for _, tt := range []struct{ name, raw, err string }{
		{"not a list", `{}`, "cannot unmarshal object"},
		{"unknown field", `[` + strings.Replace(good, `"stopped"`, `"stoped"`, 1) + `]`, `unknown field "stoped"`},
		{"unknown rule", `[` + strings.Replace(good, `call_rate`, `callrate`, 1) + `]`, `"callrate" is not a rule`},
		{"unknown tech", `[` + strings.Replace(good, `"SIP"`, `"XMPP"`, 1) + `]`, `is not an extension`},
		{"bad name", `[` + strings.Replace(good, `"200"`, `"2 00"`, 1) + `]`, `is not an extension`},
		{"no key", `[` + strings.Replace(good, `"tech":"SIP","extension":"200",`, ``, 1) + `]`, `neither an extension nor an address`},
		{"both keys", `[` + strings.Replace(good, `"tech":"SIP",`, `"ip":"192.0.2.1","tech":"SIP",`, 1) + `]`, `neither an extension nor an address`},
		{"bad action", `[` + strings.Replace(good, `"actions":[]`, `"actions":[{"action":"nuke","result":"done","outcomes":[]}]`, 1) + `]`, `"nuke" is not an action`},
		{"alert as action", `[` + strings.Replace(good, `"actions":[]`, `"actions":[{"action":"alert","result":"done","outcomes":[]}]`, 1) + `]`, `not a response`},
		{"action twice", `[` + strings.Replace(good, `"actions":[]`, `"actions":[{"action":"hangup","result":"done","outcomes":[]},{"action":"hangup","result":"done","outcomes":[]}]`, 1) + `]`, `listed twice`},
		{"bad result", `[` + strings.Replace(good, `"actions":[]`, `"actions":[{"action":"hangup","result":"","outcomes":[]}]`, 1) + `]`, `"" is not a result`},
		{"id twice", `[` + good + `,` + strings.Replace(good, `"200"`, `"201"`, 1) + `]`, `incident inc-1 twice`},
		{"two open of a key", `[` + good + `,` + strings.Replace(good, `inc-1`, `inc-2`, 1) + `]`, `both open`},
		{"no id", `[` + strings.Replace(good, `"inc-1"`, `""`, 1) + `]`, `without id`},
		{"times", `[` + strings.Replace(good, `"last_alert":"2026-11-30T01:51:00Z"`, `"last_alert":"2026-11-30T01:50:00Z"`, 1) + `]`, `not in order`},
		{"close reason", `[` + strings.Replace(good, `"stopped"`, `"closed":"2026-11-30T02:00:00Z","close_reason":"bored","stopped"`, 1) + `]`, `not a close reason`},
		{"trailing", `[] []`, `data after the list`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce, Store: refusingStore{t}})
			err := b.Load(json.RawMessage(tt.raw), t0)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Load: %v, want an error containing %q", err, tt.err)
			}
			if l := b.List(t0); len(l.Open)+len(l.Recent) != 0 {
				t.Fatalf("the book holds %+v after a refused Load", l)
			}
		})
	}
	b := mustBook(t, Options{Quiet: quiet, Mode: policy.Enforce})
	if err := b.Load(json.RawMessage(`[`+good+`]`), t0); err != nil {
		t.Fatalf("Load of the good record: %v", err)
	}
	if _, ok := b.Stopped(sip200.Tech, sip200.Name, t0); !ok {
		t.Fatal("the good record's stop was not loaded")
	}
}
