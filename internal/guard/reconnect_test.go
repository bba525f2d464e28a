//go:build !race

// These tests make amigo reconnect. amigo v0.1.10 writes its connection id
// on every reconnect while its pinger and writer read it unsynchronised
// (its defect 6, reported by -race on every reconnect): they are built
// without -race and run by the README's test command in a second pass. The
// guard's own code they exercise runs under -race in the other tests.

package guard

import (
	"bytes"
	"net/netip"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
)

// The AMI connection is cut in the middle of the attack: the guard
// reconnects, rebuilds its view, and the attack is still stopped.
func TestReconnectMidAttack(t *testing.T) {
	h := startGuard(t, "attack-mixed.ami", 1, func(c *config.Config) {
		c.AMI.ReconnectInterval = config.Duration(100 * time.Millisecond)
	})
	waitFor(t, "the thief's first call", 20*time.Second, func() bool {
		return slices.ContainsFunc(h.srv.LiveChannels(), func(c string) bool { return strings.HasPrefix(c, "SIP/200-") })
	})
	h.srv.DropSessions()
	waitFor(t, "127.0.0.2 and 127.0.0.5 blocked after the reconnect", 30*time.Second, func() bool {
		b := blocked(h)
		return slices.Contains(b, netip.MustParseAddr("127.0.0.2")) && slices.Contains(b, netip.MustParseAddr("127.0.0.5"))
	})
	waitFor(t, "200's secret rotated", 20*time.Second, func() bool {
		s, _ := confSection(h.srv.Conf("sip.conf"), "200", "secret")
		return s != "Leaky200"
	})
	rebuilt := 0
	for _, a := range h.srv.Actions() {
		if a.Name == "CoreShowChannels" {
			rebuilt++
		}
	}
	if rebuilt < 2 {
		t.Errorf("CoreShowChannels sent %d times, want once per login (2)", rebuilt)
	}
	if !strings.Contains(h.logs.String(), "state rebuilt from Asterisk") {
		t.Error("no rebuild logged")
	}
}

// A connection that stops answering pings is treated as dead and replaced.
func TestStalledConnectionIsReplaced(t *testing.T) {
	h := startGuard(t, "pjsip-bruteforce.ami", 0, func(c *config.Config) {
		c.AMI.ReconnectInterval = config.Duration(100 * time.Millisecond)
	})
	g := <-h.guard
	waitFor(t, "login", 10*time.Second, g.events.Connected)
	before := g.events.Stats().Connects
	h.srv.Stall(true)
	waitFor(t, "the stalled session to be declared dead", 20*time.Second, func() bool { return !g.events.Connected() })
	h.srv.Stall(false)
	waitFor(t, "a new login", 20*time.Second, func() bool { return g.events.Connected() && g.events.Stats().Connects > before })
}

// countOurGoroutines counts the goroutines the guard labels as its own.
func countOurGoroutines() int {
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	return strings.Count(b.String(), `"astguard":"`)
}

// Reconnects do not leak goroutines the guard owns (amigo leaks its own on
// every reconnect: defect 9, not ours to fix).
func TestReconnectsDoNotLeakOurGoroutines(t *testing.T) {
	srv, err := amitest.Start(amitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	connects := make(chan struct{}, 16)
	s, err := ami.Dial(ami.SessionOptions{Name: "leak", Address: srv.Addr(), Username: "guard", Secret: "guardpass",
		EventMask: "off", ReconnectInterval: 50 * time.Millisecond, Logger: zerolog.Nop(),
		OnConnect: func() { connects <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	<-connects
	time.Sleep(100 * time.Millisecond) // the post-login goroutine ends
	base := countOurGoroutines()
	for range 5 {
		srv.DropSessions()
		select {
		case <-connects:
		case <-time.After(10 * time.Second):
			t.Fatal("no reconnect")
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := countOurGoroutines(); n > base {
		t.Errorf("our goroutines grew from %d to %d over 5 reconnects", base, n)
	}
	s.Close()
	time.Sleep(100 * time.Millisecond)
	if n := countOurGoroutines(); n != 0 {
		var b bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Errorf("%d of our goroutines left after Close", n)
		_, _ = os.Stderr.Write(b.Bytes())
	}
}
