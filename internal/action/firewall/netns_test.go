package firewall_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/ti-mo/conntrack"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/testenv"
)

// The real-iptables tests run in a private network namespace: the test
// re-executes itself under `unshare -n` (testenv.InNetns) and works on that
// namespace's tables only. The host is never touched: the test checks
// that its chain never appears there.

// chainEnv passes the chain name the test picked to its child.
const chainEnv = "ASTGUARD_TEST_CHAIN"

var bg = context.Background()

func TestNetnsIPTables(t *testing.T) {
	// Both iptables backends Debian ships: the default (nft) and legacy.
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testenv.RequireCommand(t, "iptables", "ip6tables", "iptables-"+backend, "ip6tables-"+backend)
			chain := testenv.RandomChain()
			if !testenv.InNetns(t, chainEnv+"="+chain) {
				testenv.NoChainOnHost(t, chain)
				return
			}
			netnsIPTables(t, backend, os.Getenv(chainEnv))
		})
	}
}

// useBackend puts iptables and ip6tables of backend first in PATH, as
// symlinks: xtables-*-multi picks its personality from the name. The
// process is the namespace's child, running this one test alone: PATH is
// set for all of it (t.Setenv is not allowed in a parallel test).
func useBackend(t *testing.T, backend string) {
	dir := t.TempDir()
	for _, bin := range []string{"iptables", "ip6tables"} {
		target, err := exec.LookPath(bin + "-" + backend)
		if err != nil {
			t.Fatalf("%s-%s: %v", bin, backend, err)
		}
		if err := os.Symlink(target, filepath.Join(dir, bin)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH")); err != nil {
		t.Fatal(err)
	}
}

// run runs a command inside the namespace and returns its output.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ipt knows one address family's tools and test addresses.
type ipt struct {
	name            string // "v4", "v6"
	bin             string // iptables, ip6tables
	dst             netip.Addr
	blocked, passes netip.Addr
	canary          string
}

var families = []ipt{
	{"v4", "iptables", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), "192.0.2.99"},
	{"v6", "ip6tables", netip.MustParseAddr("::1"), netip.MustParseAddr("fd00::2"), netip.MustParseAddr("fd00::3"), "2001:db8::99"},
}

// netnsIPTables runs inside the namespace, with the iptables commands of
// backend, on chain.
func netnsIPTables(t *testing.T, backend, chain string) {
	useBackend(t, backend)
	t.Logf("kernel %s", strings.TrimSpace(run(t, "uname", "-r")))
	t.Logf("%s", strings.TrimSpace(run(t, "iptables", "--version")))
	run(t, "ip", "-6", "addr", "add", "fd00::2/128", "dev", "lo", "nodad")
	run(t, "ip", "-6", "addr", "add", "fd00::3/128", "dev", "lo", "nodad")
	t.Logf("chain %s", chain)

	for _, f := range families {
		run(t, f.bin, "-A", "INPUT", "-s", f.canary, "-m", "comment", "--comment", "canary", "-j", "ACCEPT")
	}
	log := zerolog.New(zerolog.NewTestWriter(t))
	fw, err := firewall.NewIPTables(firewall.Options{Chain: chain, Logger: log})
	if err != nil {
		t.Fatalf("NewIPTables: %v", err)
	}
	if err := fw.Setup(bg); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if err := fw.Setup(bg); err != nil {
		t.Fatalf("Setup again: %v", err)
	}
	for _, f := range families {
		in := inputRules(t, f, chain)
		if in[0] != "-A INPUT -j "+chain || strings.Count(strings.Join(in, "\n"), "-j "+chain) != 1 {
			t.Fatalf("%s INPUT after Setup x2: want one jump, first:\n%s", f.bin, strings.Join(in, "\n"))
		}
		checkCanary(t, f)
	}

	t.Run("udp_drop", func(t *testing.T) {
		for _, f := range families {
			t.Run(f.name, func(t *testing.T) { testUDPDrop(t, fw, f, chain) })
		}
	})
	t.Run("conntrack", func(t *testing.T) {
		noCT, err := firewall.NewIPTables(firewall.Options{Chain: chain, DisableConntrack: true, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			t.Run(f.name, func(t *testing.T) { testConntrack(t, fw, noCT, f, chain) })
		}
	})
	t.Run("batch", func(t *testing.T) { testBatch(t, fw, chain) })
	t.Run("flush_reapply_bans", func(t *testing.T) { testFlushReapply(t, fw, chain) })
	t.Run("teardown", func(t *testing.T) {
		if err := fw.Teardown(bg); err != nil {
			t.Fatalf("Teardown: %v", err)
		}
		if err := fw.Teardown(bg); err != nil {
			t.Fatalf("Teardown again: %v", err)
		}
		for _, f := range families {
			if out, err := exec.Command(f.bin, "-S", chain).CombinedOutput(); err == nil {
				t.Fatalf("%s: chain %s still there:\n%s", f.bin, chain, out)
			}
			if all := run(t, f.bin, "-S"); strings.Contains(all, chain) {
				t.Fatalf("%s: %s still referenced:\n%s", f.bin, chain, all)
			}
			checkCanary(t, f)
			t.Logf("%s after Teardown:\n%s", f.bin, strings.TrimSpace(run(t, f.bin, "-S")))
		}
	})
}

func inputRules(t *testing.T, f ipt, chain string) []string {
	var out []string
	for _, l := range strings.Split(run(t, f.bin, "-S", "INPUT"), "\n") {
		if strings.HasPrefix(l, "-A ") {
			out = append(out, l)
		}
	}
	return out
}

func checkCanary(t *testing.T, f ipt) {
	t.Helper()
	want := "-A INPUT -s " + netip.PrefixFrom(netip.MustParseAddr(f.canary), netip.MustParseAddr(f.canary).BitLen()).String() +
		` -m comment --comment canary -j ACCEPT`
	if !strings.Contains(run(t, f.bin, "-S", "INPUT"), want) {
		t.Fatalf("%s: canary rule lost:\n%s", f.bin, run(t, f.bin, "-S", "INPUT"))
	}
}

// listener collects datagrams.
type listener struct {
	c *net.UDPConn
}

func listen(t *testing.T, a netip.Addr) *listener {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
	if err != nil {
		t.Fatalf("listen on %s: %v", a, err)
	}
	t.Cleanup(func() { c.Close() })
	return &listener{c: c}
}

func (l *listener) addr() netip.AddrPort { return l.c.LocalAddr().(*net.UDPAddr).AddrPort() }

// expect reads until every one of payloads has arrived, and returns
// where each came from. A datagram that does not come within 10 s fails
// the test: on loopback it is lost, not late.
func (l *listener) expect(t *testing.T, payloads ...string) map[string]netip.AddrPort {
	t.Helper()
	got := map[string]netip.AddrPort{}
	buf := make([]byte, 1500)
	_ = l.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, p := range payloads {
		for {
			if _, ok := got[p]; ok {
				break
			}
			n, from, err := l.c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("waiting for %q (got %v): %v", p, got, err)
			}
			got[string(buf[:n])] = from
		}
	}
	return got
}

// dropped calls send, which sends payload from src, and waits until the
// DROP rule of chain for src has counted it; the datagram must not arrive
// meanwhile. The rule's counter, not a quiet while, tells that the
// firewall dropped it.
func (l *listener) dropped(t *testing.T, f ipt, chain, payload string, send func()) {
	t.Helper()
	src := netip.PrefixFrom(f.blocked, f.blocked.BitLen()).String()
	before := testenv.Drops(t, f.bin, chain, src)
	send()
	buf := make([]byte, 1500)
	testenv.WaitFor(t, "the DROP rule of "+src+" to count "+payload, 10*time.Second, func() bool {
		for {
			_ = l.c.SetReadDeadline(time.Now().Add(time.Millisecond)) // a deadline already past reads nothing
			n, _, err := l.c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if string(buf[:n]) == payload {
				t.Fatalf("datagram %q from %s arrived, want it dropped", payload, src)
			}
		}
		return testenv.Drops(t, f.bin, chain, src) > before
	})
}

// sendFrom sends payload from a new socket bound to src.
func sendFrom(t *testing.T, src netip.Addr, dst netip.AddrPort, payload string) {
	t.Helper()
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(dst))
	if err != nil {
		t.Fatalf("socket from %s: %v", src, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatalf("send from %s: %v", src, err)
	}
}

func testUDPDrop(t *testing.T, fw firewall.Firewall, f ipt, chain string) {
	l := listen(t, f.dst)
	sendFrom(t, f.blocked, l.addr(), "before")
	l.expect(t, "before")

	if err := fw.Block(bg, entry(f.blocked, "astguard test: udp_drop "+f.name)); err != nil {
		t.Fatalf("Block(%s): %v", f.blocked, err)
	}
	l.dropped(t, f, chain, "from-blocked", func() { sendFrom(t, f.blocked, l.addr(), "from-blocked") })
	sendFrom(t, f.passes, l.addr(), "from-other")
	if from := l.expect(t, "from-other")["from-other"]; from.Addr() != f.passes {
		t.Fatalf("datagram from-other came from %s, want %s", from, f.passes)
	}
	t.Logf("after Block(%s): datagram from %s dropped, from %s delivered", f.blocked, f.blocked, f.passes)

	blocked, err := fw.Blocked(bg)
	if err != nil || !slices.Contains(addrsIn(blocked), f.blocked) {
		t.Fatalf("Blocked = %v, %v", blocked, err)
	}

	if err := fw.Unblock(bg, pfx(f.blocked)); err != nil {
		t.Fatalf("Unblock: %v", err)
	}
	if err := fw.Unblock(bg, pfx(f.blocked)); err != nil {
		t.Fatalf("Unblock again: %v", err)
	}
	sendFrom(t, f.blocked, l.addr(), "after-unblock")
	l.expect(t, "after-unblock")
	t.Logf("after Unblock(%s): delivered again", f.blocked)
}

// flowsFrom lists conntrack entries with original source a.
func flowsFrom(t *testing.T, a netip.Addr) []conntrack.Flow {
	t.Helper()
	c, err := conntrack.Dial(nil)
	if err != nil {
		t.Fatalf("conntrack netlink socket unavailable (kernel needs nf_conntrack_netlink): %v", err)
	}
	defer c.Close()
	fl, err := c.Dump(nil)
	if err != nil {
		t.Fatalf("conntrack dump: %v", err)
	}
	return slices.DeleteFunc(fl, func(f conntrack.Flow) bool { return f.TupleOrig.IP.SourceAddress != a })
}

// testConntrack: fw deletes the conntrack entries of what it blocks, noCT
// (the same firewall without conntrack) does not.
func testConntrack(t *testing.T, fw, noCT firewall.Firewall, f ipt, chain string) {
	// An admin's rule before our jump: established flows bypass our chain.
	accept := []string{"-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"}
	run(t, f.bin, append([]string{"-I", "INPUT", "1"}, accept...)...)
	t.Cleanup(func() { run(t, f.bin, append([]string{"-D", "INPUT"}, accept...)...) })

	// A UDP flow, both ways, so conntrack sees it ESTABLISHED.
	l := listen(t, f.dst)
	client, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.blocked, 0)), net.UDPAddrFromAddrPort(l.addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	send := func(p string) {
		t.Helper()
		if _, err := client.Write([]byte(p)); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	send("hello")
	from := l.expect(t, "hello")["hello"]
	if _, err := l.c.WriteToUDPAddrPort([]byte("reply"), from); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = client.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := client.Read(buf); err != nil || string(buf[:n]) != "reply" {
		t.Fatalf("reply: %q, %v", buf[:n], err)
	}
	flows := flowsFrom(t, f.blocked)
	if len(flows) == 0 {
		t.Fatalf("no conntrack entry for %s: is conntrack tracking this namespace?", f.blocked)
	}
	t.Logf("flow %s -> %s tracked, status %v", flows[0].TupleOrig.IP.SourceAddress, flows[0].TupleOrig.IP.DestinationAddress, flows[0].Status)

	// Control: the DROP rule alone does not stop the established flow.
	if err := noCT.Block(bg, entry(f.blocked, "astguard test: conntrack "+f.name)); err != nil {
		t.Fatalf("Block without conntrack: %v", err)
	}
	send("rule-only")
	l.expect(t, "rule-only") // with the ESTABLISHED accept first, the flow bypasses the DROP rule
	t.Logf("control: DROP rule without conntrack deletion: established flow still delivered")

	// Block with conntrack deletion: the flow's entry goes, the next
	// datagram is NEW, skips the accept and hits our DROP.
	if err := fw.Block(bg, entry(f.blocked, "astguard test: conntrack "+f.name)); err != nil {
		t.Fatalf("Block: %v", err)
	}
	testenv.WaitFor(t, "the conntrack entries of "+f.blocked.String()+" deleted after Block", 10*time.Second, func() bool {
		return len(flowsFrom(t, f.blocked)) == 0
	})
	l.dropped(t, f, chain, "after-block", func() { send("after-block") })
	t.Logf("Block with conntrack deletion: entry deleted, next datagram of the flow dropped")

	if err := fw.Unblock(bg, pfx(f.blocked)); err != nil {
		t.Fatal(err)
	}
}

// testBatch: several entries are blocked and unblocked in one
// iptables-restore each, a network among them.
func testBatch(t *testing.T, fw firewall.Firewall, chain string) {
	net4 := netip.MustParsePrefix("198.51.100.0/24")
	entries := []firewall.Entry{entry(netip.MustParseAddr("192.0.2.1"), "batch one"), entry(netip.MustParseAddr("192.0.2.2"), "batch two"),
		{Prefix: net4, Comment: "batch network"}, entry(netip.MustParseAddr("2001:db8::1"), "batch v6"), entry(netip.MustParseAddr("2001:db8::2"), "batch v6")}
	if err := fw.Block(bg, entries...); err != nil {
		t.Fatalf("Block of a batch: %v", err)
	}
	rules := run(t, "iptables", "-S", chain)
	for _, want := range []string{"-s 192.0.2.1/32 -m comment --comment \"batch one\" -j DROP", "-s 198.51.100.0/24 -m comment --comment \"batch network\" -j DROP"} {
		if !strings.Contains(rules, want) {
			t.Fatalf("chain after the batch:\n%s\nwant %s", rules, want)
		}
	}
	if err := fw.Block(bg, entries...); err != nil {
		t.Fatalf("Block of the batch again: %v", err)
	}
	got, err := fw.Blocked(bg)
	if err != nil || len(got) != 5 {
		t.Fatalf("Blocked = %v, %v; want the 5 entries once each", got, err)
	}
	if err := fw.Unblock(bg, net4, pfx(netip.MustParseAddr("192.0.2.1")), pfx(netip.MustParseAddr("2001:db8::1")), pfx(netip.MustParseAddr("2001:db8::2"))); err != nil {
		t.Fatalf("Unblock of a batch: %v", err)
	}
	if got, _ := fw.Blocked(bg); !slices.Equal(addrsIn(got), []netip.Addr{netip.MustParseAddr("192.0.2.2")}) {
		t.Fatalf("Blocked after the batch Unblock = %v", got)
	}
	if err := fw.Unblock(bg, pfx(netip.MustParseAddr("192.0.2.2"))); err != nil {
		t.Fatal(err)
	}
}

func testFlushReapply(t *testing.T, fw firewall.Firewall, chain string) {
	state := filepath.Join(t.TempDir(), "bans.json")
	log := zerolog.New(zerolog.NewTestWriter(t))
	m, err := bans.New(bans.Options{Firewall: fw, StatePath: state, Logger: log, ReapplyEvery: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(bg); err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if _, err := m.Ban(bg, bans.Request{Addr: f.blocked, TTL: time.Hour, Reason: "netns test", Extension: "SIP/200"}); err != nil {
			t.Fatalf("Ban(%s): %v", f.blocked, err)
		}
	}
	want := []netip.Addr{families[0].blocked, families[1].blocked}
	if got, err := fw.Blocked(bg); err != nil || !slices.Equal(addrsIn(got), want) {
		t.Fatalf("Blocked = %v, %v; want %v", got, err, want)
	}

	// Someone flushes our chain.
	for _, f := range families {
		run(t, f.bin, "-F", chain)
	}
	if got, err := fw.Blocked(bg); err != nil || len(got) != 0 {
		t.Fatalf("Blocked after iptables -F = %v, %v; want none", got, err)
	}
	t.Logf("after iptables -F %s: Blocked() = []", chain)

	runCtx, cancel := context.WithCancel(bg)
	done := make(chan error)
	go func() { done <- m.Run(runCtx) }()
	testenv.WaitFor(t, "the bans re-applied", 10*time.Second, func() bool {
		got, err := fw.Blocked(bg)
		return err == nil && slices.Equal(addrsIn(got), want)
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		l := listen(t, f.dst)
		l.dropped(t, f, chain, "x", func() { sendFrom(t, f.blocked, l.addr(), "x") })
	}
	t.Logf("bans.Manager re-applied %v; traffic dropped again", want)

	// Restart: Close leaves the rules, a new Manager over the same file
	// keeps them.
	if err := m.Close(bg); err != nil {
		t.Fatal(err)
	}
	if got, _ := fw.Blocked(bg); !slices.Equal(addrsIn(got), want) {
		t.Fatalf("Close removed rules: %v", got)
	}
	m2, err := bans.New(bans.Options{Firewall: fw, StatePath: state, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Start(bg); err != nil {
		t.Fatal(err)
	}
	if got, _ := fw.Blocked(bg); !slices.Equal(addrsIn(got), want) {
		t.Fatalf("after restart Blocked = %v", got)
	}
	for _, a := range want {
		if err := m2.Unban(bg, a); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := fw.Blocked(bg); len(got) != 0 {
		t.Fatalf("after Unban Blocked = %v", got)
	}
	if err := m2.Close(bg); err != nil {
		t.Fatal(err)
	}
}

// pfx is the prefix of the single address a.
func pfx(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// entry is what Block gets to drop a with comment.
func entry(a netip.Addr, comment string) firewall.Entry {
	return firewall.Entry{Prefix: pfx(a), Comment: comment}
}

// addrsIn returns the addresses of entries, in order.
func addrsIn(es []firewall.Entry) []netip.Addr {
	out := make([]netip.Addr, len(es))
	for i, e := range es {
		out[i] = e.Prefix.Addr()
	}
	return out
}
