package amitest

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// midServer streams attack-mixed.ami up to midAttack and logs a client in
// with the dialog's event mask.
func midServer(t *testing.T, opts Options) (*Server, *client) {
	t.Helper()
	s := startWith(t, cutTranscript(t, attackMixed, midAttack), opts)
	c := dial(t, s)
	c.login("call,security,system")
	c.ping("drain")
	return s, c
}

func TestSIPshowpeerAsDialog(t *testing.T) {
	t.Parallel()
	_, c := midServer(t, Options{})
	action, want := dialogFor(t, dialog20, "sip-peer")
	c.send(actionLines(action)...)
	f, _ := c.response("sip-peer")
	sameKeys(t, "SIPshowpeer 200", f, want[0])
	// The peer registered from 127.0.0.2:5070 in the transcript, as in the
	// dialog's session: every value but the expiry is the same.
	sameValues(t, "SIPshowpeer 200", f, want[0], "RegExpire")
	if !regexp.MustCompile(`^\d+ seconds$`).MatchString(f.get("RegExpire")) {
		t.Errorf("RegExpire %q", f.get("RegExpire"))
	}

	action, want = dialogFor(t, dialog20, "sip-peer-missing")
	c.send(actionLines(action)...)
	f, _ = c.response("sip-peer-missing")
	sameKeys(t, "SIPshowpeer missing", f, want[0])
	sameValues(t, "SIPshowpeer missing", f, want[0])
	if !want[0].extraBlank || !strings.HasSuffix(string(f.raw), "\r\n\r\n") {
		t.Errorf("missing peer: extra empty line not recorded/sent")
	}
	// The extra empty line does not disturb the next answer.
	c.send("Action: Ping", "ActionID: after")
	if f := c.next(); f.get("ActionID") != "after" {
		t.Errorf("after the missing peer: %v", f.hdrs)
	}

	// A static peer: its host, no registration.
	c.send("Action: SIPshowpeer", "Peer: carrier", "ActionID: carrier")
	f, _ = c.response("carrier")
	if f.get("Address-IP") != "127.0.0.9" || f.get("Address-Port") != "5090" || f.get("Dynamic") != "N" ||
		f.get("Context") != "from-carrier" || f.get("SIP-Useragent") != "" {
		t.Errorf("carrier: %v", f.hdrs)
	}
	// A dynamic peer that never registered.
	s2 := start(t, Options{})
	c2 := dial(t, s2)
	c2.login("off")
	c2.send("Action: SIPshowpeer", "Peer: 201", "ActionID: 201")
	f, _ = c2.response("201")
	if f.get("Address-IP") != "(null)" || f.get("Address-Port") != "0" || f.get("Callerid") != `"Bob" <201>` {
		t.Errorf("201 unregistered: %v", f.hdrs)
	}
}

func TestSIPpeers(t *testing.T) {
	t.Parallel()
	_, c := midServer(t, Options{})
	c.send("Action: SIPpeers", "ActionID: peers")
	resp, items, done, _ := c.list("peers", "PeerlistComplete")
	if resp.get("EventList") != "start" || resp.get("Message") != "Peer status list will follow" {
		t.Errorf("response %v", resp.hdrs)
	}
	var got []string
	for _, it := range items {
		got = append(got, it.get("ObjectName")+"@"+it.get("IPaddress")+":"+it.get("IPport"))
	}
	// 201 registered from 127.0.0.3:5063 and 200 from 127.0.0.2:5070.
	if want := "200@127.0.0.2:5070 201@127.0.0.3:5063 carrier@127.0.0.9:5090"; strings.Join(got, " ") != want {
		t.Errorf("peers %v, want %s", got, want)
	}
	if done.get("ListItems") != "3" || done.get("EventList") != "Complete" {
		t.Errorf("complete %v", done.hdrs)
	}
}

func TestPJSIPShowContactsAsDialog(t *testing.T) {
	t.Parallel()
	_, c := midServer(t, Options{})
	action, want := dialogFor(t, dialog20, "pjsip-contacts")
	c.send(actionLines(action)...)
	resp, items, done, _ := c.list("pjsip-contacts", "ContactListComplete")
	sameKeys(t, "response", resp, want[0])
	sameValues(t, "response", resp, want[0])
	if len(items) != 1 {
		t.Fatalf("%d contacts", len(items))
	}
	sameKeys(t, "ContactList", items[0], want[1])
	// Another recording session: its Call-ID, contact hash and expiry differ.
	sameValues(t, "ContactList", items[0], want[1], "ObjectName", "CallId", "ExpirationTime")
	if !regexp.MustCompile(`^300;@[0-9a-f]{32}$`).MatchString(items[0].get("ObjectName")) {
		t.Errorf("ObjectName %q", items[0].get("ObjectName"))
	}
	sameKeys(t, "complete", done, want[2])
	sameValues(t, "complete", done, want[2])

	s2 := start(t, Options{})
	c2 := dial(t, s2)
	c2.login("off")
	c2.send("Action: PJSIPShowContacts", "ActionID: none")
	if f := c2.next(); f.get("Response") != "Error" || f.get("Message") != "No Contacts found" {
		t.Errorf("no contacts: %v", f.hdrs)
	}
}

func TestPJSIPShowEndpointAsDialog22(t *testing.T) {
	t.Parallel()
	_, c := midServer(t, Options{PJSIPConf: PJSIPConf22, Banner: Banner22})
	action, want := dialogFor(t, dialog22, "pjsip-endpoint")
	c.send(actionLines(action)...)
	resp, items, done, _ := c.list("pjsip-endpoint", "EndpointDetailComplete")
	sameKeys(t, "response", resp, want[0])
	sameValues(t, "response", resp, want[0])
	if len(items) != 4 {
		t.Fatalf("%d items, want 4", len(items))
	}
	for i, it := range items {
		sameKeys(t, it.get("Event"), it, want[1+i])
	}
	sameValues(t, "EndpointDetail", items[0], want[1], "ActiveChannels")
	if items[0].get("ActiveChannels") != "4" {
		t.Errorf("ActiveChannels %s, want 4", items[0].get("ActiveChannels"))
	}
	sameValues(t, "AuthDetail", items[1], want[2])
	sameValues(t, "AorDetail", items[2], want[3])
	sameValues(t, "ContactStatusDetail", items[3], want[4], "RegExpire", "CallID", "ID")
	sameKeys(t, "complete", done, want[5])
	sameValues(t, "complete", done, want[5])

	c.send("Action: PJSIPShowEndpoint", "Endpoint: nosuch", "ActionID: x")
	if f, _ := c.response("x"); f.get("Response") != "Error" || f.get("Message") != "Unable to retrieve endpoint nosuch" {
		t.Errorf("missing endpoint: %v", f.hdrs)
	}
}

func TestGetvarAsDialog(t *testing.T) {
	t.Parallel()
	s, c := midServer(t, Options{})
	live := s.LiveChannels()
	sipCh := live[slices.IndexFunc(live, func(n string) bool { return strings.HasPrefix(n, "SIP/200-") })]
	pjCh := live[slices.IndexFunc(live, func(n string) bool { return strings.HasPrefix(n, "PJSIP/300-") })]
	for aid, ch := range map[string]string{"getvar-sip": sipCh, "getvar-pjsip": pjCh} {
		action, want := dialogFor(t, dialog20, aid)
		lines := actionLines(action)
		lines[1] = "Channel: " + ch // the dialog's channel is gone: take a live one
		c.send(lines...)
		f, _ := c.response(aid)
		sameKeys(t, aid, f, want[0])
		sameValues(t, aid, f, want[0])
	}
	c.send("Action: Getvar", "Channel: "+sipCh, "Variable: CHANNEL(recvip)", "ActionID: recv")
	if f, _ := c.response("recv"); f.get("Value") != "127.0.0.2" {
		t.Errorf("recvip %v", f.hdrs)
	}
	c.send("Action: Getvar", "Channel: SIP/nosuch-00000001", "Variable: CHANNEL(peerip)", "ActionID: gone")
	if f, _ := c.response("gone"); f.get("Response") != "Error" || f.get("Message") != "No such channel" {
		t.Errorf("missing channel: %v", f.hdrs)
	}
}

// recvip is the address the call's INVITE came from, as chan_sip's: for a
// peer with a secret the address its challenged INVITE came from, whatever
// its registration's contact says (peerip follows that contact); for the
// carrier, a peer matched by its host, the host, even after someone
// elsewhere got a challenge naming it by putting it in the From header.
func TestGetvarRecvipIsWhereTheRequestCameFrom(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("call,security,system")
	inject := func(lines ...string) { s.Inject(strings.Join(lines, "\r\n") + "\r\n") }
	newchannel := func(ch, uid string) {
		inject("Event: Newchannel", "Privilege: call,all", "Channel: "+ch, "ChannelState: 0", "Exten: 02079460123", "Uniqueid: "+uid, "Linkedid: "+uid)
	}
	challenge := func(account, remote string) {
		inject("Event: ChallengeSent", "Privilege: security,all", "Service: SIP", "AccountID: "+account, "SessionID: 0x7fa2b4035830",
			"LocalAddress: IPV4/UDP/127.0.0.1/5060", "RemoteAddress: "+remote, "Challenge: 1e72b9ae")
	}
	// 200 registered with a contact of 198.51.100.20 and calls from 203.0.113.9.
	inject("Event: PeerStatus", "Privilege: system,all", "ChannelType: SIP", "Peer: SIP/200", "PeerStatus: Registered", "Address: 198.51.100.20:5060")
	challenge("sip:200@127.0.0.1", "IPV4/UDP/203.0.113.9/5071")
	newchannel("SIP/200-000000a1", "1795610900.1")
	// An outsider's INVITE with From user carrier, then the carrier's own call.
	challenge("sip:carrier@127.0.0.1", "IPV4/UDP/203.0.113.50/5060")
	newchannel("SIP/carrier-000000a2", "1795610900.2")
	for _, tc := range []struct{ ch, variable, want string }{
		{"SIP/200-000000a1", "CHANNEL(recvip)", "203.0.113.9"},
		{"SIP/200-000000a1", "CHANNEL(peerip)", "198.51.100.20"},
		{"SIP/carrier-000000a2", "CHANNEL(recvip)", "127.0.0.9"},
		{"SIP/carrier-000000a2", "CHANNEL(peerip)", "127.0.0.9"},
	} {
		c.send("Action: Getvar", "Channel: "+tc.ch, "Variable: "+tc.variable, "ActionID: v")
		if f, _ := c.response("v"); f.get("Response") != "Success" || f.get("Value") != tc.want {
			t.Errorf("%s of %s: %v, want %s", tc.variable, tc.ch, f.hdrs, tc.want)
		}
	}
}

// collect reads until a Ping's Pong and returns the events by name.
func hangups(frames []*frame) map[string]*frame {
	out := map[string]*frame{}
	for _, f := range frames {
		if f.isEvent("Hangup") {
			out[f.get("Channel")] = f
		}
	}
	return out
}

func TestHangupByNameAsDialog(t *testing.T) {
	t.Parallel()
	s, c := midServer(t, Options{})
	before := s.LiveChannels()
	var target string
	for _, n := range before {
		if strings.HasPrefix(n, "SIP/200-") {
			target = n
			break
		}
	}
	action, want := dialogFor(t, dialog20, "hangup-one")
	lines := actionLines(action)
	lines[1] = "Channel: " + target
	c.send(lines...)
	f, _ := c.response("hangup-one")
	sameKeys(t, "hangup-one", f, want[0])
	sameValues(t, "hangup-one", f, want[0])
	evs := c.ping("after")
	// SoftHangupRequest (cause 16) before the Hangup (cause 21).
	var order []string
	for _, e := range evs {
		if e.get("Channel") == target {
			order = append(order, e.get("Event")+":"+e.get("Cause"))
		}
	}
	if strings.Join(order, " ") != "BridgeLeave: SoftHangupRequest:16 Hangup:21" {
		t.Errorf("events of %s: %v", target, order)
	}
	hs := hangups(evs)
	if h := hs[target]; h == nil || h.get("Cause-txt") != "Call Rejected" {
		t.Fatalf("no Hangup 21 for %s", target)
	}
	// The Hangup frame is shaped as the dialog's.
	dlg := readDialog(t, dialog20)
	for _, m := range dlg {
		if m.get("Event") == "Hangup" && m.get("Channel") == "SIP/200-0000012b" {
			sameKeys(t, "Hangup", hs[target], m)
			sameValues(t, "Hangup", hs[target], m, "Channel", "Exten", "Uniqueid", "Linkedid")
		}
	}
	// The carrier leg went with it, cause 16.
	var leg string
	for ch, h := range hs {
		if ch != target {
			leg = ch
			if h.get("Cause") != "16" || h.get("Cause-txt") != "Normal Clearing" || h.get("Linkedid") != hs[target].get("Uniqueid") {
				t.Errorf("other leg: %v", h.hdrs)
			}
		}
	}
	if len(hs) != 2 || !strings.HasPrefix(leg, "SIP/carrier-") {
		t.Errorf("hangups %v", hs)
	}
	after := s.LiveChannels()
	if slices.Contains(after, target) || slices.Contains(after, leg) || len(after) != len(before)-2 {
		t.Errorf("live after: %v", after)
	}
	// Hang up by uniqueid.
	var uid string
	var next string
	for _, n := range after {
		if strings.HasPrefix(n, "PJSIP/300-") {
			next = n
			break
		}
	}
	c.send("Action: CoreShowChannels", "ActionID: csc")
	_, items, _, _ := c.list("csc", "CoreShowChannelsComplete")
	for _, it := range items {
		if it.get("Channel") == next {
			uid = it.get("Uniqueid")
		}
	}
	c.send("Action: Hangup", "Channel: "+uid, "ActionID: byid")
	if f, _ := c.response("byid"); f.get("Message") != "Channel Hungup" {
		t.Errorf("by uniqueid: %v", f.hdrs)
	}
	if h := hangups(c.ping("p2"))[next]; h == nil || h.get("Cause") != "16" || h.get("TechCause") != "" {
		t.Errorf("PJSIP hangup without cause: %v", h)
	}

	action, want = dialogFor(t, dialog20, "hangup-missing")
	c.send(actionLines(action)...)
	f, _ = c.response("hangup-missing")
	sameKeys(t, "hangup-missing", f, want[0])
	sameValues(t, "hangup-missing", f, want[0])
}

func TestHangupRegexAsDialog(t *testing.T) {
	t.Parallel()
	s, c := midServer(t, Options{})
	before := s.LiveChannels()
	for _, tc := range []struct{ aid, re, prefix, cause, tech string }{
		{"hangup-regex-sip", `^SIP/200-.*$`, "SIP/200-", "21", ""},
		{"hangup-regex-pjsip", `^PJSIP/300-.*$`, "PJSIP/300-", "21", "403"},
	} {
		var match []string
		for _, n := range s.LiveChannels() {
			if regexp.MustCompile(tc.re).MatchString(n) {
				match = append(match, n)
			}
		}
		if len(match) < 2 {
			t.Fatalf("%s: only %v match", tc.aid, match)
		}
		action, want := dialogFor(t, dialog20, tc.aid)
		c.send(actionLines(action)...)
		resp, items, done, _ := c.list(tc.aid, "ChannelsHungupListComplete")
		sameKeys(t, tc.aid, resp, want[0])
		sameValues(t, tc.aid, resp, want[0])
		var got []string
		for _, it := range items {
			sameKeys(t, "ChannelHungup", it, want[1])
			got = append(got, it.get("Channel"))
		}
		if !slices.Equal(got, match) {
			t.Errorf("%s hung up %v, want %v", tc.aid, got, match)
		}
		sameKeys(t, "complete", done, want[len(want)-1])
		if done.get("ListItems") != strconv.Itoa(len(match)) {
			t.Errorf("ListItems %s", done.get("ListItems"))
		}
		hs := hangups(c.ping("p-" + tc.aid))
		for _, n := range match {
			h := hs[n]
			if h == nil || h.get("Cause") != tc.cause || h.get("Cause-txt") != "Call Rejected" || h.get("TechCause") != tc.tech {
				t.Errorf("%s: Hangup of %s: %v", tc.aid, n, h)
			}
		}
		if len(hs) != 2*len(match) { // and their carrier legs
			t.Errorf("%s: %d Hangup events for %d matches", tc.aid, len(hs), len(match))
		}
	}
	for _, n := range s.LiveChannels() {
		if strings.HasPrefix(n, "SIP/200-") || strings.HasPrefix(n, "PJSIP/300-") || strings.HasPrefix(n, "SIP/carrier-") {
			t.Errorf("%s still live (before: %v)", n, before)
		}
	}
	// No match: an empty list.
	c.send("Action: Hangup", `Channel: /^SIP\/nobody-/`, "ActionID: none")
	_, items, done, _ := c.list("none", "ChannelsHungupListComplete")
	if len(items) != 0 || done.get("ListItems") != "0" {
		t.Errorf("no match: %d items", len(items))
	}
}

// TestHangupDropsLaterEvents hangs up mid-stream: the rest of the
// transcript must say nothing more about those calls.
func TestHangupDropsLaterEvents(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Transcript: strings.NewReader(string(readFile(t, attackMixed)))})
	c := dial(t, s)
	c.login("")
	c.ping("drain")
	cut := cutTranscript(t, attackMixed, midAttack)
	n := 0
	for n < len(s.script) && len(cut) > 0 {
		// Stream the messages of the cut by hand, then act, then the rest.
		if !s.script[n].at.After(mustTime(t, midAttack+".999999Z")) {
			s.mu.Lock()
			s.streamOne(&s.script[n])
			s.mu.Unlock()
			n++
			continue
		}
		break
	}
	c.ping("drain2")
	var victims []string
	uids := map[string]bool{}
	c.send("Action: CoreShowChannels", "ActionID: csc")
	_, items, _, _ := c.list("csc", "CoreShowChannelsComplete")
	for _, it := range items {
		if strings.HasPrefix(it.get("Channel"), "SIP/200-") {
			victims = append(victims, it.get("Channel"))
		}
	}
	c.send("Action: Hangup", `Channel: /^SIP\/200-[0-9a-f]{8}$/`, "Cause: 21", "ActionID: h")
	_, hung, _, _ := c.list("h", "ChannelsHungupListComplete")
	for _, h := range c.ping("p") {
		if h.isEvent("Hangup") {
			uids[h.get("Uniqueid")] = true
		}
	}
	if len(hung) != len(victims) || len(uids) != 2*len(victims) {
		t.Fatalf("hung %d of %d, %d Hangup events", len(hung), len(victims), len(uids))
	}
	for ; n < len(s.script); n++ {
		s.mu.Lock()
		s.streamOne(&s.script[n])
		s.mu.Unlock()
	}
	for _, f := range c.ping("end") {
		if uids[f.get("Uniqueid")] || uids[f.get("Linkedid")] || uids[f.get("DestUniqueid")] {
			t.Errorf("event about a hung-up call: %v", f.hdrs[:3])
		}
	}
	for _, n := range s.LiveChannels() {
		t.Errorf("%s live at the end", n)
	}
}

func mustTime(t *testing.T, v string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func TestPJSIPHangupAsDialog22(t *testing.T) {
	t.Parallel()
	s, c := midServer(t, Options{PJSIPConf: PJSIPConf22, Banner: Banner22})
	var target string
	for _, n := range s.LiveChannels() {
		if strings.HasPrefix(n, "PJSIP/300-") {
			target = n
		}
	}
	action, want := dialogFor(t, dialog22, "pjsiphangup-one")
	lines := actionLines(action)
	lines[1] = "Channel: " + target
	c.send(lines...)
	f, _ := c.response("pjsiphangup-one")
	sameKeys(t, "PJSIPHangup", f, want[0])
	sameValues(t, "PJSIPHangup", f, want[0])
	var h *frame
	for h == nil {
		g := c.next()
		if g.isEvent("Hangup") && g.get("Channel") == target {
			h = g
		}
	}
	if h.get("Cause") != "21" || h.get("TechCause") != "403" {
		t.Errorf("PJSIPHangup: %v", h.hdrs)
	}
	waitFor(t, "channel gone", func() bool { return !slices.Contains(s.LiveChannels(), target) })
	c.send("Action: PJSIPHangup", "Channel: SIP/201-00000001", "ActionID: notpjsip")
	if f, _ := c.response("notpjsip"); f.get("Message") != "No such channel" {
		t.Errorf("non-PJSIP channel: %v", f.hdrs)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b := cutTranscript(t, path, "9999")
	return b
}
