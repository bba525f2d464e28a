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

// midAttack is a moment of attack-mixed.ami with 7 calls of 200 and 4 of
// 300 up, like the dialog's.
const midAttack = "2026-11-25T12:47:05"

func TestBanner(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	if c := dial(t, s); c.banner != DefaultBanner {
		t.Errorf("banner %q", c.banner)
	}
	s2 := start(t, Options{Banner: Banner22})
	if c := dial(t, s2); c.banner != "Asterisk Call Manager/11.0.0" {
		t.Errorf("banner %q", c.banner)
	}
}

// TestLoginSameWrite checks the login reply as the dialog, and that
// FullyBooted and SuccessfulAuth arrive in the same read as the reply, as
// they do from Asterisk: a client that reads the login reply with a reader
// of its own and then throws it away loses them.
func TestLoginSameWrite(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(readTimeout))
	banner := make([]byte, len(DefaultBanner)+2)
	if _, err := io.ReadFull(conn, banner); err != nil || string(banner) != DefaultBanner+"\r\n" {
		t.Fatalf("banner %q %v", banner, err)
	}
	action, want := dialogFor(t, dialog20, "login")
	io.WriteString(conn, strings.Join(actionLines(action), "\r\n")+"\r\n\r\n")
	// No pause before the read: the server writes the three messages at
	// once, so the first read that returns holds them all. (A pause would
	// let separate writes pile up and pass as one.)
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(strings.TrimSuffix(string(buf[:n]), "\r\n\r\n"), "\r\n\r\n")
	if len(parts) != 3 {
		t.Fatalf("one read got %d messages, want 3:\n%s", len(parts), buf[:n])
	}
	wantEvents := readDialog(t, dialog20)[2:4]
	all := append([]*dialogMsg{want[0]}, wantEvents...)
	for i, p := range parts {
		f := parseTestFrame(p)
		sameKeys(t, all[i].get("Event")+all[i].get("Response"), f, all[i])
	}
	resp := parseTestFrame(parts[0])
	sameValues(t, "login", resp, want[0])
	auth := parseTestFrame(parts[2])
	sameValues(t, "SuccessfulAuth", auth, wantEvents[1], "EventTV", "SessionID", "LocalAddress", "RemoteAddress", "SessionTV")
	if got, want := auth.get("RemoteAddress"), "IPV4/TCP/127.0.0.1/"+portOf(conn.LocalAddr()); got != want {
		t.Errorf("RemoteAddress %q, want %q", got, want)
	}
	if s.Sessions() != 1 {
		t.Errorf("Sessions() = %d", s.Sessions())
	}
}

func portOf(a net.Addr) string {
	return strings.TrimPrefix(a.String()[strings.LastIndexByte(a.String(), ':'):], ":")
}

func parseTestFrame(text string) *frame {
	f := &frame{raw: []byte(text)}
	for _, l := range strings.Split(text, "\r\n") {
		k, v, _ := strings.Cut(l, ":")
		f.hdrs = append(f.hdrs, [2]string{k, strings.TrimPrefix(v, " ")})
	}
	return f
}

func TestLoginEventsOff(t *testing.T) {
	t.Parallel()
	// rotate-dialog.txt: with Events: off the login reply comes alone.
	s := start(t, Options{})
	c := dial(t, s)
	action, want := dialogFor(t, rotateDialog, "login")
	c.send(actionLines(action)...)
	f := c.next()
	sameKeys(t, "login", f, want[0])
	sameValues(t, "login", f, want[0])
	if got := c.ping("p"); len(got) != 0 {
		t.Errorf("events after an Events: off login: %v", got[0].hdrs)
	}
}

func TestLoginFailure(t *testing.T) {
	t.Parallel()
	s := start(t, Options{LoginFailDelay: 150 * time.Millisecond})
	watcher := dial(t, s)
	watcher.login("security")
	watcher.ping("drain")
	c := dial(t, s)
	action, want := dialogFor(t, loginFailDlg, "login-bad")
	began := time.Now()
	c.send(actionLines(action)...)
	f := c.next()
	if d := time.Since(began); d < 150*time.Millisecond {
		t.Errorf("answered after %v, want >= 150ms", d)
	}
	sameKeys(t, "login failure", f, want[0])
	sameValues(t, "login failure", f, want[0])
	if _, err := c.tryNext(2 * time.Second); err != io.EOF {
		t.Errorf("after a failed login: %v, want EOF (closed)", err)
	}
	// The other session sees the failure as a security event.
	ev := watcher.next()
	if !ev.isEvent("InvalidPassword") || ev.get("Service") != "AMI" || ev.get("AccountID") != "guard" {
		t.Errorf("watcher got %v", ev.hdrs)
	}
	if s.Sessions() != 1 {
		t.Errorf("Sessions() = %d, want 1", s.Sessions())
	}
}

func TestPermissionDenied(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.send("Action: CoreShowChannels", "ActionID: x")
	f := c.next()
	if f.get("Response") != "Error" || f.get("Message") != "Permission denied" || f.get("ActionID") != "x" {
		t.Errorf("got %v", f.hdrs)
	}
	c.login("")
	c.ping("drain")
	c.send("ActionID: noaction")
	if f := c.next(); f.get("Message") != "Missing action in request" {
		t.Errorf("got %v", f.hdrs)
	}
}

// TestSimpleActionsAsDialog sends the dialog's Ping, unknown action and
// Logoff and compares the answers.
func TestSimpleActionsAsDialog(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("call,security,system")
	c.ping("drain") // FullyBooted, SuccessfulAuth

	action, want := dialogFor(t, dialog20, "ping")
	c.send(actionLines(action)...)
	f := c.next()
	sameKeys(t, "ping", f, want[0])
	sameValues(t, "ping", f, want[0], "Timestamp")
	if !regexp.MustCompile(`^\d+\.\d{6}$`).MatchString(f.get("Timestamp")) {
		t.Errorf("Timestamp %q", f.get("Timestamp"))
	}

	action, want = dialogFor(t, dialog20, "unknown-action")
	c.send(actionLines(action)...)
	f = c.next()
	sameKeys(t, "unknown", f, want[0])
	sameValues(t, "unknown", f, want[0])
	// The dialog's RequestBadFormat has no ActionID: find it by order.
	dlg := readDialog(t, dialog20)
	var bad *dialogMsg
	for _, m := range dlg {
		if m.get("Event") == "RequestBadFormat" {
			bad = m
		}
	}
	ev := c.next()
	sameKeys(t, "RequestBadFormat", ev, bad)
	sameValues(t, "RequestBadFormat", ev, bad, "EventTV", "SessionID", "LocalAddress", "RemoteAddress", "SessionTV")

	// No ActionID sent: none echoed.
	c.send("Action: Ping")
	if f := c.next(); f.get("ActionID") != "" || slices.Contains(f.keys(), "ActionID") {
		t.Errorf("ActionID echoed without one sent: %v", f.hdrs)
	}

	action, want = dialogFor(t, dialog20, "logoff")
	c.send(actionLines(action)...)
	f = c.next()
	sameKeys(t, "logoff", f, want[0])
	sameValues(t, "logoff", f, want[0])
	if _, err := c.tryNext(2 * time.Second); err != io.EOF {
		t.Errorf("after Logoff: %v, want EOF", err)
	}
	waitFor(t, "session gone", func() bool { return s.Sessions() == 0 })
}

func TestEventsAction(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("")
	c.ping("drain")
	c.send("Action: Events", "EventMask: off", "ActionID: ev1")
	f := c.next()
	if strings.Join(f.keys(), "|") != "Response|ActionID|Events" || f.get("Events") != "Off" {
		t.Errorf("Events off: %v", f.hdrs)
	}
	s.Inject("Event: Test\r\nPrivilege: call,all\r\n")
	if got := c.ping("p1"); len(got) != 0 {
		t.Errorf("event with events off: %v", got[0].hdrs)
	}
	c.send("Action: Events", "EventMask: call,security", "ActionID: ev2")
	if f := c.next(); f.get("Events") != "On" {
		t.Errorf("Events on: %v", f.hdrs)
	}
	s.Inject("Event: A\nPrivilege: call,all")
	s.Inject("Event: B\r\nPrivilege: system,all\r\n\r\n")
	s.Inject("Event: C\r\nPrivilege: security,all\r\n")
	got := c.ping("p2")
	var names []string
	for _, f := range got {
		names = append(names, f.get("Event"))
	}
	if strings.Join(names, ",") != "A,C" {
		t.Errorf("events with mask call,security: %v, want A,C", names)
	}
}

// scriptFrames returns what the server must send for a transcript: every
// message but the recorder's login, without TimeReceived.
func scriptFrames(t *testing.T, path string) []scriptMsg {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	msgs, err := loadScript(fh)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func TestStreamAttackMixed(t *testing.T) {
	t.Parallel()
	want := scriptFrames(t, attackMixed)
	if len(want) != 4093-3 {
		t.Fatalf("script has %d messages, want 4090 (4093 less the recorder's login)", len(want))
	}
	raw, _ := os.ReadFile(attackMixed)
	s := start(t, Options{Transcript: bytes.NewReader(raw)})
	all := dial(t, s)
	all.login("") // no Events header: everything
	all.ping("drain")
	off := dial(t, s)
	off.login("off")
	sec := dial(t, s)
	sec.login("security")
	sec.ping("drain")
	all.ping("drain2") // sec's login SuccessfulAuth

	s.Play()
	for i, w := range want {
		f := all.next()
		if !bytes.Equal(f.raw, w.raw) {
			t.Fatalf("message %d (seq %d):\n got %q\nwant %q", i, w.seq, f.raw, w.raw)
		}
		if bytes.Contains(f.raw, []byte("TimeReceived")) {
			t.Fatalf("TimeReceived sent")
		}
	}
	<-s.Done()
	if got := off.ping("p"); len(got) != 0 {
		t.Errorf("Events: off session got %d events", len(got))
	}
	wantSec := 0
	for _, w := range want {
		if w.classes == classSecurity {
			wantSec++
		}
	}
	got := sec.ping("p")
	for _, f := range got {
		if f.get("Privilege") != "security,all" {
			t.Errorf("security session got %v", f.hdrs[:2])
		}
	}
	if len(got) != wantSec || wantSec == 0 {
		t.Errorf("security session got %d events, want %d", len(got), wantSec)
	}
	if n := len(s.LiveChannels()); n != 0 {
		t.Errorf("%d channels live at the end: %v", n, s.LiveChannels())
	}
}

func TestStreamPaced(t *testing.T) {
	t.Parallel()
	// pjsip-bruteforce.ami spans about 2 s; at Speed 10 about 0.2 s.
	raw, _ := os.ReadFile(transcripts + "pjsip-bruteforce.ami")
	s := start(t, Options{Transcript: bytes.NewReader(raw), Speed: 10, AutoPlay: true})
	c := dial(t, s)
	began := time.Now()
	c.login("")
	<-s.Done()
	d := time.Since(began)
	want := scriptFrames(t, transcripts+"pjsip-bruteforce.ami")
	span := want[len(want)-1].at.Sub(want[0].at)
	if d < span/10*8/10 {
		t.Errorf("streamed %v of recording in %v at Speed 10", span, d)
	}
	got := c.ping("p")
	if len(got) != len(want)+2 { // + this login's FullyBooted and SuccessfulAuth
		t.Errorf("got %d messages, want %d", len(got), len(want)+2)
	}
}

func TestCoreShowChannelsAsDialog(t *testing.T) {
	t.Parallel()
	s := startWith(t, cutTranscript(t, attackMixed, midAttack), Options{})
	c := dial(t, s)
	c.login("off")
	action, want := dialogFor(t, dialog20, "channels")
	c.send(actionLines(action)...)
	resp, items, done, others := c.list("channels", "CoreShowChannelsComplete")
	if len(others) != 0 {
		t.Errorf("unexpected %v", others[0].hdrs)
	}
	sameKeys(t, "response", resp, want[0])
	sameValues(t, "response", resp, want[0])
	live := s.LiveChannels()
	if len(items) != len(live) || len(items) == 0 {
		t.Fatalf("%d items, %d live", len(items), len(live))
	}
	for i, it := range items {
		sameKeys(t, "CoreShowChannel", it, want[1])
		if it.get("Channel") != live[i] {
			t.Errorf("item %d %s, want %s", i, it.get("Channel"), live[i])
		}
	}
	sameKeys(t, "complete", done, want[len(want)-1])
	if done.get("ListItems") != itoa(len(items)) {
		t.Errorf("ListItems %s", done.get("ListItems"))
	}
	// A leg of 200's call, as the dialog shows one.
	for _, it := range items {
		if strings.HasPrefix(it.get("Channel"), "SIP/200-") {
			w := want[4] // SIP/200-00000129 in the dialog
			sameValues(t, "SIP/200 channel", it, w, "Channel", "Exten", "Uniqueid", "Linkedid", "ApplicationData", "Duration", "BridgeId")
			if !strings.HasPrefix(it.get("ApplicationData"), "SIP/carrier/") || it.get("BridgeId") == "" {
				t.Errorf("SIP/200 channel: %v", it.hdrs)
			}
			break
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
