package block

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/actiontest"
	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
)

var (
	ip       = netip.MustParseAddr
	sip200   = ami.Extension{Tech: ami.TechSIP, Name: "200"}
	pjsip300 = ami.Extension{Tech: ami.TechPJSIP, Name: "300"}
	settings = Settings{Timeout: time.Second, Retry: action.Backoff{Attempts: 3, First: time.Millisecond}}
)

// asterisk answers Getvar as the recorded Asterisk 20 did
// (asterisk-20/actions-dialog.txt): the chan_sip variable with the
// address alone, the PJSIP one with its port; a channel not in live is
// missing.
func asterisk(t *testing.T, live ...string) *actiontest.Doer {
	d := actiontest.LoadDialog(t, "asterisk-20/actions-dialog.txt")
	sip, pj, missing := d.Reply(t, "getvar-sip"), d.Reply(t, "getvar-pjsip"), d.Reply(t, "hangup-missing")
	return &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
		ch := actiontest.Header(a, "Channel")
		if a.Name != "Getvar" || !slices.Contains(live, ch) {
			return missing
		}
		if strings.HasPrefix(ch, "PJSIP/") {
			return pj
		}
		return sip
	}}
}

func TestChoose(t *testing.T) {
	contacts := []netip.Addr{ip("198.51.100.20")}
	sources := []netip.Addr{ip("203.0.113.7"), ip("192.0.2.10")}
	for _, tc := range []struct {
		name   string
		req    Request
		up     []string // channels Asterisk has
		want   Target
		asked  []string // Getvar variables sent
		why    string   // substring of Why, when nothing is chosen
		whyNot string   // what Why must not say
	}{
		{
			name: "chan_sip live call: CHANNEL(recvip), not the source or contact",
			req:  Request{Extension: sip200, Live: []string{"SIP/200-0000012b"}, Sources: sources, Contacts: contacts},
			up:   []string{"SIP/200-0000012b"},
			want: Target{Addr: ip("127.0.0.2"), From: FromLiveCall, Channel: "SIP/200-0000012b", Variable: "CHANNEL(recvip)"}, asked: []string{"CHANNEL(recvip)"},
		},
		{
			name: "PJSIP live call: remote_addr without its port",
			req:  Request{Extension: pjsip300, Live: []string{"PJSIP/300-00000029"}, Sources: sources},
			up:   []string{"PJSIP/300-00000029"},
			want: Target{Addr: ip("127.0.0.5"), From: FromLiveCall, Channel: "PJSIP/300-00000029", Variable: "CHANNEL(pjsip,remote_addr)"}, asked: []string{"CHANNEL(pjsip,remote_addr)"},
		},
		{
			name: "the first live channel gone: the next one's",
			req:  Request{Extension: sip200, Live: []string{"SIP/200-00000121", "SIP/200-0000012b"}, Sources: sources},
			up:   []string{"SIP/200-0000012b"},
			want: Target{Addr: ip("127.0.0.2"), From: FromLiveCall, Channel: "SIP/200-0000012b", Variable: "CHANNEL(recvip)"}, asked: []string{"CHANNEL(recvip)", "CHANNEL(recvip)"},
		},
		{
			name: "no live call: the newest source",
			req:  Request{Extension: sip200, Sources: sources, Contacts: contacts},
			want: Target{Addr: ip("203.0.113.7"), From: FromSource},
		},
		{
			name: "live calls all gone: the newest source",
			req:  Request{Extension: sip200, Live: []string{"SIP/200-00000121"}, Sources: sources},
			want: Target{Addr: ip("203.0.113.7"), From: FromSource}, asked: []string{"CHANNEL(recvip)"},
		},
		{
			name: "only a contact: nothing, and the contact named as client-supplied",
			req:  Request{Extension: sip200, Contacts: contacts},
			why:  "no live call, and no address Asterisk received a request of SIP/200 from (SuccessfulAuth); contact 198.51.100.20 is client-supplied, not blocked",
		},
		{
			name: "live calls without an address, no source",
			req:  Request{Extension: sip200, Live: []string{"SIP/200-00000121"}},
			why:  "no address from Getvar CHANNEL(recvip) on its 1 live channels", whyNot: "client-supplied", asked: []string{"CHANNEL(recvip)"},
		},
		{
			name: "IAX2 has no source variable",
			req:  Request{Extension: ami.Extension{Tech: ami.TechIAX2, Name: "trunk"}, Live: []string{"IAX2/trunk-12"}},
			why:  "Asterisk gives no source address for IAX2 channels",
		},
		{
			name: "a live channel name the guard does not send",
			req:  Request{Extension: sip200, Live: []string{"SIP/200-0000012b\r\nVariable: x"}, Sources: sources},
			up:   []string{"SIP/200-0000012b\r\nVariable: x"},
			want: Target{Addr: ip("203.0.113.7"), From: FromSource},
		},
		{
			name: "an address alert: the address",
			req:  Request{Addr: ip("::ffff:203.0.113.66")},
			want: Target{Addr: ip("203.0.113.66"), From: FromAlert},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := asterisk(t, tc.up...)
			c := New(d, nil).Choose(t.Context(), tc.req, settings)
			if c.Target != tc.want {
				t.Errorf("target %+v, want %+v", c.Target, tc.want)
			}
			var asked []string
			for _, a := range d.Sent() {
				asked = append(asked, actiontest.Header(a, "Variable"))
			}
			if strings.Join(asked, " ") != strings.Join(tc.asked, " ") {
				t.Errorf("Getvar of %q, want %q", asked, tc.asked)
			}
			if tc.why != "" && !strings.Contains(c.Why, tc.why) || tc.why == "" && c.Why != "" {
				t.Errorf("why %q, want %q", c.Why, tc.why)
			}
			if tc.whyNot != "" && strings.Contains(c.Why, tc.whyNot) {
				t.Errorf("why %q says %q", c.Why, tc.whyNot)
			}
		})
	}
}

// testFirewall is a dry run whose Real and Block the test chooses.
type testFirewall struct {
	*firewall.DryRun
	real   bool
	fail   error
	blocks atomic.Int32
}

func (f *testFirewall) Real() bool { return f.real }

func (f *testFirewall) Block(ctx context.Context, entries ...firewall.Entry) error {
	f.blocks.Add(int32(len(entries)))
	if f.fail != nil {
		return f.fail
	}
	return f.DryRun.Block(ctx, entries...)
}

// manager starts a real ban manager over fw, with never as its protected
// networks.
func manager(t *testing.T, fw firewall.Firewall, observe bool, never ...netip.Prefix) *bans.Manager {
	m, err := bans.New(bans.Options{Firewall: fw, StatePath: filepath.Join(t.TempDir(), "bans.json"), Never: never, Observe: observe, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

var banReq = Request{Extension: sip200, Rule: "call_rate", Reason: "call_rate critical: 5 extension SIP/200: 5 calls started in 1s", TTL: 24 * time.Hour, Incident: "inc-0000c0de"}

func chosen(a string) Choice { return Choice{Target: Target{Addr: ip(a), From: FromLiveCall}} }

func TestBanOutcomes(t *testing.T) {
	errRefused := errors.New("iptables: permission denied (you must be root)")
	for _, tc := range []struct {
		name    string
		fw      *testFirewall
		observe bool
		never   []netip.Prefix
		result  action.Result
		skip    Skip
		detail  string
		banned  bool // recorded in the manager
		blocks  int32
	}{
		{"real firewall", &testFirewall{real: true}, false, nil, action.Done, NotSkipped, "dropped for 24h", true, 1},
		{"dry-run firewall", &testFirewall{}, false, nil, action.Would, NotSkipped, "dry-run firewall: would drop 127.0.0.2 for 24h", true, 1},
		{"allow-listed", &testFirewall{real: true}, false, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, action.Skipped, SkipNeverBlock,
			"never blocked: allow-listed, the AMI server or the guard's own address", false, 0},
		{"observe mode", &testFirewall{real: true}, true, nil, action.Skipped, SkipObserving, "the mode changed to observe before the ban: nothing done", false, 0},
		{"firewall refuses", &testFirewall{real: true, fail: errRefused}, false, nil, action.Failed, NotSkipped,
			"the ban is recorded and re-applied until the firewall accepts it", true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.fw.DryRun = firewall.NewDryRun(zerolog.Nop())
			m := manager(t, tc.fw, tc.observe, tc.never...)
			res := New(nil, m).Ban(t.Context(), banReq, chosen("127.0.0.2"), settings)
			if res.Result != tc.result || res.Skip != tc.skip || res.Detail != tc.detail || res.Action != action.BlockIP || res.Outcome.Target != "127.0.0.2" {
				t.Errorf("outcome %+v skip %d, want %s %d %q", res.Outcome, res.Skip, tc.result, tc.skip, tc.detail)
			}
			if got := len(m.List()) == 1; got != tc.banned {
				t.Errorf("bans %+v, want banned %v", m.List(), tc.banned)
			}
			if tc.banned {
				b := m.List()[0]
				if res.Ban.Prefix != b.Prefix || b.Extension != "SIP/200" || b.Rule != "call_rate" || b.Reason != banReq.Reason || b.Incident != "inc-0000c0de" || b.DryRun == tc.fw.real {
					t.Errorf("recorded %+v, result's %+v", b, res.Ban)
				}
			}
			if n := tc.fw.blocks.Load(); n != tc.blocks {
				t.Errorf("firewall Block called %d times, want %d", n, tc.blocks)
			}
			if tc.result == action.Failed && (!errors.Is(res.Err, errRefused) || !res.Retryable) {
				t.Errorf("err %v, retryable %v", res.Err, res.Retryable)
			}
		})
	}
}

// countingBanner records the requests it gets.
type countingBanner struct{ n int }

func (c *countingBanner) Ban(context.Context, bans.Request) (bans.Ban, error) {
	c.n++
	return bans.Ban{}, nil
}
func (c *countingBanner) Real() bool { return true }

// Nothing chosen: skipped with the reason, and the ban manager is not asked.
func TestBanNothingChosen(t *testing.T) {
	cb := &countingBanner{}
	why := "nothing to block: no live call, ...; contact 198.51.100.20 is client-supplied, not blocked"
	res := New(nil, cb).Ban(t.Context(), banReq, Choice{Why: why}, settings)
	if res.Result != action.Skipped || res.Skip != SkipNoAddress || res.Detail != why || cb.n != 0 {
		t.Errorf("outcome %+v skip %d after %d bans", res.Outcome, res.Skip, cb.n)
	}
}

// An earlier address of a rotated extension is skipped until the
// protection ends; the ban manager is not asked meanwhile.
func TestBanProtectedAfterRotation(t *testing.T) {
	cb := &countingBanner{}
	b := New(nil, cb)
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	b.now = func() time.Time { return now }
	b.Protect("SIP/200", []netip.Addr{ip("192.0.2.10")}, now.Add(time.Hour))
	res := b.Ban(t.Context(), banReq, chosen("192.0.2.10"), settings)
	if res.Result != action.Skipped || res.Skip != SkipRotated || !strings.Contains(res.Detail, "192.0.2.10 is an earlier address of SIP/200, whose secret was rotated") || cb.n != 0 {
		t.Fatalf("outcome %+v skip %d after %d bans", res.Outcome, res.Skip, cb.n)
	}
	// Another address is not protected.
	if res := b.Ban(t.Context(), banReq, chosen("203.0.113.9"), settings); res.Result != action.Done || cb.n != 1 {
		t.Errorf("another address: %+v after %d bans", res.Outcome, cb.n)
	}
	now = now.Add(time.Hour + time.Second)
	if res := b.Ban(t.Context(), banReq, chosen("192.0.2.10"), settings); res.Result != action.Done || cb.n != 2 {
		t.Errorf("after the protection: %+v after %d bans", res.Outcome, cb.n)
	}
}

// Describe names what would be blocked without asking Asterisk: never a
// contact.
func TestDescribeNeverAContact(t *testing.T) {
	sip := Request{Extension: sip200, Contacts: []netip.Addr{ip("198.51.100.20")}}
	withSource := sip
	withSource.Sources = []netip.Addr{ip("203.0.113.7"), ip("192.0.2.10")}
	live := withSource
	live.Live = []string{"SIP/200-00000001"}
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{sip, "nothing: no address Asterisk received its requests from"},
		{withSource, "203.0.113.7"},
		{live, "its live call's address (Getvar CHANNEL(recvip)), else 203.0.113.7"},
		{Request{Addr: ip("203.0.113.66")}, "203.0.113.66"},
	} {
		if got := Describe(tc.req); got != tc.want {
			t.Errorf("Describe(sources %v, contacts %v, %d live) = %q, want %q", tc.req.Sources, tc.req.Contacts, len(tc.req.Live), got, tc.want)
		}
	}
}

// A guard just started (or reconnecting) may decide before its urgent
// session is logged in: the Getvar is tried again while the session says
// it is not connected, not when Asterisk does not answer (the hang-up
// waits for the choice).
func TestChooseWaitsForTheSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		req := Request{Extension: sip200, Live: []string{"SIP/200-0000012b"}, Sources: []netip.Addr{ip("203.0.113.7")}}
		up := asterisk(t, "SIP/200-0000012b")
		calls := 0
		d := &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
			if calls++; calls <= 2 {
				return actiontest.Reply{Err: client.ErrNotConnected}
			}
			return up.Answer(a)
		}}
		c := New(d, nil).Choose(t.Context(), req, settings)
		if c.Target.From != FromLiveCall || c.Target.Addr != ip("127.0.0.2") || calls != 3 {
			t.Fatalf("after two 'not connected': %+v in %d Getvars, want the live call's address in 3", c.Target, calls)
		}

		calls = 0
		d = &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
			calls++
			return actiontest.Reply{Err: client.ErrTimeout}
		}}
		c = New(d, nil).Choose(t.Context(), req, settings)
		if c.Target.From != FromSource || calls != 1 {
			t.Fatalf("a Getvar timing out: %+v in %d Getvars, want the source after 1", c.Target, calls)
		}
	})
}

// An IPv6 address is banned with its /64 (bans.Options.IPv6Prefix): the
// outcome says what was dropped.
func TestBanOutcomeNamesTheNetwork(t *testing.T) {
	for _, real := range []bool{true, false} {
		fw := &testFirewall{real: real, DryRun: firewall.NewDryRun(zerolog.Nop())}
		m, err := bans.New(bans.Options{Firewall: fw, StatePath: filepath.Join(t.TempDir(), "bans.json"), IPv6Prefix: 64, Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close(context.Background()) })
		res := New(nil, m).Ban(t.Context(), Request{Addr: ip("2001:db8:1:2::5"), Rule: "auth_failures", Reason: "x", TTL: time.Hour},
			Choice{Target: Target{Addr: ip("2001:db8:1:2::5"), From: FromAlert}}, Settings{})
		want := "dropped 2001:db8:1:2::/64 (the network of 2001:db8:1:2::5) for 1h"
		if !real {
			want = "dry-run firewall: would drop 2001:db8:1:2::/64 (the network of 2001:db8:1:2::5) for 1h"
		}
		if res.Detail != want || res.Ban.Prefix != netip.MustParsePrefix("2001:db8:1:2::/64") {
			t.Errorf("real %v: detail %q, ban %s; want %q", real, res.Detail, res.Ban.Prefix, want)
		}
	}
}
