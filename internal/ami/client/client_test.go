package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/ami/client"
)

func newchannel(channel, uid, callerName string) string {
	return strings.Join([]string{"Event: Newchannel", "Privilege: call,all", "Channel: " + channel, "ChannelState: 0",
		"ChannelStateDesc: Down", "CallerIDNum: 200", "CallerIDName: " + callerName, "ConnectedLineNum: <unknown>",
		"ConnectedLineName: <unknown>", "Language: en", "AccountCode: ", "Context: from-internal",
		"Exten: 0011442079460000", "Priority: 1", "Uniqueid: " + uid, "Linkedid: " + uid}, "\r\n") + "\r\n"
}

// A plain login: the Login carries the secret, the event mask, and nothing
// but the headers asked for; the login's FullyBooted, in the same write as
// the reply, reaches the handler.
func TestLoginPlain(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	var evs events
	c, logs := newClient(t, srv.Addr(), client.Options{Name: "events", Auth: client.AuthPlain, Events: "call,security,system", Handler: evs.handle})
	waitFor(t, "the login", c.Connected)
	waitFor(t, "FullyBooted", func() bool { return slices.Contains(evs.names(), "FullyBooted") })
	var login amitest.Action
	for _, a := range srv.Actions() {
		if a.Name == "Login" {
			login = a
		}
	}
	want := [][2]string{{"Action", "Login"}, {"ActionID", "events-Login"}, {"Username", "guard"}, {"Secret", "guardpass"}, {"Events", "call,security,system"}}
	if !slices.Equal(login.Headers, want) {
		t.Errorf("Login %q, want %q", login.Headers, want)
	}
	if slices.Contains(actionNames(srv), "Challenge") {
		t.Error("a plain login asked a challenge")
	}
	st := c.Status()
	if st.State != client.StateUp || st.Banner != amitest.DefaultBanner || st.Connects != 1 || st.Problem != client.ProblemNone {
		t.Errorf("status %+v", st)
	}
	if maj, min := c.Version(); maj != 9 || min != 0 {
		t.Errorf("Version() = %d.%d, want 9.0", maj, min)
	}
	if l := logs.lines("AMI session logged in"); len(l) != 1 || l[0]["level"] != "info" || l[0]["banner"] != amitest.DefaultBanner {
		t.Errorf("login lines %v", l)
	}
	if strings.Contains(logs.String(), "guardpass") {
		t.Error("the secret is in the log")
	}
}

// The MD5 login: Challenge, then Login with the MD5 of the challenge and
// the secret. The secret is never written to the connection.
func TestLoginMD5SecretNeverOnWire(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	var wire wireRecorder
	c, _ := newClient(t, srv.Addr(), client.Options{Name: "events", Events: "off", Dial: wire.dial})
	waitFor(t, "the login", c.Connected)
	if got := actionNames(srv); len(got) < 2 || got[0] != "Challenge" || got[1] != "Login" {
		t.Errorf("actions %q, want Challenge then Login", got)
	}
	login := srv.Actions()[1]
	if v, _ := header(login, "AuthType"); v != "MD5" {
		t.Errorf("Login AuthType %q", v)
	}
	if k, _ := header(login, "Key"); len(k) != 32 || strings.ToLower(k) != k {
		t.Errorf("Login Key %q, want 32 lower-case hex digits", k)
	}
	if _, ok := header(login, "Secret"); ok {
		t.Error("the MD5 login carries a Secret header")
	}
	if strings.Contains(wire.String(), amitest.DefaultSecret) || !strings.Contains(wire.String(), "Action: Challenge\r\n") {
		t.Errorf("the wire: %q", wire.String())
	}
	// The session works.
	if resp, err := c.Do(ctx(t), ami.Action{Name: "Ping"}); err != nil || resp.Get("Ping") != "Pong" {
		t.Errorf("Ping: %v, %v", resp, err)
	}
}

// Empty credentials are refused, as are control characters in them.
func TestNewRefusesBadCredentials(t *testing.T) {
	for _, o := range []client.Options{
		{Address: "127.0.0.1:5038", Username: "guard"},
		{Address: "127.0.0.1:5038", Secret: "x"},
		{Address: "127.0.0.1:5038", Username: "guard", Secret: "a\r\nAction: Originate"},
		{Address: "127.0.0.1:5038", Username: "guard", Secret: "x", Events: "call\r\nAction: Originate"},
		{Address: "127.0.0.1", Username: "guard", Secret: "x"},
		{Address: "127.0.0.1:5038", Username: "guard", Secret: "x", Auth: "sha1"},
	} {
		if c, err := client.New(o); err == nil {
			c.Close()
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

// A value with CR, LF or another control character is refused before
// anything is written.
func TestActionValuesCannotCarryControlCharacters(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	c, _ := newClient(t, srv.Addr(), client.Options{Events: "off"})
	waitFor(t, "the login", c.Connected)
	before := len(srv.Actions())
	for _, a := range []ami.Action{
		{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: "SIP/200-00000001\r\nAction: Originate"}}},
		{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: "SIP/200\n"}}},
		{Name: "Hangup", Headers: []ami.Header{{Key: "Chan\rnel", Value: "x"}}},
		{Name: "Hang\nup"},
		{Name: "Getvar", Headers: []ami.Header{{Key: "Variable", Value: "a\x00b"}}},
	} {
		if _, err := c.Do(ctx(t), a); !errors.Is(err, ami.ErrUnsafe) {
			t.Errorf("%+v: %v, want ErrUnsafe", a, err)
		}
		if _, _, err := c.List(ctx(t), a); !errors.Is(err, ami.ErrUnsafe) {
			t.Errorf("List %+v: %v, want ErrUnsafe", a, err)
		}
	}
	if _, err := c.Do(ctx(t), ami.Action{Name: "Ping"}); err != nil {
		t.Fatal(err)
	}
	if got := srv.Actions()[before:]; len(got) != 1 || got[0].Name != "Ping" {
		t.Errorf("sent after the refusals: %v", got)
	}
}

// List replies: the items by ActionID up to the Complete event, never
// handed to the Handler; a reply that is not a list comes alone; an error
// is an *ami.ActionError.
func TestListReplies(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	var evs events
	c, _ := newClient(t, srv.Addr(), client.Options{Events: "call,security,system", Handler: evs.handle})
	waitFor(t, "the login", c.Connected)
	for i := range 3 {
		srv.Inject(newchannel(fmt.Sprintf("SIP/200-0000000%d", i), fmt.Sprintf("1700000000.%d", i), "x"))
	}
	waitFor(t, "the three Newchannel events", func() bool {
		return len(slices.DeleteFunc(evs.names(), func(n string) bool { return n != "Newchannel" })) == 3
	})
	resp, items, err := c.List(ctx(t), ami.Action{Name: "CoreShowChannels"})
	if err != nil || resp.Get("EventList") != "start" || len(items) != 3 {
		t.Fatalf("CoreShowChannels: %v, %d items, %v", resp, len(items), err)
	}
	for i, it := range items {
		if it.Get("Event") != "CoreShowChannel" || it.Get("Channel") != fmt.Sprintf("SIP/200-0000000%d", i) {
			t.Errorf("item %d: %v", i, it)
		}
	}
	_, peers, err := c.List(ctx(t), ami.Action{Name: "SIPpeers"})
	if err != nil || len(peers) == 0 || peers[0].Get("Event") != "PeerEntry" {
		t.Errorf("SIPpeers: %d peers, %v", len(peers), err)
	}
	// Hangup by name answers without a list.
	resp, items, err = c.List(ctx(t), ami.Action{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: "SIP/200-00000000"}}})
	if err != nil || !resp.OK() || items != nil {
		t.Errorf("Hangup by name: %v, %v, %v", resp, items, err)
	}
	// An error answer.
	var ae *ami.ActionError
	_, items, err = c.List(ctx(t), ami.Action{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: "SIP/nosuch-00000001"}}})
	if !errors.As(err, &ae) || ae.Message != "No such channel" || items != nil {
		t.Errorf("missing channel: %v, %v", items, err)
	}
	for _, n := range evs.names() {
		if n == "CoreShowChannel" || n == "PeerEntry" || strings.HasSuffix(n, "Complete") {
			t.Errorf("the handler got list item %s", n)
		}
	}
	if st := c.Stats(); st.UnknownReplies != 0 {
		t.Errorf("%d unknown replies", st.UnknownReplies)
	}
}

// IPv6 loopback: the address is a bracketed literal.
func TestIPv6Loopback(t *testing.T) {
	srv := startServer(t, amitest.Options{Listen: "[::1]:0"})
	if !strings.HasPrefix(srv.Addr(), "[::1]:") {
		t.Fatalf("server on %s", srv.Addr())
	}
	c, _ := newClient(t, srv.Addr(), client.Options{Events: "off"})
	waitFor(t, "the login over IPv6", c.Connected)
	if resp, err := c.Do(ctx(t), ami.Action{Name: "Ping"}); err != nil || !resp.OK() {
		t.Errorf("Ping: %v, %v", resp, err)
	}
}

// Events: every message that is not a reply reaches the Handler, in order,
// except those Skip names; caller names of 8 and 30 KiB come whole.
func TestEventsReachHandlerWhole(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	var evs events
	c, _ := newClient(t, srv.Addr(), client.Options{
		Events: "call,security,system,dialplan", Handler: evs.handle,
		Skip: func(name []byte) bool { return string(name) == "VarSet" },
	})
	waitFor(t, "the login", c.Connected)
	long8, long30 := strings.Repeat("A", 8<<10)+"Channel: SIP/666-0000abcd", strings.Repeat("B", 30<<10)
	srv.Inject(newchannel("SIP/200-00000001", "1700000000.1", long8))
	srv.Inject("Event: VarSet\r\nPrivilege: dialplan,all\r\nChannel: SIP/200-00000001\r\nVariable: X\r\nValue: 1\r\n")
	srv.Inject(newchannel("SIP/200-00000002", "1700000000.2", long30))
	var got []ami.Response
	waitFor(t, "both Newchannel events", func() bool {
		got = got[:0]
		for _, m := range evs.all() {
			if m.Get("Event") == "Newchannel" {
				got = append(got, m)
			}
		}
		return len(got) == 2
	})
	if len(got) != 2 || got[0].Get("CallerIDName") != long8 || got[0].Get("Channel") != "SIP/200-00000001" ||
		got[1].Get("CallerIDName") != long30 || got[1].Get("Channel") != "SIP/200-00000002" {
		t.Fatalf("the long caller names did not come whole: %d events", len(got))
	}
	if slices.Contains(evs.names(), "VarSet") || c.Stats().Skipped != 1 {
		t.Errorf("VarSet not skipped: %v, %+v", evs.names(), c.Stats())
	}
}

// A message over 64 KiB is skipped, counted and logged; the stream goes on.
func TestOversizedMessageSkipped(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	var evs events
	c, logs := newClient(t, srv.Addr(), client.Options{Events: "call,security,system", Handler: evs.handle})
	waitFor(t, "the login", c.Connected)
	srv.Inject(newchannel("SIP/200-00000001", "1700000000.1", strings.Repeat("C", 70<<10)))
	srv.Inject(newchannel("SIP/200-00000002", "1700000000.2", "ok"))
	waitFor(t, "the event after the oversized one", func() bool {
		for _, m := range evs.all() {
			if m.Get("Channel") == "SIP/200-00000002" {
				return true
			}
		}
		return false
	})
	for _, m := range evs.all() {
		if m.Get("Channel") == "SIP/200-00000001" {
			t.Error("the oversized message reached the handler")
		}
	}
	if st := c.Stats(); st.Oversized != 1 || !c.Connected() {
		t.Errorf("stats %+v, connected %v", st, c.Connected())
	}
	if l := logs.lines("AMI message rejected and not used"); len(l) != 1 || l[0]["level"] != "error" {
		t.Errorf("rejection lines: %v", l)
	}
}

// A connection cut under a waiting action fails it with ErrConnectionLost;
// the client logs in again and the next action works.
func TestConnectionLostFailsWaitingAction(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	reconnected := make(chan struct{}, 4)
	c, logs := newClient(t, srv.Addr(), client.Options{Events: "off", OnConnect: func(string) { reconnected <- struct{}{} }})
	<-reconnected
	srv.Stall(true)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Do(ctx(t), ami.Action{Name: "Ping"})
		errc <- err
	}()
	waitFor(t, "the Ping to be in flight", func() bool { return c.Stats().Waiting == 1 })
	srv.DropSessions()
	srv.Stall(false)
	if err := <-errc; !errors.Is(err, client.ErrConnectionLost) {
		t.Errorf("Ping across the cut: %v", err)
	}
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("no new login")
	}
	if _, err := c.Do(ctx(t), ami.Action{Name: "Ping"}); err != nil {
		t.Errorf("Ping after the new login: %v", err)
	}
	if l := logs.lines("AMI connection lost: the guard is blind until it reconnects"); len(l) != 1 || l[0]["level"] != "warn" {
		t.Errorf("lost lines: %v", l)
	}
	if st := c.Status(); st.Connects != 2 || st.State != client.StateUp {
		t.Errorf("status %+v", st)
	}
}

// A closed Client refuses actions and fails the waiting ones.
func TestClosedClient(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	c, _ := newClient(t, srv.Addr(), client.Options{Events: "off"})
	waitFor(t, "the login", c.Connected)
	srv.Stall(true)
	defer srv.Stall(false)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Do(context.Background(), ami.Action{Name: "Ping"})
		errc <- err
	}()
	waitFor(t, "the Ping to wait", func() bool { return c.Stats().Waiting == 1 })
	c.Close()
	if err := <-errc; !errors.Is(err, client.ErrClosed) {
		t.Errorf("waiting Ping: %v", err)
	}
	if _, err := c.Do(ctx(t), ami.Action{Name: "Ping"}); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Ping after Close: %v", err)
	}
	if st := c.Status(); st.State != client.StateClosed {
		t.Errorf("state %v", st.State)
	}
	c.Close() // twice is fine
}
