package ami_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/amitest"
)

// dial opens a session to a fresh fake Asterisk. amigo cannot be stopped:
// its reconnect pace is set beyond the test binary's life so that its own
// data race on reconnect (defect 6) never fires in -race runs; reconnects
// are tested in reconnect_test.go, which is built without -race.
func dial(t *testing.T, opts amitest.Options, so ami.SessionOptions) (*amitest.Server, *ami.Session) {
	t.Helper()
	srv, err := amitest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	so.Address, so.Username, so.Secret = srv.Addr(), "guard", "guardpass"
	so.ReconnectInterval = 10 * time.Minute
	so.Logger = zerolog.Nop()
	s, err := ami.Dial(so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	waitUntil(t, "the session to log in", s.Connected)
	return srv, s
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

// Defect 17: amigo turns empty credentials into admin/amp111.
func TestDialRefusesEmptyCredentials(t *testing.T) {
	for _, so := range []ami.SessionOptions{
		{Address: "127.0.0.1:5038", Username: "guard"},
		{Address: "127.0.0.1:5038", Secret: "x"},
		{Address: "127.0.0.1:5038", Username: "guard", Secret: "a\r\nAction: Originate"},
	} {
		if _, err := ami.Dial(so); err == nil {
			t.Errorf("Dial(%+v) accepted", so)
		}
	}
}

// Defect 5: amigo writes values as they are. A CR/LF (or any control
// character) in a value the guard sends is refused before it reaches amigo,
// and nothing is sent.
func TestActionValuesCannotCarryCRLF(t *testing.T) {
	srv, s := dial(t, amitest.Options{}, ami.SessionOptions{Name: "t"})
	before := len(srv.Actions())
	for _, a := range []ami.Action{
		{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: "SIP/200-00000001\r\nAction: Originate"}}},
		{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: "SIP/200\n"}}},
		{Name: "Hangup", Headers: []ami.Header{{Key: "Chan\rnel", Value: "x"}}},
		{Name: "Hang up", Headers: nil},
		{Name: "Getvar", Headers: []ami.Header{{Key: "Variable", Value: "a"}, {Key: "Variable", Value: "b"}}},
	} {
		if _, err := s.Do(ctx(t), a); !errors.Is(err, ami.ErrUnsafe) {
			t.Errorf("%+v: err = %v, want ErrUnsafe", a, err)
		}
	}
	if n := len(srv.Actions()) - before; n != 0 {
		t.Errorf("%d unsafe actions reached the server", n)
	}
}

// Defect 12: Action returns only the first reply of a list; the items are
// collected from the event stream by ActionID.
func TestListCollectsItemsByActionID(t *testing.T) {
	srv, s := dial(t, amitest.Options{}, ami.SessionOptions{Name: "t"})
	resp, items, err := s.List(ctx(t), ami.Action{Name: "SIPpeers"})
	if err != nil {
		t.Fatal(err)
	}
	if resp["EventList"] != "start" {
		t.Errorf("first reply %v", resp)
	}
	var names []string
	for _, it := range items {
		names = append(names, it["ObjectName"])
	}
	if strings.Join(names, ",") != "200,201,carrier" {
		t.Errorf("SIPpeers items %v, want the three peers of sip.conf", names)
	}
	_ = srv
	// A plain reply with an error is an ActionError carrying Asterisk's text.
	_, err = s.Do(ctx(t), ami.Action{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: "SIP/nosuch-00000001"}}})
	var ae *ami.ActionError
	if !errors.As(err, &ae) || ae.Message != "No such channel" {
		t.Errorf("Hangup of a missing channel: %v", err)
	}
}

// Defect 1: amigo's login swallows FullyBooted and what follows it. The
// session tells its owner after every login (and sets the event mask first,
// defect 15), so the owner can rebuild.
func TestOnConnectAfterEventMask(t *testing.T) {
	connected := make(chan struct{}, 1)
	srv, _ := dial(t, amitest.Options{}, ami.SessionOptions{Name: "t", EventMask: "call,security,system",
		OnConnect: func() { connected <- struct{}{} }})
	select {
	case <-connected:
	case <-time.After(5 * time.Second):
		t.Fatal("OnConnect not called")
	}
	var mask string
	for _, a := range srv.Actions() {
		if a.Name == "Events" {
			for _, h := range a.Headers {
				if strings.EqualFold(h[0], "EventMask") {
					mask = h[1]
				}
			}
		}
	}
	if mask != "call,security,system" {
		t.Errorf("event mask sent: %q", mask)
	}
}

// Defect 7: a full queue never stalls amigo's reader: what does not fit is
// counted as dropped, and actions keep working.
func TestFullQueueDropsAndCounts(t *testing.T) {
	q := make(chan ami.Incoming, 4)
	var lastDrop atomic.Uint64
	srv, s := dial(t, amitest.Options{}, ami.SessionOptions{Name: "t", EventMask: "on", Queue: q,
		OnDrop: func(n uint64) { lastDrop.Store(n) }})
	for i := range 200 {
		srv.Inject(fmt.Sprintf("Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: SIP\r\nPeer: SIP/%d\r\nPeerStatus: Registered\r\nAddress: 192.0.2.1:5060\r\n", 1000+i))
	}
	waitUntil(t, "drops to be counted", func() bool { return s.Stats().Dropped > 0 })
	if _, err := s.Do(ctx(t), ami.Action{Name: "Ping"}); err != nil {
		t.Fatalf("actions stalled behind the full queue: %v", err)
	}
	st := s.Stats()
	if st.Queued > 4+uint64(len(q)) || st.Dropped == 0 || lastDrop.Load() == 0 {
		t.Errorf("stats %+v, OnDrop saw %d", st, lastDrop.Load())
	}
}

// Defect 4: amigo reads lines through a 4096-byte buffer and parses the
// tail of a longer line as a header of its own. A caller name hiding
// "Channel: SIP/201-..." past byte 4096 would override the real channel;
// the message is marked untrusted instead.
func TestLongLineMarkedUntrusted(t *testing.T) {
	q := make(chan ami.Incoming, 16)
	srv, _ := dial(t, amitest.Options{}, ami.SessionOptions{Name: "t", EventMask: "on", Queue: q})
	name := strings.Repeat("A", 4100) + "Channel: SIP/201-0000abcd"
	srv.Inject("Event: Newchannel\r\nPrivilege: call,all\r\nChannel: SIP/200-00000042\r\nCallerIDName: " + name +
		"\r\nExten: 0011442079460000\r\nUniqueid: 1795610000.1\r\nLinkedid: 1795610000.1\r\n")
	for {
		select {
		case in := <-q:
			if in.Fields["Event"] != "Newchannel" {
				continue
			}
			if in.Trusted {
				t.Fatalf("a message split by amigo was trusted: Channel=%q", in.Fields["Channel"])
			}
			var m ami.Message
			if m.SetMap(in.Fields, nil) {
				t.Error("SetMap trusted it")
			}
			return
		case <-time.After(5 * time.Second):
			t.Fatal("the Newchannel never arrived")
		}
	}
}

// SetMapUnordered carries the same headers as SetMap, so Decode reads the
// same event from either.
func TestSetMapUnorderedDecodesTheSame(t *testing.T) {
	kv := map[string]string{"Event": "Newchannel", "Privilege": "call,all", "Channel": "SIP/200-0000000d",
		"Exten": "0011442079460000", "Uniqueid": "1795610819.14", "Linkedid": "1795610819.14", "#": "7"}
	drop := func(k string) bool { return k == "#" }
	var a, b ami.Message
	var ea, eb ami.Event
	if !a.SetMap(kv, drop) || !b.SetMapUnordered(kv, drop) {
		t.Fatal("untrusted")
	}
	if !ami.Decode(&a, &ea) || !ami.Decode(&b, &eb) || ea != eb || a.Len() != b.Len() || a.Len() != 6 {
		t.Fatalf("ordered %+v (%d headers), unordered %+v (%d headers)", ea, a.Len(), eb, b.Len())
	}
}
