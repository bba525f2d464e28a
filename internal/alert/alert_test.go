package alert

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

var at = time.Date(2026, 11, 25, 12, 46, 59, 534813000, time.UTC)

func TestRecordJSON(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    detector.Alert
		want string
	}{
		{"extension", detector.Alert{
			Time: at, Seq: 434, Rule: detector.RuleCallRate, Severity: detector.Critical,
			Tech: ami.TechSIP, Extension: "200", Sources: []netip.Addr{netip.MustParseAddr("127.0.0.2")},
			Count: 5, Window: time.Second, Numbers: []string{"0011442079460000"}, Reason: "calls started",
		}, `{"time":"2026-11-25T12:46:59.534813Z","file":"x.ami","seq":434,"rule":"call_rate","severity":"critical",` +
			`"tech":"SIP","extension":"200","sources":["127.0.0.2"],"count":5,"window":"1s",` +
			`"numbers":["0011442079460000"],"reason":"extension SIP/200: 5 calls started in 1s"}`},
		{"address", detector.Alert{
			Time: at, Seq: 93, Rule: detector.RuleAuthFailures, Severity: detector.Warning,
			IP: netip.MustParseAddr("2001:db8::4"), Accounts: []string{"200", "admin"},
			Count: 3, Window: time.Minute, Reason: "failed authentications",
		}, `{"time":"2026-11-25T12:46:59.534813Z","file":"x.ami","seq":93,"rule":"auth_failures","severity":"warning",` +
			`"ip":"2001:db8::4","sources":[],"accounts":["200","admin"],"count":3,"window":"1m0s",` +
			`"reason":"address 2001:db8::4: 3 failed authentications in 1m0s"}`},
		{"IPv6 network", detector.Alert{
			Time: at, Seq: 93, Rule: detector.RuleAuthFailures, Severity: detector.Critical,
			IP: netip.MustParseAddr("2001:db8:1:2::5"), Net: netip.MustParsePrefix("2001:db8:1:2::/64"), Accounts: []string{"200"},
			Count: 5, Window: time.Minute, Reason: "failed authentications",
		}, `{"time":"2026-11-25T12:46:59.534813Z","file":"x.ami","seq":93,"rule":"auth_failures","severity":"critical",` +
			`"ip":"2001:db8:1:2::5","net":"2001:db8:1:2::/64","sources":[],"accounts":["200"],"count":5,"window":"1m0s",` +
			`"reason":"network 2001:db8:1:2::/64 (last address 2001:db8:1:2::5): 5 failed authentications in 1m0s"}`},
		{"contact only", detector.Alert{
			Time: at, Seq: 434, Rule: detector.RuleCallRate, Severity: detector.Critical,
			Tech: ami.TechSIP, Extension: "200", Contacts: []netip.Addr{netip.MustParseAddr("198.51.100.20"), netip.MustParseAddr("2001:db8::20")},
			Count: 5, Window: time.Second, Reason: "calls started",
		}, `{"time":"2026-11-25T12:46:59.534813Z","file":"x.ami","seq":434,"rule":"call_rate","severity":"critical",` +
			`"tech":"SIP","extension":"200","sources":[],"contacts":["198.51.100.20","2001:db8::20"],"count":5,"window":"1s",` +
			`"reason":"extension SIP/200: 5 calls started in 1s"}`},
		{"new source", detector.Alert{
			Time: at, Seq: 6, Rule: detector.RuleNewSource, Severity: detector.Warning,
			Tech: ami.TechPJSIP, Extension: "300", Sources: []netip.Addr{netip.MustParseAddr("203.0.113.9")},
			Count: 1, Reason: "authenticated from an address it has not used before",
		}, `{"time":"2026-11-25T12:46:59.534813Z","file":"x.ami","seq":6,"rule":"new_source","severity":"warning",` +
			`"tech":"PJSIP","extension":"300","sources":["203.0.113.9"],"count":1,"window":"0s",` +
			`"reason":"extension PJSIP/300 authenticated from an address it has not used before"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := json.Marshal(FromAlert(&tc.a, "x.ami"))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestLogLevels(t *testing.T) {
	var buf bytes.Buffer
	l := zerolog.New(&buf)
	a := detector.Alert{Time: at, Rule: detector.RulePrefixGuess, Severity: detector.Critical, Tech: ami.TechPJSIP,
		Extension: "300", Count: 3, Window: 10 * time.Minute, Reason: "distinct prefixes for one destination"}
	Log(&l, &a)
	a.Severity = detector.Warning
	Log(&l, &a)
	dec := json.NewDecoder(&buf)
	for _, want := range []string{"error", "warn"} {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		if m["level"] != want || m["message"] != "fraud alert" || m["extension"] != "300" || m["rule"] != "prefix_guess" {
			t.Errorf("log line %v: want level %s, message \"fraud alert\", extension and rule", m, want)
		}
	}
}

// The log line carries sources and contacts apart: an address only the
// client supplied is in contacts, never in sources.
func TestLogContactsApart(t *testing.T) {
	var buf bytes.Buffer
	l := zerolog.New(&buf)
	a := detector.Alert{Time: at, Rule: detector.RuleCallRate, Severity: detector.Critical, Tech: ami.TechSIP, Extension: "200",
		Sources: []netip.Addr{netip.MustParseAddr("203.0.113.7")}, Contacts: []netip.Addr{netip.MustParseAddr("198.51.100.20")},
		Count: 5, Window: time.Second, Reason: "calls started"}
	Log(&l, &a)
	a.Sources, a.Contacts = nil, nil
	Log(&l, &a)
	dec := json.NewDecoder(&buf)
	for _, want := range []struct{ sources, contacts []string }{
		{[]string{"203.0.113.7"}, []string{"198.51.100.20"}},
		{[]string{}, nil},
	} {
		var line struct {
			Sources  []string `json:"sources"`
			Contacts []string `json:"contacts"`
		}
		if err := dec.Decode(&line); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(line.Sources, want.sources) || !slices.Equal(line.Contacts, want.contacts) ||
			(line.Sources == nil) != (want.sources == nil) {
			t.Errorf("sources %q contacts %q, want %q and %q", line.Sources, line.Contacts, want.sources, want.contacts)
		}
	}
}
