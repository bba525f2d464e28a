package firewall_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/testenv"
)

// TestNetnsIPSet is TestNetnsIPTables for the kernel address sets, on both
// iptables backends: datagrams from a banned address, and from any address
// of a banned IPv6 /64, are dropped and a neighbour's are not; an entry
// ends with its kernel timeout; a set flushed or destroyed by someone else
// is refilled by the bans manager; a restart after the firewall is gone (a
// reboot) restores every ban.
func TestNetnsIPSet(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testenv.RequireCommand(t, "iptables", "ip6tables", "iptables-"+backend, "ip6tables-"+backend, "ipset")
			chain := testenv.RandomChain()
			if !testenv.InNetns(t, chainEnv+"="+chain) {
				testenv.NoChainOnHost(t, chain)
				return
			}
			netnsIPSet(t, backend, os.Getenv(chainEnv))
		})
	}
}

// The addresses of the IPv6 network tests: a banned /64, an address of
// it, and a neighbour outside it.
var (
	net6      = netip.MustParsePrefix("fd00:0:0:1::/64")
	inNet6    = netip.MustParseAddr("fd00:0:0:1::2")
	alsoNet6  = netip.MustParseAddr("fd00:0:0:1::99")
	outside6  = netip.MustParseAddr("fd00:0:0:2::3")
	expiring4 = netip.MustParseAddr("127.0.0.4")
)

func netnsIPSet(t *testing.T, backend, chain string) {
	useBackend(t, backend)
	for _, a := range []string{"fd00::2", "fd00::3", inNet6.String(), alsoNet6.String(), outside6.String()} {
		run(t, "ip", "-6", "addr", "add", a+"/128", "dev", "lo", "nodad")
	}
	t.Logf("chain %s, %s", chain, strings.TrimSpace(run(t, "iptables", "--version")))
	for _, f := range families {
		run(t, f.bin, "-A", "INPUT", "-s", f.canary, "-m", "comment", "--comment", "canary", "-j", "ACCEPT")
	}
	log := zerolog.New(zerolog.NewTestWriter(t))
	fw, err := firewall.NewIPSet(firewall.Options{Chain: chain, KeepRulesOnSetup: true, Logger: log})
	if err != nil {
		t.Fatalf("NewIPSet: %v", err)
	}
	if err := fw.Setup(bg); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if err := fw.Setup(bg); err != nil {
		t.Fatalf("Setup again: %v", err)
	}
	for _, f := range families {
		if in := inputRules(t, f, chain); in[0] != "-A INPUT -j "+chain {
			t.Fatalf("%s INPUT after Setup: want the jump first:\n%s", f.bin, strings.Join(in, "\n"))
		}
		checkCanary(t, f)
	}
	if sets := testenv.Sets(t, chain); len(sets) != 4 {
		t.Fatalf("sets after Setup: %v, want 4", sets)
	}

	t.Run("udp_drop", func(t *testing.T) {
		for _, f := range families {
			t.Run(f.name, func(t *testing.T) { testSetUDPDrop(t, fw, f, chain) })
		}
	})
	t.Run("ipv6_network", func(t *testing.T) { testSetNetwork(t, fw, chain) })
	t.Run("conntrack", func(t *testing.T) {
		noCT, err := firewall.NewIPSet(firewall.Options{Chain: chain, KeepRulesOnSetup: true, DisableConntrack: true, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			t.Run(f.name, func(t *testing.T) { testConntrack(t, fw, noCT, f, chain) })
		}
	})
	t.Run("kernel_timeout", func(t *testing.T) { testSetTimeout(t, fw, chain) })
	t.Run("refill_restart", func(t *testing.T) { testSetRefillRestart(t, fw, chain) })
	t.Run("teardown", func(t *testing.T) {
		if err := fw.Teardown(bg); err != nil {
			t.Fatalf("Teardown: %v", err)
		}
		if err := fw.Teardown(bg); err != nil {
			t.Fatalf("Teardown again: %v", err)
		}
		if sets := testenv.Sets(t, chain); len(sets) != 0 {
			t.Fatalf("sets left: %v", sets)
		}
		for _, f := range families {
			if all := run(t, f.bin, "-S"); strings.Contains(all, chain) {
				t.Fatalf("%s: %s still referenced:\n%s", f.bin, chain, all)
			}
			checkCanary(t, f)
		}
	})
}

func testSetUDPDrop(t *testing.T, fw firewall.Firewall, f ipt, chain string) {
	l := listen(t, f.dst)
	sendFrom(t, f.blocked, l.addr(), "before")
	l.expect(t, "before")

	if err := fw.Block(bg, firewall.Entry{Prefix: pfx(f.blocked), Timeout: time.Hour}); err != nil {
		t.Fatalf("Block(%s): %v", f.blocked, err)
	}
	l.dropped(t, f, chain, "from-blocked", func() { sendFrom(t, f.blocked, l.addr(), "from-blocked") })
	sendFrom(t, f.passes, l.addr(), "from-other")
	if from := l.expect(t, "from-other")["from-other"]; from.Addr() != f.passes {
		t.Fatalf("datagram from-other came from %s, want %s", from, f.passes)
	}
	blocked, err := fw.Blocked(bg)
	if err != nil || !slices.Contains(addrsIn(blocked), f.blocked) {
		t.Fatalf("Blocked = %v, %v", blocked, err)
	}
	for _, e := range blocked {
		if e.Prefix == pfx(f.blocked) && (e.Timeout <= 59*time.Minute || e.Timeout > time.Hour) {
			t.Fatalf("kernel timeout of %s = %v, want about an hour", f.blocked, e.Timeout)
		}
	}
	t.Logf("after Block(%s): dropped; %s delivered; kernel: %s", f.blocked, f.passes, strings.TrimSpace(testenv.Banned(t, chain)))

	if err := fw.Unblock(bg, pfx(f.blocked)); err != nil {
		t.Fatalf("Unblock: %v", err)
	}
	if err := fw.Unblock(bg, pfx(f.blocked)); err != nil {
		t.Fatalf("Unblock again: %v", err)
	}
	sendFrom(t, f.blocked, l.addr(), "after-unblock")
	l.expect(t, "after-unblock")
}

// testSetNetwork bans an IPv6 /64: both its addresses are dropped, the
// neighbour outside it is not; unblocking an address inside it leaves the
// network banned.
func testSetNetwork(t *testing.T, fw firewall.Firewall, chain string) {
	f := families[1]
	l := listen(t, f.dst)
	if err := fw.Block(bg, firewall.Entry{Prefix: net6, Timeout: time.Hour}); err != nil {
		t.Fatalf("Block(%s): %v", net6, err)
	}
	for _, a := range []netip.Addr{inNet6, alsoNet6} {
		g := f
		g.blocked = a
		l.dropped(t, g, chain, "from "+a.String(), func() { sendFrom(t, a, l.addr(), "from "+a.String()) })
	}
	sendFrom(t, outside6, l.addr(), "outside")
	if from := l.expect(t, "outside")["outside"]; from.Addr() != outside6 {
		t.Fatalf("datagram came from %s, want %s", from, outside6)
	}
	if err := fw.Unblock(bg, pfx(inNet6)); err != nil {
		t.Fatal(err)
	}
	g := f
	g.blocked = inNet6
	l.dropped(t, g, chain, "after unblocking the address alone", func() { sendFrom(t, inNet6, l.addr(), "after unblocking the address alone") })
	if err := fw.Unblock(bg, net6); err != nil {
		t.Fatal(err)
	}
	sendFrom(t, alsoNet6, l.addr(), "network unblocked")
	l.expect(t, "network unblocked")
	t.Logf("%s dropped %s and %s, not %s", net6, inNet6, alsoNet6, outside6)
}

// testSetTimeout: the kernel removes an entry when its timeout runs out,
// with nobody asking.
func testSetTimeout(t *testing.T, fw firewall.Firewall, chain string) {
	f := families[0]
	f.blocked = expiring4
	l := listen(t, f.dst)
	if err := fw.Block(bg, firewall.Entry{Prefix: pfx(expiring4), Timeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	l.dropped(t, f, chain, "before the timeout", func() { sendFrom(t, expiring4, l.addr(), "before the timeout") })
	start := time.Now()
	testenv.WaitFor(t, "the kernel to drop the entry of "+expiring4.String(), 30*time.Second, func() bool {
		b, err := fw.Blocked(bg)
		return err == nil && !slices.Contains(addrsIn(b), expiring4)
	})
	sendFrom(t, expiring4, l.addr(), "after the timeout")
	l.expect(t, "after the timeout")
	t.Logf("the kernel dropped the 2 s entry after %v", time.Since(start).Round(100*time.Millisecond))
}

// testSetRefillRestart runs the bans manager over the set firewall: a set
// flushed by someone else is refilled, one destroyed (its rule deleted
// first, as the kernel requires) is made again and refilled, and after the
// whole firewall is gone a new manager restores every ban.
func testSetRefillRestart(t *testing.T, fw firewall.Firewall, chain string) {
	state := filepath.Join(t.TempDir(), "bans.json")
	log := zerolog.New(zerolog.NewTestWriter(t))
	opts := bans.Options{Firewall: fw, StatePath: state, Logger: log, ReapplyEvery: 200 * time.Millisecond, IPv6Prefix: 64}
	m, err := bans.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(bg); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{families[0].blocked, inNet6} {
		if _, err := m.Ban(bg, bans.Request{Addr: a, TTL: time.Hour, Reason: "netns test"}); err != nil {
			t.Fatalf("Ban(%s): %v", a, err)
		}
	}
	want := []netip.Prefix{pfx(families[0].blocked), net6}
	holds := func() bool {
		got, err := fw.Blocked(bg)
		return err == nil && slices.Equal(prefixesIn(got), want)
	}
	if !holds() {
		got, _ := fw.Blocked(bg)
		t.Fatalf("Blocked = %v, want %v", got, want)
	}
	runCtx, cancel := context.WithCancel(bg)
	done := make(chan error)
	go func() { done <- m.Run(runCtx) }()

	run(t, "ipset", "flush", chain+"-a4")
	run(t, "ipset", "flush", chain+"-n6")
	testenv.WaitFor(t, "the flushed sets refilled", 10*time.Second, holds)
	t.Logf("after ipset flush: refilled")

	run(t, "iptables", "-D", chain, "-m", "set", "--match-set", chain+"-a4", "src", "-j", "DROP")
	run(t, "ipset", "destroy", chain+"-a4")
	testenv.WaitFor(t, "the destroyed set made again and refilled", 10*time.Second, holds)
	l := listen(t, families[0].dst)
	l.dropped(t, families[0], chain, "after the set was destroyed", func() { sendFrom(t, families[0].blocked, l.addr(), "after the set was destroyed") })
	t.Logf("after ipset destroy: made again, refilled, dropping")

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := m.Close(bg); err != nil {
		t.Fatal(err)
	}
	// A reboot: the kernel forgets the chain and the sets.
	if err := fw.Teardown(bg); err != nil {
		t.Fatal(err)
	}
	m2, err := bans.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Start(bg); err != nil {
		t.Fatal(err)
	}
	if !holds() {
		got, _ := fw.Blocked(bg)
		t.Fatalf("after the restart Blocked = %v, want %v", got, want)
	}
	l.dropped(t, families[0], chain, "after the restart", func() { sendFrom(t, families[0].blocked, l.addr(), "after the restart") })
	lifted, err := m2.Lift(bg, alsoNet6)
	if err != nil || len(lifted) != 1 || lifted[0].Prefix != net6 {
		t.Fatalf("Lift(%s) = %v, %v; want the ban of %s", alsoNet6, lifted, err, net6)
	}
	if err := m2.Unban(bg, families[0].blocked); err != nil {
		t.Fatal(err)
	}
	if got, _ := fw.Blocked(bg); len(got) != 0 {
		t.Fatalf("after Lift and Unban Blocked = %v", got)
	}
	if err := m2.Close(bg); err != nil {
		t.Fatal(err)
	}
}

func prefixesIn(es []firewall.Entry) []netip.Prefix {
	out := make([]netip.Prefix, len(es))
	for i, e := range es {
		out[i] = e.Prefix
	}
	return out
}
