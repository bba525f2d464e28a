package amitest

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDropSessions(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	a, b := dial(t, s), dial(t, s)
	a.login("")
	b.login("off")
	if s.Sessions() != 2 {
		t.Fatalf("Sessions() = %d", s.Sessions())
	}
	s.DropSessions()
	for _, c := range []*client{a, b} {
		for {
			_, err := c.tryNext(2 * time.Second)
			if err != nil {
				if err != io.EOF && !strings.Contains(err.Error(), "reset") {
					t.Errorf("after DropSessions: %v", err)
				}
				break
			}
		}
	}
	waitFor(t, "no sessions", func() bool { return s.Sessions() == 0 })
	c := dial(t, s) // the client reconnects
	c.login("")
	if s.Sessions() != 1 {
		t.Errorf("Sessions() = %d after reconnect", s.Sessions())
	}
}

func TestStall(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("off")
	s.Stall(true)
	c.send("Action: Ping", "ActionID: stalled")
	s.Inject("Event: X\r\nPrivilege: call,all\r\n")
	if f, err := c.tryNext(300 * time.Millisecond); err == nil {
		t.Fatalf("answer while stalled: %v", f.hdrs)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("while stalled: %v", err)
	}
	// A new connection does not even get its banner.
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 10)); err == nil {
		t.Errorf("banner while stalled (%d bytes)", n)
	}
	s.Stall(false)
	// The stalled connection had to be re-armed: a timed-out read is not
	// reusable with ami.Reader, so read raw bytes.
	conn.SetReadDeadline(time.Now().Add(readTimeout))
	buf := make([]byte, len(DefaultBanner))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != DefaultBanner {
		t.Errorf("banner after stall: %q %v", buf, err)
	}
	c2 := dial(t, s)
	c2.login("off")
	c2.send("Action: Ping", "ActionID: after")
	if f, _ := c2.response("after"); f.get("Ping") != "Pong" {
		t.Errorf("after stall: %v", f.hdrs)
	}
	// The stalled Ping was answered once the stall ended.
	waitFor(t, "stalled ping answered", func() bool {
		n := 0
		for _, a := range s.Actions() {
			if a.Name == "Ping" {
				n++
			}
		}
		return n == 2
	})
}

func TestStallPausesStream(t *testing.T) {
	t.Parallel()
	raw, _ := os.ReadFile(transcripts + "pjsip-bruteforce.ami")
	// The recording spans 1.9 s: 0.24 s at 8 times its pace.
	s := start(t, Options{Transcript: bytes.NewReader(raw), Speed: 8})
	s.Stall(true)
	s.Play()
	// The scenario: a stall longer than the whole recording streamed
	// would take, during which nothing may be streamed.
	time.Sleep(500 * time.Millisecond)
	select {
	case <-s.Done():
		t.Fatal("streamed while stalled")
	default:
	}
	s.Stall(false)
	select {
	case <-s.Done():
	case <-time.After(readTimeout):
		t.Fatal("stream did not resume")
	}
}

func TestFailAction(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("off")
	s.FailAction("hangup", "Boom", 2)
	for i := 0; i < 2; i++ {
		c.send("Action: Hangup", "Channel: SIP/200-00000001", "ActionID: h")
		if f := c.next(); strings.Join(f.keys(), "|") != "Response|ActionID|Message" || f.get("Response") != "Error" || f.get("Message") != "Boom" {
			t.Errorf("failed action %d: %v", i, f.hdrs)
		}
	}
	c.send("Action: Hangup", "Channel: SIP/200-00000001", "ActionID: h")
	if f := c.next(); f.get("Message") != "No such channel" {
		t.Errorf("third: %v", f.hdrs)
	}
	acts := s.Actions()
	if len(acts) != 4 || acts[0].Name != "Login" || acts[3].Name != "Hangup" || acts[3].Session != 1 ||
		!slices.Equal(acts[3].Headers[1][:], []string{"Channel", "SIP/200-00000001"}) {
		t.Errorf("Actions() = %+v", acts)
	}
}

// TestSlowReaderDropped: a client that stops reading is dropped after the
// write timeout, and nothing else blocks.
func TestSlowReaderDropped(t *testing.T) {
	t.Parallel()
	s := start(t, Options{WriteTimeout: 50 * time.Millisecond})
	slow := dial(t, s)
	slow.login("")
	fast := dial(t, s)
	fast.login("off")
	big := "Event: Big\r\nPrivilege: call,all\r\nData: " + strings.Repeat("x", 60<<10) + "\r\n"
	for i := 0; i < 400 && s.Sessions() == 2; i++ { // up to 24 MB
		s.Inject(big)
		time.Sleep(time.Millisecond) // paces the flood: the slow session's buffers fill, not the server's queue at once
	}
	waitFor(t, "slow session dropped", func() bool { return s.Sessions() == 1 })
	fast.send("Action: Ping", "ActionID: p")
	if f, _ := fast.response("p"); f.get("Ping") != "Pong" {
		t.Errorf("fast session: %v", f.hdrs)
	}
}

func TestInjectTracksChannels(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("call")
	s.Inject("Event: Newchannel\nPrivilege: call,all\nChannel: SIP/200-000000aa\nChannelState: 4\nChannelStateDesc: Ring\n" +
		"CallerIDNum: 200\nCallerIDName: Alice\nContext: from-internal\nExten: 0044123\nUniqueid: 1.1\nLinkedid: 1.1")
	if got := s.LiveChannels(); !slices.Equal(got, []string{"SIP/200-000000aa"}) {
		t.Fatalf("live %v", got)
	}
	if f := c.next(); !f.isEvent("Newchannel") || !strings.HasSuffix(string(f.raw), "Linkedid: 1.1\r\n\r\n") {
		t.Errorf("injected: %q", f.raw)
	}
	c.send("Action: Hangup", "Channel: 1.1", "Cause: 21", "ActionID: h")
	c.response("h")
	evs := c.ping("p")
	if len(evs) != 2 || !evs[0].isEvent("SoftHangupRequest") || !evs[1].isEvent("Hangup") || evs[1].get("Cause") != "21" {
		t.Errorf("hangup of an injected channel: %v", evs)
	}
}

// TestCloseLeavesNoGoroutines closes a busy server: sessions reading and
// not reading, a paced stream, a pending PJSIPHangup, a stall, a failed
// login waiting out its delay.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	raw, _ := os.ReadFile(attackMixed)
	s, err := Start(Options{Transcript: bytes.NewReader(raw), Speed: 1, AutoPlay: true, LoginFailDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for i := 0; i < 3; i++ {
		conn, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	s.Inject("Event: Newchannel\r\nPrivilege: call,all\r\nChannel: PJSIP/300-000000aa\r\nUniqueid: 1.1\r\nLinkedid: 1.1\r\n")
	io.WriteString(conns[0], "Action: Login\r\nUsername: guard\r\nSecret: guardpass\r\n\r\n")
	io.WriteString(conns[1], "Action: Login\r\nUsername: guard\r\nSecret: wrong\r\n\r\n")
	io.WriteString(conns[2], "Action: Login\r\nUsername: guard\r\nSecret: guardpass\r\n\r\nAction: PJSIPHangup\r\nChannel: /.*/\r\n\r\n")
	waitFor(t, "actions", func() bool { return len(s.Actions()) == 4 })
	s.Stall(true) // the PJSIPHangup is likely still pending
	// The scenario: give the stream time to park in the stall (nothing
	// tells when it has); Close must end it in whatever state it is.
	time.Sleep(100 * time.Millisecond)
	s.Close()
	for _, c := range conns {
		c.Close()
	}
	if n := goroutines(before); n > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
	if err := s.Close(); err != nil { // twice is fine
		t.Error(err)
	}
}

// The Challenge / MD5 login as manager.c answers it: the challenge is a
// decimal number; the Key is the lower-case hex md5 of challenge and
// secret, compared exactly; a wrong Key raises ChallengeResponseFailed
// (AccountID empty: Asterisk has not taken the user name yet), an MD5 login
// without a challenge fails without any event.
func TestChallengeLogin(t *testing.T) {
	t.Parallel()
	s := start(t, Options{LoginFailDelay: time.Millisecond})
	watcher := dial(t, s)
	watcher.login("security")

	c := dial(t, s)
	c.send("Action: Challenge", "AuthType: MD5", "ActionID: ch")
	f := c.next()
	nonce := f.get("Challenge")
	if f.get("Response") != "Success" || f.get("ActionID") != "ch" || strings.Trim(nonce, "0123456789") != "" || nonce == "" {
		t.Fatalf("challenge: %v", f.hdrs)
	}
	sum := md5.Sum([]byte(nonce + "guardpass"))
	key := hex.EncodeToString(sum[:])
	c.send("Action: Login", "AuthType: MD5", "Username: guard", "Key: "+key, "Events: off", "ActionID: l")
	if f := c.next(); f.get("Message") != "Authentication accepted" {
		t.Errorf("md5 login: %v", f.hdrs)
	}
	watcher.ping("drain") // the logins' SuccessfulAuth events

	// The same key in upper case is refused, with its security event.
	bad := dial(t, s)
	bad.send("Action: Challenge", "AuthType: MD5", "ActionID: ch")
	nonce = bad.next().get("Challenge")
	sum = md5.Sum([]byte(nonce + "guardpass"))
	bad.send("Action: Login", "AuthType: MD5", "Username: guard", "Key: "+strings.ToUpper(hex.EncodeToString(sum[:])), "ActionID: l")
	if f := bad.next(); f.get("Message") != "Authentication failed" {
		t.Errorf("upper-case key: %v", f.hdrs)
	}
	evs := watcher.ping("after-bad")
	if len(evs) != 1 {
		t.Fatalf("%d events after the wrong key, want its ChallengeResponseFailed", len(evs))
	}
	ev := evs[0]
	if !ev.isEvent("ChallengeResponseFailed") || ev.get("AccountID") != "" || ev.get("Challenge") != nonce ||
		ev.get("ExpectedResponse") != hex.EncodeToString(sum[:]) {
		t.Errorf("security event of the wrong key: %v", ev.hdrs)
	}

	// No challenge asked: refused, and no event.
	none := dial(t, s)
	none.send("Action: Login", "AuthType: MD5", "Username: guard", "Key: "+key, "ActionID: l")
	if f := none.next(); f.get("Message") != "Authentication failed" {
		t.Errorf("md5 login without a challenge: %v", f.hdrs)
	}
	if skipped := watcher.ping("p"); len(skipped) != 0 {
		t.Errorf("events after the login without a challenge: %v", skipped[0].hdrs)
	}
}
