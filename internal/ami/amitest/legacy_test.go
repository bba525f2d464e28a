package amitest

import (
	"bytes"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// mid11 is a moment of asterisk11-attack-sip.ami with all 22 calls of 200 up
// (each bridged to its carrier leg) and none of 201.
const mid11 = "2026-11-30T01:04:10"

// midServer11 streams the Asterisk 11 recording up to mid11 and logs a client
// in with the dialog's event mask.
func midServer11(t *testing.T, v Version) (*Server, *client) {
	t.Helper()
	s := startWith(t, cutTranscript(t, attack11, mid11), Options{Version: v})
	c := dial(t, s)
	c.login("call,security,system")
	c.ping("drain")
	return s, c
}

// dialogEvents returns the events of the dialog that follow the reply with
// the ActionID (up to the next message from the client).
func dialogEvents(t *testing.T, path, aid string) []*dialogMsg {
	t.Helper()
	msgs := readDialog(t, path)
	var out []*dialogMsg
	after := false
	for _, m := range msgs {
		switch {
		case m.fromClient:
			if after {
				return out
			}
		case m.get("ActionID") == aid:
			after = true
		case after && m.get("Event") != "":
			out = append(out, m)
		}
	}
	return out
}

func TestBanners11And1_8(t *testing.T) {
	t.Parallel()
	for v, want := range map[Version]string{Asterisk11: "Asterisk Call Manager/1.3", Asterisk1_8: "Asterisk Call Manager/1.1"} {
		if c := dial(t, start(t, Options{Version: v})); c.banner != want {
			t.Errorf("%s: banner %q, want %q", v, c.banner, want)
		}
	}
	if _, err := Start(Options{Version: "13"}); err == nil {
		t.Error("an unknown version was accepted")
	}
}

// TestLogin11AsDialog: the reply and FullyBooted (only Status) in one write,
// and no SuccessfulAuth although the mask asks for security.
func TestLogin11AsDialog(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Version: Asterisk11})
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(readTimeout))
	banner := make([]byte, len(Banner11)+2)
	if _, err := io.ReadFull(conn, banner); err != nil {
		t.Fatal(err)
	}
	action, want := dialogFor(t, dialog11, "login")
	io.WriteString(conn, strings.Join(actionLines(action), "\r\n")+"\r\n\r\n")
	dlg := readDialog(t, dialog11)
	booted := dlg[2] // after the Login and its reply
	if booted.get("Event") != "FullyBooted" {
		t.Fatalf("dialog: %v", booted.hdrs)
	}
	want2 := "Response: Success\r\nActionID: login\r\nMessage: Authentication accepted\r\n\r\n" +
		"Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n"
	got := make([]byte, len(want2))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != want2 {
		t.Fatalf("login write %q (%v), want %q", got, err, want2)
	}
	sameKeys(t, "login", parseTestFrame(strings.Split(want2, "\r\n\r\n")[0]), want[0])
	sameKeys(t, "FullyBooted", parseTestFrame(strings.Split(want2, "\r\n\r\n")[1]), booted)
	// The next thing sent is the answer to a Ping: no security event came.
	io.WriteString(conn, "Action: Ping\r\nActionID: p\r\n\r\n")
	next := make([]byte, len("Response: Success\r\nActionID: p\r\n"))
	if _, err := io.ReadFull(conn, next); err != nil || string(next) != "Response: Success\r\nActionID: p\r\n" {
		t.Errorf("after the login: %q (%v), want the Pong", next, err)
	}
}

func TestLoginFailure11(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Version: Asterisk11, LoginFailDelay: 50 * time.Millisecond})
	watcher := dial(t, s)
	watcher.login("")
	watcher.ping("drain")
	c := dial(t, s)
	action, want := dialogFor(t, loginFail11, "login-bad")
	c.send(actionLines(action)...)
	f := c.next()
	sameKeys(t, "login failure", f, want[0])
	sameValues(t, "login failure", f, want[0])
	if _, err := c.tryNext(2 * time.Second); err != io.EOF {
		t.Errorf("after a failed login: %v, want EOF (closed)", err)
	}
	if got := watcher.ping("p"); len(got) != 0 {
		t.Errorf("the failed login raised %v: Asterisk 11 sends no security events", got[0].hdrs)
	}
}

func TestSimpleActions11AsDialog(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Version: Asterisk11})
	c := dial(t, s)
	c.login("call,security,system")
	c.ping("drain")
	for _, aid := range []string{"ping", "unknown-action", "getconfig-sip", "updateconfig-missing-category"} {
		action, want := dialogFor(t, dialog11, aid)
		c.send(actionLines(action)...)
		f := c.next()
		sameKeys(t, aid, f, want[0])
		sameValues(t, aid, f, want[0], "Timestamp")
	}
	// No RequestBadFormat after the unknown action, and no PJSIP.
	c.send("Action: PJSIPShowContacts", "ActionID: pj")
	if f, others := c.response("pj"); len(others) != 0 || !strings.HasPrefix(f.get("Message"), "Invalid/unknown command: PJSIPShowContacts.") {
		t.Errorf("PJSIP action on 11: %v (before it %d events)", f.hdrs, len(others))
	}
	c.send("Action: GetConfig", "Filename: pjsip.conf", "ActionID: pjconf")
	if f, _ := c.response("pjconf"); f.get("Message") != "Config file not found" {
		t.Errorf("pjsip.conf on 11: %v", f.hdrs)
	}
	action, want := dialogFor(t, dialog11, "logoff")
	c.send(actionLines(action)...)
	f := c.next()
	sameKeys(t, "logoff", f, want[0])
	sameValues(t, "logoff", f, want[0])
}

// TestStream11 streams the whole Asterisk 11 recording as recorded.
func TestStream11(t *testing.T) {
	t.Parallel()
	want := scriptFrames(t, attack11)
	if len(want) != 1616-2 {
		t.Fatalf("script has %d messages, want 1614 (1616 less the recorder's login and FullyBooted)", len(want))
	}
	raw, _ := os.ReadFile(attack11)
	s := start(t, Options{Version: Asterisk11, Transcript: bytes.NewReader(raw)})
	c := dial(t, s)
	c.login("")
	c.ping("drain")
	s.Play()
	for i, w := range want {
		if f := c.next(); !bytes.Equal(f.raw, w.raw) {
			t.Fatalf("message %d (seq %d):\n got %q\nwant %q", i, w.seq, f.raw, w.raw)
		}
	}
	<-s.Done()
	if n := len(s.LiveChannels()); n != 0 {
		t.Errorf("%d channels live at the end: %v", n, s.LiveChannels())
	}
}

func TestCoreShowChannels11AsDialog(t *testing.T) {
	t.Parallel()
	s, c := midServer11(t, Asterisk11)
	action, want := dialogFor(t, dialog11, "channels")
	c.send(actionLines(action)...)
	resp, items, done, others := c.list("channels", "CoreShowChannelsComplete")
	if len(others) != 0 {
		t.Errorf("unexpected %v", others[0].hdrs)
	}
	sameKeys(t, "response", resp, want[0])
	sameValues(t, "response", resp, want[0])
	live := s.LiveChannels()
	if len(items) != 44 || len(items) != len(live) {
		t.Fatalf("%d items, %d live, want 44 (22 calls of 200 and their carrier legs)", len(items), len(live))
	}
	byName := map[string]*frame{}
	for i, it := range items {
		sameKeys(t, "CoreShowChannel", it, want[1])
		if it.get("Channel") != live[i] {
			t.Errorf("item %d %s, want %s", i, it.get("Channel"), live[i])
		}
		byName[it.get("Channel")] = it
	}
	sameKeys(t, "complete", done, want[len(want)-1])
	if done.get("ListItems") != "44" || done.keys()[len(done.keys())-1] != "ActionID" {
		t.Errorf("complete %v", done.hdrs)
	}
	// A call of 200 and its carrier leg, as the dialog shows one (its
	// channels are other ones: only the per-call values differ).
	perCall := []string{"Channel", "UniqueID", "Extension", "ApplicationData", "CallerIDnum", "Duration", "BridgedChannel", "BridgedUniqueID"}
	var w200, wLeg *dialogMsg
	for _, w := range want {
		switch w.get("Channel") {
		case "SIP/200-000000e0":
			w200 = w
		case "SIP/carrier-000000e1":
			wLeg = w
		}
	}
	checked := 0
	for _, it := range items {
		if !strings.HasPrefix(it.get("Channel"), "SIP/200-") {
			continue
		}
		leg := byName[it.get("BridgedChannel")]
		if leg == nil || leg.get("BridgedUniqueID") != it.get("UniqueID") || !strings.HasPrefix(leg.get("Channel"), "SIP/carrier-") {
			t.Fatalf("%s is not bridged to a carrier leg: %v", it.get("Channel"), it.hdrs)
		}
		sameValues(t, "SIP/200 channel", it, w200, perCall...)
		sameValues(t, "carrier leg", leg, wLeg, perCall...)
		if num := it.get("Extension"); leg.get("CallerIDnum") != num || it.get("ApplicationData") != "SIP/carrier/"+num+",60" {
			t.Errorf("call to %s: %v / %v", num, it.hdrs, leg.hdrs)
		}
		checked++
	}
	if checked != 22 {
		t.Errorf("%d calls of 200 checked", checked)
	}
}

func TestSIPpeers11AsDialog(t *testing.T) {
	t.Parallel()
	_, c := midServer11(t, Asterisk11)
	action, want := dialogFor(t, dialog11, "sip-peers")
	c.send(actionLines(action)...)
	resp, items, done, _ := c.list("sip-peers", "PeerlistComplete")
	sameKeys(t, "response", resp, want[0])
	sameValues(t, "response", resp, want[0])
	if len(items) != 3 {
		t.Fatalf("%d peers", len(items))
	}
	// 200 and 201 registered from the addresses of the dialog's session.
	for i, it := range items {
		sameKeys(t, "PeerEntry", it, want[1+i])
		sameValues(t, "PeerEntry", it, want[1+i])
	}
	sameKeys(t, "complete", done, want[4])
	sameValues(t, "complete", done, want[4])
}

func TestSIPshowpeer11AsDialog(t *testing.T) {
	t.Parallel()
	_, c := midServer11(t, Asterisk11)
	action, want := dialogFor(t, dialog11, "sip-peer")
	c.send(actionLines(action)...)
	f, _ := c.response("sip-peer")
	sameKeys(t, "SIPshowpeer 200", f, want[0])
	sameValues(t, "SIPshowpeer 200", f, want[0], "RegExpire")
	if !regexp.MustCompile(`^\d+ seconds$`).MatchString(f.get("RegExpire")) {
		t.Errorf("RegExpire %q", f.get("RegExpire"))
	}
	action, want = dialogFor(t, dialog11, "sip-peer-missing")
	c.send(actionLines(action)...)
	f, _ = c.response("sip-peer-missing")
	sameKeys(t, "SIPshowpeer missing", f, want[0])
	sameValues(t, "SIPshowpeer missing", f, want[0])
	if !want[0].extraBlank || !strings.HasSuffix(string(f.raw), "\r\n\r\n") {
		t.Errorf("missing peer: extra empty line not recorded/sent")
	}
}

func TestGetvar11AsDialog(t *testing.T) {
	t.Parallel()
	s, c := midServer11(t, Asterisk11)
	live := s.LiveChannels()
	ch := live[slices.IndexFunc(live, func(n string) bool { return strings.HasPrefix(n, "SIP/200-") })]
	action, want := dialogFor(t, dialog11, "getvar-sip")
	lines := actionLines(action)
	lines[1] = "Channel: " + ch // the dialog's channel is another one
	c.send(lines...)
	f, _ := c.response("getvar-sip")
	sameKeys(t, "getvar", f, want[0])
	sameValues(t, "getvar", f, want[0])
}

// checkEvents11 compares what a hangup emitted with the dialog's events:
// the same events with the same headers, values other than the per-call
// ones equal.
func checkEvents11(t *testing.T, what string, got []*frame, want []*dialogMsg) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d events, dialog %d", what, len(got), len(want))
	}
	// Asterisk interleaves the channels of a regex hangup: compare the
	// events of each kind in order.
	key := func(name, ch, sub string) string {
		return name + "|" + sub + "|" + regexp.MustCompile(`-[0-9a-f]{8}$`).ReplaceAllString(ch, "")
	}
	wantBy := map[string][]*dialogMsg{}
	for _, w := range want {
		k := key(w.get("Event"), w.get("Channel")+w.get("Channel1"), w.get("SubEvent"))
		wantBy[k] = append(wantBy[k], w)
	}
	for _, g := range got {
		k := key(g.get("Event"), g.get("Channel")+g.get("Channel1"), g.get("SubEvent"))
		if len(wantBy[k]) == 0 {
			t.Errorf("%s: unexpected %v", what, g.hdrs)
			continue
		}
		w := wantBy[k][0]
		wantBy[k] = wantBy[k][1:]
		sameKeys(t, what+" "+k, g, w)
		sameValues(t, what+" "+k, g, w, "Channel", "Uniqueid", "UniqueID", "Channel1", "Channel2", "Uniqueid1", "Uniqueid2",
			"CallerIDNum", "CallerID2")
	}
}

func TestHangup11AsDialog(t *testing.T) {
	t.Parallel()
	s, c := midServer11(t, Asterisk11)
	live := s.LiveChannels()
	var of200 []string
	for _, n := range live {
		if strings.HasPrefix(n, "SIP/200-") {
			of200 = append(of200, n)
		}
	}
	// By name, Cause 21: Bridge Unlink, the carrier leg's Hangup, Dial End,
	// SoftHangupRequest and the Hangup with cause 21, as recorded.
	action, want := dialogFor(t, dialog11, "hangup-one")
	lines := actionLines(action)
	lines[1] = "Channel: " + of200[0]
	c.send(lines...)
	f, _ := c.response("hangup-one")
	sameKeys(t, "hangup-one", f, want[0])
	sameValues(t, "hangup-one", f, want[0])
	evs := c.ping("after-one")
	checkEvents11(t, "hangup-one", evs, dialogEvents(t, dialog11, "hangup-one"))
	if n := len(s.LiveChannels()); n != len(live)-2 {
		t.Errorf("%d live after hanging up one call, want %d", n, len(live)-2)
	}

	// By regex: the list, ActionID last in its complete event, and every
	// call of 200 ended with its leg.
	action, want = dialogFor(t, dialog11, "hangup-regex-sip")
	c.send(actionLines(action)...)
	resp, items, done, _ := c.list("hangup-regex-sip", "ChannelsHungupListComplete")
	sameKeys(t, "regex", resp, want[0])
	sameValues(t, "regex", resp, want[0])
	var got []string
	for _, it := range items {
		sameKeys(t, "ChannelHungup", it, want[1])
		got = append(got, it.get("Channel"))
	}
	if !slices.Equal(got, of200[1:]) {
		t.Errorf("hung up %v, want %v", got, of200[1:])
	}
	sameKeys(t, "complete", done, want[len(want)-1])
	if done.get("ListItems") != strconv.Itoa(len(of200)-1) {
		t.Errorf("ListItems %s", done.get("ListItems"))
	}
	evs = c.ping("after-regex")
	var hangups int
	for _, e := range evs {
		if e.isEvent("Hangup") {
			hangups++
			if strings.HasPrefix(e.get("Channel"), "SIP/200-") != (e.get("Cause") == "21") {
				t.Errorf("Hangup %v", e.hdrs)
			}
		}
	}
	if hangups != 2*(len(of200)-1) || len(s.LiveChannels()) != 0 {
		t.Errorf("%d Hangup events, live %v", hangups, s.LiveChannels())
	}

	action, want = dialogFor(t, dialog11, "hangup-missing")
	c.send(actionLines(action)...)
	f, _ = c.response("hangup-missing")
	sameKeys(t, "hangup-missing", f, want[0])
	sameValues(t, "hangup-missing", f, want[0])
}

// TestHangupDropsLaterEvents11: after a hangup the rest of the recording says
// nothing more about the call, its carrier leg included (no Linkedid ties
// them in 11's events: the Dial Begin does).
func TestHangupDropsLaterEvents11(t *testing.T) {
	t.Parallel()
	raw, _ := os.ReadFile(attack11)
	s := start(t, Options{Version: Asterisk11, Transcript: bytes.NewReader(raw)})
	c := dial(t, s)
	c.login("")
	c.ping("drain")
	n := 0
	stop := mustTime(t, mid11+".000000Z")
	for ; n < len(s.script) && s.script[n].at.Before(stop); n++ {
		s.mu.Lock()
		s.streamOne(&s.script[n])
		s.mu.Unlock()
	}
	c.send("Action: Hangup", `Channel: /^SIP\/200-[0-9a-f]{8}$/`, "Cause: 21", "ActionID: h")
	_, hung, _, _ := c.list("h", "ChannelsHungupListComplete")
	uids := map[string]bool{}
	for _, f := range c.ping("p") {
		if f.isEvent("Hangup") {
			uids[f.get("Uniqueid")] = true
		}
	}
	if len(hung) != 22 || len(uids) != 44 {
		t.Fatalf("hung %d, %d Hangup events", len(hung), len(uids))
	}
	for ; n < len(s.script); n++ {
		s.mu.Lock()
		s.streamOne(&s.script[n])
		s.mu.Unlock()
	}
	for _, f := range c.ping("end") {
		for _, k := range []string{"Uniqueid", "DestUniqueID", "Uniqueid1", "Uniqueid2"} {
			if uids[f.get(k)] {
				t.Errorf("event about a hung-up call: %v", f.hdrs[:3])
			}
		}
	}
	if l := s.LiveChannels(); len(l) != 0 {
		t.Errorf("live at the end: %v", l)
	}
}

// TestHangup1_8: Asterisk 1.8 has no /regex/: the value is a channel name
// or uniqueid, so a regex finds nothing; a name works as on 11.
func TestHangup1_8(t *testing.T) {
	t.Parallel()
	s, c := midServer11(t, Asterisk1_8)
	if c.banner != Banner1_8 {
		t.Errorf("banner %q", c.banner)
	}
	before := s.LiveChannels()
	c.send("Action: Hangup", `Channel: /^SIP\/200-.*$/`, "Cause: 21", "ActionID: re")
	if f, _ := c.response("re"); f.get("Response") != "Error" || f.get("Message") != "No such channel" {
		t.Errorf("regex on 1.8: %v", f.hdrs)
	}
	if after := s.LiveChannels(); !slices.Equal(after, before) {
		t.Errorf("a regex hung up channels on 1.8")
	}
	c.send("Action: Hangup", "Channel: "+before[0], "Cause: 21", "ActionID: one")
	if f, _ := c.response("one"); f.get("Message") != "Channel Hungup" {
		t.Errorf("by name on 1.8: %v", f.hdrs)
	}
	if hs := hangups(c.ping("p")); hs[before[0]] == nil || hs[before[0]].get("Cause") != "21" {
		t.Errorf("no Hangup 21 of %s", before[0])
	}
}

func TestUpdateConfig11AsDialog(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Version: Asterisk11})
	c := dial(t, s)
	c.login("call,security,system")
	c.ping("drain")
	action, want := dialogFor(t, dialog11, "updateconfig-sip")
	c.send(actionLines(action)...)
	f := c.next()
	sameKeys(t, "updateconfig-sip", f, want[0])
	sameValues(t, "updateconfig-sip", f, want[0])
	ev := c.next()
	reload := dialogEvents(t, dialog11, "updateconfig-sip")
	if len(reload) != 1 {
		t.Fatalf("dialog: %d events after UpdateConfig", len(reload))
	}
	sameKeys(t, "ChannelReload", ev, reload[0])
	sameValues(t, "ChannelReload", ev, reload[0])
	if got := strings.Join(section(s.Conf("sip.conf"), "200", 0), "|"); !strings.Contains(got, "secret = Qm7xT2vLp9RwZ4nK8sYd") {
		t.Errorf("[200] after update: %s", got)
	}
	// The reload took: the rotated peer is refused from now on.
	if !s.pbx.sipRotated("200") {
		t.Error("the new secret was not loaded")
	}
}

func TestCommand11AsDialog(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Version: Asterisk11})
	c := dial(t, s)
	c.login("call,security,system")
	c.ping("drain")
	action, _ := dialogFor(t, dialog11, "cmd-sip-reload")
	c.send(actionLines(action)...)
	f := c.next()
	// The dialog's lines: Response: Follows, Privilege, ActionID, then the
	// marker, which is not a header.
	if want := "Response: Follows\r\nPrivilege: Command\r\nActionID: cmd-sip-reload\r\n--END COMMAND--\r\n\r\n"; string(f.raw) != want {
		t.Errorf("sip reload: %q, want %q", f.raw, want)
	}
	ev := c.next()
	reload := dialogEvents(t, dialog11, "cmd-sip-reload")
	sameKeys(t, "ChannelReload", ev, reload[0])
	sameValues(t, "ChannelReload", ev, reload[0])
	c.send("Action: Command", "Command: pjsip reload", "ActionID: bad")
	f = c.next()
	if f.get("Response") != "Follows" || !strings.HasPrefix(f.get("Output"), "No such command 'pjsip reload'") {
		t.Errorf("unknown command: %q", f.raw)
	}
}
