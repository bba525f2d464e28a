package hangup

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/actiontest"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
)

var (
	sip200   = ami.Extension{Tech: ami.TechSIP, Name: "200"}
	settings = Settings{Cause: 21, Regex: true, Timeout: time.Second, Retry: action.Backoff{Attempts: 3, First: 100 * time.Millisecond}}
)

// recorded holds what the real Asterisk 20 answered, by ActionID of
// asterisk-20/actions-dialog.txt: the Hangup by regex of four channels of
// SIP/200, the Hangup of one channel by name, and of a missing one.
type recorded struct {
	regex, byName, missing actiontest.Reply
}

func load(t *testing.T) recorded {
	d := actiontest.LoadDialog(t, "asterisk-20/actions-dialog.txt")
	return recorded{d.Reply(t, "hangup-regex-sip"), d.Reply(t, "hangup-one"), d.Reply(t, "hangup-missing")}
}

func isRegex(a ami.Action) bool { return strings.HasPrefix(actiontest.Header(a, "Channel"), "/") }

// pbx answers Hangup actions as the recorded Asterisk did: the regex hangs
// up the four channels of the recording, a name in byName is hung up, any
// other is missing. Every channel hung up gets its Hangup event, delivered
// to h.Gone from another goroutine as the guard's event loop does.
func pbx(h **Hanger, rec recorded, byName ...string) *actiontest.Doer {
	return &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
		if a.Name != "Hangup" {
			return actiontest.Reply{Err: errors.New("unexpected " + a.Name)}
		}
		var r actiontest.Reply
		var gone []string
		switch ch := actiontest.Header(a, "Channel"); {
		case isRegex(a):
			r = rec.regex
			for _, it := range r.Items {
				gone = append(gone, it.Get("Channel"))
			}
		case slices.Contains(byName, ch):
			r, gone = rec.byName, []string{ch}
		default:
			r = rec.missing
		}
		hg := *h
		go func() {
			for _, ch := range gone {
				hg.Gone(ch)
			}
		}()
		return r
	}}
}

// The regex hangs up what it matches; the tracked channels it missed are
// hung up by name; one already gone is counted so; the tracked ones hung
// up are confirmed by their Hangup events.
func TestExtensionRegexThenByName(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := load(t)
		var h *Hanger
		d := pbx(&h, rec, "SIP/200-0000012b")
		h = New(d)
		live := []string{"SIP/200-00000129", "SIP/200-0000012b", "SIP/200-00000130"}
		res := h.Extension(t.Context(), sip200, live, settings)
		if res.Result != action.Done || res.Err != nil || res.Action != action.Hangup || res.Target != "SIP/200" {
			t.Fatalf("outcome %+v, want SIP/200 hung up without error", res.Outcome)
		}
		want := Result{Outcome: res.Outcome, ByRegex: 4, ByName: 1, AlreadyGone: 1, Tracked: 3, Confirmed: 2}
		if res != want {
			t.Errorf("result %+v, want %+v", res, want)
		}
		sent := d.Sent()
		if len(sent) != 3 || !isRegex(sent[0]) || actiontest.Header(sent[0], "Channel") != `/^SIP\/200-[0-9a-f]{8}$/` ||
			actiontest.Header(sent[0], "Cause") != "21" {
			t.Fatalf("sent %+v, want the regex first, then the two tracked channels it missed", sent)
		}
		// "No such channel" is permanent: sent once, not retried.
		if n := d.Count("Hangup"); n != 3 {
			t.Errorf("%d Hangup actions, want 3 (no retry of the missing channel)", n)
		}
	})
}

// Asterisk 1.8 has no Hangup by regex: with Regex off, every tracked
// channel is hung up by name and no regex is sent.
func TestExtensionWithoutRegex(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := load(t)
		live := []string{"SIP/200-00000121", "SIP/200-00000124"}
		var h *Hanger
		d := pbx(&h, rec, live...)
		h = New(d)
		s := settings
		s.Regex = false
		res := h.Extension(t.Context(), sip200, live, s)
		if res.Result != action.Done || res.ByRegex != 0 || res.ByName != 2 || res.Confirmed != 2 || !res.NoRegex {
			t.Fatalf("result %+v, want 2 by name, confirmed, no regex", res)
		}
		for _, a := range d.Sent() {
			if isRegex(a) {
				t.Errorf("a regex was sent: %+v", a)
			}
		}
	})
}

// An Asterisk that takes the regex for a channel name (1.8 answers "No such
// channel") is not retried, and the tracked channels are hung up by name.
func TestExtensionRegexNotUnderstood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := load(t)
		rec.regex = rec.missing
		live := []string{"SIP/200-00000121"}
		var h *Hanger
		d := pbx(&h, rec, live...)
		h = New(d)
		res := h.Extension(t.Context(), sip200, live, settings)
		if res.Result != action.Done || res.Err != nil || !res.NoRegex || res.ByName != 1 || res.Confirmed != 1 {
			t.Fatalf("result %+v, want the channel hung up by name, without error", res)
		}
		if n := d.Count("Hangup"); n != 2 {
			t.Errorf("%d Hangup actions, want the regex once and the name once", n)
		}
	})
}

// A temporary failure is retried until it succeeds.
func TestExtensionTemporaryErrorRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := load(t)
		var h *Hanger
		inner := pbx(&h, rec)
		fails := 2
		d := &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
			if fails > 0 {
				fails--
				return actiontest.Reply{Err: client.ErrNotConnected}
			}
			return inner.Answer(a)
		}}
		h = New(d)
		res := h.Extension(t.Context(), sip200, []string{"SIP/200-00000121"}, settings)
		if res.Result != action.Done || res.Err != nil || res.ByRegex != 4 || res.Confirmed != 1 {
			t.Fatalf("result %+v, want done after the retries", res)
		}
		if n := d.Count("Hangup"); n != 3 {
			t.Errorf("%d Hangup actions, want 2 failures and a success", n)
		}
	})
}

// When nothing could be hung up the outcome is failed, with the error and
// whether a later try may help.
func TestExtensionFailed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &actiontest.Doer{Answer: func(ami.Action) actiontest.Reply { return actiontest.Reply{Err: client.ErrNotConnected} }}
		h := New(d)
		res := h.Extension(t.Context(), sip200, []string{"SIP/200-00000121"}, settings)
		if res.Result != action.Failed || !errors.Is(res.Err, client.ErrNotConnected) || !res.Retryable || res.HungUp() != 0 || res.Confirmed != 0 {
			t.Fatalf("result %+v, want failed with ErrNotConnected, retryable", res)
		}
		if n := d.Count("Hangup"); n != 6 {
			t.Errorf("%d Hangup actions, want 3 tries of the regex and 3 of the name", n)
		}
	})
}

// A channel hung up whose Hangup event never comes is not confirmed: the
// wait ends after Settings.Confirm.
func TestExtensionUnconfirmed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := load(t)
		d := &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply { return rec.byName }}
		h := New(d)
		s := settings
		s.Regex = false
		res := h.Extension(t.Context(), sip200, []string{"SIP/200-00000121", "SIP/200-00000124"}, s)
		if res.Result != action.Done || res.ByName != 2 || res.Confirmed != 0 {
			t.Fatalf("result %+v, want 2 hung up, none confirmed", res)
		}
		h.Gone("SIP/200-00000121") // late: nobody waits any more
		if len(h.awaiting) != 0 {
			t.Errorf("still waiting for %v", h.awaiting)
		}
	})
}

// A name no regex is built for (Local) is hung up by its tracked
// channels alone.
func TestExtensionLocal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := load(t)
		var h *Hanger
		ch := "Local/200@from-internal-0000001a;1"
		d := pbx(&h, rec, ch)
		h = New(d)
		res := h.Extension(t.Context(), ami.Extension{Tech: ami.TechLocal, Name: "200"}, []string{ch}, settings)
		if res.Result != action.Done || res.ByName != 1 || res.Confirmed != 1 || !res.NoRegex || d.Count("Hangup") != 1 {
			t.Fatalf("result %+v (%d sent), want the Local channel hung up by name", res, d.Count("Hangup"))
		}
	})
}

// Channel hangs up one channel; one already gone counts as done; a
// failure says whether a retry may help.
func TestChannel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := load(t)
		for _, tc := range []struct {
			name   string
			reply  actiontest.Reply
			result action.Result
			detail string
			sent   int
		}{
			{"hung up", rec.byName, action.Done, "hung up", 1},
			{"already gone", rec.missing, action.Done, "already gone", 1},
			{"not connected", actiontest.Reply{Err: client.ErrNotConnected}, action.Failed, "", 3},
		} {
			d := &actiontest.Doer{Answer: func(ami.Action) actiontest.Reply { return tc.reply }}
			out := New(d).Channel(t.Context(), "SIP/200-0000012b", settings)
			if out.Result != tc.result || out.Detail != tc.detail || out.Target != "SIP/200-0000012b" || d.Count("Hangup") != tc.sent {
				t.Errorf("%s: %+v after %d actions, want %s %q after %d", tc.name, out, d.Count("Hangup"), tc.result, tc.detail, tc.sent)
			}
			if tc.result == action.Failed && (!errors.Is(out.Err, client.ErrNotConnected) || !out.Retryable) {
				t.Errorf("%s: err %v, retryable %v", tc.name, out.Err, out.Retryable)
			}
		}
		// A name the guard does not put into an action is never sent.
		d := &actiontest.Doer{Answer: func(ami.Action) actiontest.Reply { return rec.byName }}
		if out := New(d).Channel(t.Context(), "SIP/200-0000012b\r\nAction: Logoff", settings); out.Result != action.Failed || out.Retryable || len(d.Sent()) != 0 {
			t.Errorf("unsafe channel: %+v, %d sent", out, len(d.Sent()))
		}
	})
}

// The context's end stops the wait for confirmations.
func TestExtensionContextEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := load(t)
		ctx, cancel := context.WithCancel(t.Context())
		d := &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply { cancel(); return rec.byName }}
		s := settings
		s.Regex, s.Confirm = false, time.Hour
		res := New(d).Extension(ctx, sip200, []string{"SIP/200-00000121"}, s)
		if res.ByName != 1 || res.Confirmed != 0 {
			t.Fatalf("result %+v", res)
		}
	})
}

func TestChannelRegexEscapes(t *testing.T) {
	for _, tc := range []struct {
		tech       ami.Tech
		name, want string
		ok         bool
	}{
		{ami.TechSIP, "200", `/^SIP\/200-[0-9a-f]{8}$/`, true},
		{ami.TechPJSIP, "a.b+c*", `/^PJSIP\/a\.b\+c\*-[0-9a-f]{8}$/`, true},
		{ami.TechIAX2, "trunk", `/^IAX2\/trunk-[0-9]+$/`, true},
		{ami.TechSIP, "x|y", "", false},
		{ami.TechSIP, "a\r\nb", "", false},
		{ami.TechLocal, "200", "", false},
	} {
		got, ok := ChannelRegex(tc.tech, tc.name)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ChannelRegex(%s, %q) = %q, %v; want %q, %v", tc.tech, tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// The AMI versions of the recorded Asterisks, and of those without Hangup
// by regex.
func TestRegexSupported(t *testing.T) {
	for _, c := range []struct {
		major, minor int
		want         bool
	}{
		{1, 1, false}, // 1.6, 1.8
		{1, 2, false}, // 10
		{1, 3, true},  // 11 (asterisk-11 fixtures)
		{2, 10, true}, // 13
		{9, 0, true},  // 20 (asterisk-20 fixtures)
		{11, 0, true}, // 22
		{0, 0, true},  // not connected yet, or no version in the banner
	} {
		if got := RegexSupported(c.major, c.minor); got != c.want {
			t.Errorf("RegexSupported(%d, %d) = %v, want %v", c.major, c.minor, got, c.want)
		}
	}
}
