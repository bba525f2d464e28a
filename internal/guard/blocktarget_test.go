package guard

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/config"
)

// logLine is one JSON log line of the guard: an alert or an action outcome.
type logLine struct {
	Message   string   `json:"message"`
	Action    string   `json:"action"`
	Result    string   `json:"result"`
	Rule      string   `json:"rule"`
	Severity  string   `json:"severity"`
	Extension string   `json:"extension"`
	Target    string   `json:"target"`
	Detail    string   `json:"detail"`
	Note      string   `json:"note"`
	Sources   []string `json:"sources"`
	Contacts  []string `json:"contacts"`
}

// logLines decodes the guard's log lines with the given message.
func logLines(h *harness, message string) []logLine {
	var out []logLine
	for _, l := range strings.Split(h.logs.String(), "\n") {
		var ll logLine
		if json.Unmarshal([]byte(l), &ll) == nil && ll.Message == message {
			out = append(out, ll)
		}
	}
	return out
}

// outcomeOf returns the first outcome of action for the extension.
func outcomeOf(h *harness, action, ext string) (logLine, bool) {
	for _, l := range logLines(h, "action outcome") {
		if l.Action == action && l.Extension == ext {
			return l, true
		}
	}
	return logLine{}, false
}

// waitLoggedIn waits until both AMI sessions of the guard logged in (the
// event mask goes with the Login): from then on an injected event reaches
// it.
func waitLoggedIn(t *testing.T, h *harness) {
	t.Helper()
	g := <-h.guard
	h.guard <- g // for the test, if it wants it too
	// Both clients logged in, not only both Logins received: an action on
	// a session whose login reply is still on its way fails.
	waitFor(t, "both sessions to log in", 10*time.Second, func() bool { return g.events.Connected() && g.urgent.Connected() })
}

func peerStatusFrame(peer, status, addr string) string {
	return frame("Event: PeerStatus", "Privilege: system,all", "ChannelType: SIP", "Peer: "+peer, "PeerStatus: "+status, "Address: "+addr)
}

// A stolen extension with no live call whose only address is the contact
// of its registration (PeerStatus Address: the Contact header's with
// nat=no, which the client writes): nothing is blocked, and the block_ip
// outcome says why.
func TestBlockNeverTheContact(t *testing.T) {
	t.Parallel()
	h := startGuard(t, "pjsip-bruteforce.ami", 0, func(c *config.Config) {
		c.Detection.CallRate.BurstCritical = 50 // only failed_probes goes critical
	})
	waitLoggedIn(t, h)
	h.srv.Inject(peerStatusFrame("SIP/200", "Registered", "198.51.100.20:5060"))
	// Five unroutable calls, each over before the next: at the fifth
	// hang-up, failed_probes is critical and no call is live.
	for i := range 5 {
		ch, uid := fmt.Sprintf("SIP/200-000001%02x", i), fmt.Sprintf("1795630000.%d", i)
		h.srv.Inject(newchannelFrame(ch, uid, "0011442079460000", "200"))
		h.srv.Inject(hangupFrame(ch, uid))
	}
	waitFor(t, "the block_ip outcome of SIP/200", 20*time.Second, func() bool {
		_, ok := outcomeOf(h, "block_ip", "200")
		return ok
	})
	o, _ := outcomeOf(h, "block_ip", "200")
	if o.Result != "skipped" || o.Rule != "failed_probes" || o.Severity != "critical" {
		t.Errorf("block_ip outcome %+v, want a skipped block of the failed_probes critical", o)
	}
	if !strings.Contains(o.Detail, "no live call") || !strings.Contains(o.Detail, "198.51.100.20 is client-supplied, not blocked") {
		t.Errorf("the outcome does not say why: %q", o.Detail)
	}
	if slices.Contains(blocked(h), netip.MustParseAddr("198.51.100.20")) {
		t.Error("the contact address was blocked")
	}
	// The alert names it as a contact, not a source.
	for _, a := range logLines(h, "fraud alert") {
		if a.Extension == "200" && (len(a.Sources) != 0 || !slices.Equal(a.Contacts, []string{"198.51.100.20"})) {
			t.Errorf("alert of SIP/200 with sources %q and contacts %q, want only the contact", a.Sources, a.Contacts)
		}
	}
}

// A live call's source is what Asterisk received its INVITE from (Getvar
// CHANNEL(recvip)): neither the registration's contact, which CHANNEL(peerip)
// follows with nat=no, nor the address the extension registered from.
func TestBlockTheLiveCallsRecvip(t *testing.T) {
	t.Parallel()
	h := startGuard(t, "pjsip-bruteforce.ami", 0, nil)
	waitLoggedIn(t, h)
	// 200 registers from 203.0.113.7 with a contact of 198.51.100.20 ...
	h.srv.Inject(peerStatusFrame("SIP/200", "Registered", "198.51.100.20:5060"))
	h.srv.Inject(securityFrame("SuccessfulAuth", "SIP", "200", "IPV4/UDP/203.0.113.7/5060", "UsingPassword: 1"))
	// ... and calls from 203.0.113.9, each INVITE challenged.
	for i := range 5 {
		h.srv.Inject(securityFrame("ChallengeSent", "SIP", "sip:200@127.0.0.1", "IPV4/UDP/203.0.113.9/5071", "Challenge: 2e5503cf"))
		h.srv.Inject(newchannelFrame(fmt.Sprintf("SIP/200-000002%02x", i), fmt.Sprintf("1795640000.%d", i), "0011442079460000", "200"))
	}
	waitFor(t, "the block_ip outcome of SIP/200", 20*time.Second, func() bool {
		_, ok := outcomeOf(h, "block_ip", "200")
		return ok
	})
	if o, _ := outcomeOf(h, "block_ip", "200"); o.Result != "done" || o.Target != "203.0.113.9" {
		t.Errorf("block_ip outcome %+v, want 203.0.113.9 blocked", o)
	}
	b := blocked(h)
	if !slices.Contains(b, netip.MustParseAddr("203.0.113.9")) {
		t.Errorf("the live call's source 203.0.113.9 is not blocked: %v", b)
	}
	for _, not := range []string{"198.51.100.20", "203.0.113.7"} {
		if slices.Contains(b, netip.MustParseAddr(not)) {
			t.Errorf("%s blocked", not)
		}
	}
	var asked []string
	for _, a := range h.srv.Actions() {
		for _, hd := range a.Headers {
			if a.Name == "Getvar" && strings.EqualFold(hd[0], "Variable") {
				asked = append(asked, hd[1])
			}
		}
	}
	if len(asked) == 0 || slices.ContainsFunc(asked, func(v string) bool { return v != "CHANNEL(recvip)" }) {
		t.Errorf("Getvar asked for %q, want only CHANNEL(recvip)", asked)
	}
}

// After a connect the guard learns the chan_sip peers' addresses from
// SIPpeers. A static peer's (the carrier's configured host) is no
// registration: its incoming calls stay capped at warning.
func TestStaticPeerFromSIPpeersStaysCapped(t *testing.T) {
	t.Parallel()
	h := startGuard(t, "pjsip-bruteforce.ami", 0, nil)
	waitFor(t, "the state rebuilt after the connect", 10*time.Second, func() bool {
		return len(logLines(h, "state rebuilt from Asterisk")) > 0
	})
	for i := range 20 { // a busy inbound trunk
		ch, uid := fmt.Sprintf("SIP/carrier-000003%02x", i), fmt.Sprintf("1795650000.%d", i)
		h.srv.Inject(frame("Event: Newchannel", "Privilege: call,all", "Channel: "+ch, "ChannelState: 0", "ChannelStateDesc: Down",
			"CallerIDNum: 02079460100", "CallerIDName: ", "Context: from-carrier", "Exten: 201", "Priority: 1", "Uniqueid: "+uid, "Linkedid: "+uid))
	}
	waitFor(t, "the carrier's alert at the critical level, capped or not", 20*time.Second, func() bool {
		return slices.ContainsFunc(logLines(h, "fraud alert"), func(a logLine) bool {
			return a.Extension == "carrier" && (a.Note != "" || a.Severity == "critical")
		})
	})
	for _, a := range logLines(h, "fraud alert") {
		if a.Extension == "carrier" && a.Severity == "critical" {
			t.Errorf("the carrier went critical: %+v", a)
		}
	}
}
