package guard

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
)

// The AMI connection is cut in the middle of the attack: the guard
// reconnects, rebuilds its view, and the attack is still stopped.
func TestReconnectMidAttack(t *testing.T) {
	t.Parallel()
	h := startGuard(t, "attack-mixed.ami", 2, func(c *config.Config) {
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
	t.Parallel()
	h := startGuard(t, "pjsip-bruteforce.ami", 0, func(c *config.Config) {
		c.AMI.ReconnectInterval = config.Duration(100 * time.Millisecond)
		c.AMI.Keepalive = config.Duration(200 * time.Millisecond)
		c.AMI.ActionTimeout = config.Duration(300 * time.Millisecond)
	})
	g := <-h.guard
	waitFor(t, "login", 10*time.Second, g.events.Connected)
	before := g.events.Status().Connects
	h.srv.Stall(true)
	waitFor(t, "the stalled session to be declared dead", 20*time.Second, func() bool {
		st := g.events.Status()
		return st.State == client.StateDown && st.Problem == client.ProblemLost
	})
	h.srv.Stall(false)
	waitFor(t, "a new login", 20*time.Second, func() bool { return g.events.Connected() && g.events.Status().Connects > before })
}
