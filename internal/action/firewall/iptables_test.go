package firewall

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

type rig struct {
	fw     *IPTables
	v4, v6 *fakeTable
	flows  *fakeFlows
}

func newRig(t *testing.T, opts Options) *rig {
	t.Helper()
	r := &rig{v4: newFakeTable(), v6: newFakeTable(), flows: &fakeFlows{}}
	opts.Logger = zerolog.New(zerolog.NewTestWriter(t))
	fw, err := newIPTables(opts, (&fakeOpener{v4: r.v4, v6: r.v6}).open, r.flows)
	if err != nil {
		t.Fatalf("newIPTables: %v", err)
	}
	fw.restore = r.restore
	r.fw = fw
	// The conntrack cuts run in the background and log to t: over before
	// the test ends.
	t.Cleanup(fw.cut.wait)
	return r
}

// restore is the rig's iptables-restore.
func (r *rig) restore(ctx context.Context, v6 bool, input []byte) error {
	if v6 {
		return r.v6.restore(input)
	}
	return r.v4.restore(input)
}

var (
	ctx   = context.Background()
	addr2 = netip.MustParseAddr("192.0.2.2")
	addr3 = netip.MustParseAddr("192.0.2.3")
	addr6 = netip.MustParseAddr("2001:db8::6")
)

func mustNil(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestSetupIdempotentAndCanarySurvives(t *testing.T) {
	r := newRig(t, Options{})
	canary := []string{"-s", "198.51.100.1", "-j", "ACCEPT"}
	mustNil(t, "canary", r.v4.Append("filter", "INPUT", canary...))
	mustNil(t, "setup", r.fw.Setup(ctx))
	mustNil(t, "setup again", r.fw.Setup(ctx))
	for _, tab := range []*fakeTable{r.v4, r.v6} {
		if !tab.hasChain("ASTGUARD") {
			t.Fatal("chain ASTGUARD missing")
		}
		in := tab.rules("INPUT")
		if in[0] != "-j ASTGUARD" {
			t.Fatalf("INPUT = %q, want the jump first", in)
		}
		if n := countOf(in, "-j ASTGUARD"); n != 1 {
			t.Fatalf("INPUT has %d jumps, want 1: %q", n, in)
		}
	}
	if got := r.v4.rules("INPUT"); got[1] != "-s 198.51.100.1/32 -j ACCEPT" {
		t.Fatalf("canary lost: %q", got)
	}
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

func TestSetupFlushesLeftoversAndFixesDuplicateJumps(t *testing.T) {
	r := newRig(t, Options{Chain: "AG-test_1"})
	mustNil(t, "new chain", r.v4.NewChain("filter", "AG-test_1"))
	mustNil(t, "leftover", r.v4.Append("filter", "AG-test_1", dropSpec(pfx(addr2), "old")...))
	mustNil(t, "accept", r.v4.Insert("filter", "INPUT", 1, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"))
	mustNil(t, "jump1", r.v4.Append("filter", "INPUT", "-j", "AG-test_1"))
	mustNil(t, "jump2", r.v4.Append("filter", "INPUT", "-j", "AG-test_1"))

	mustNil(t, "setup", r.fw.Setup(ctx))
	if got := r.v4.rules("AG-test_1"); len(got) != 0 {
		t.Fatalf("leftovers not flushed: %q", got)
	}
	in := r.v4.rules("INPUT")
	if n := countOf(in, "-j AG-test_1"); n != 1 {
		t.Fatalf("want one jump, got %q", in)
	}
	// An existing jump stays where the admin put it (after the accept).
	if in[0] == "-j AG-test_1" {
		t.Fatalf("jump moved: %q", in)
	}
}

func TestSetupKeepRules(t *testing.T) {
	r := newRig(t, Options{KeepRulesOnSetup: true})
	mustNil(t, "new chain", r.v4.NewChain("filter", "ASTGUARD"))
	mustNil(t, "leftover", r.v4.Append("filter", "ASTGUARD", dropSpec(pfx(addr2), "old")...))
	mustNil(t, "setup", r.fw.Setup(ctx))
	got, err := r.fw.Blocked(ctx)
	mustNil(t, "blocked", err)
	if !slices.Equal(addrsIn(got), []netip.Addr{addr2}) {
		t.Fatalf("Blocked = %v, want kept %v", got, addr2)
	}
}

func TestBlockUnblock(t *testing.T) {
	r := newRig(t, Options{})
	mustNil(t, "setup", r.fw.Setup(ctx))

	mustNil(t, "block v4", r.fw.Block(ctx, entry(addr2, `auth_failures critical: 5 "failed" in 1m`)))
	mustNil(t, "block again, other comment", r.fw.Block(ctx, entry(addr2, "again")))
	mapped := netip.AddrFrom16(addr3.As16()) // ::ffff:192.0.2.3
	mustNil(t, "block mapped", r.fw.Block(ctx, entry(mapped, "mapped")))
	mustNil(t, "block v6", r.fw.Block(ctx, entry(addr6, "v6")))

	want4 := []string{
		"-s 192.0.2.2/32 -m comment --comment auth_failures critical: 5 _failed_ in 1m -j DROP",
		"-s 192.0.2.3/32 -m comment --comment mapped -j DROP",
	}
	if got := r.v4.rules("ASTGUARD"); !slices.Equal(got, want4) {
		t.Fatalf("v4 chain = %q\nwant %q", got, want4)
	}
	if got := r.v6.rules("ASTGUARD"); !slices.Equal(got, []string{"-s 2001:db8::6/128 -m comment --comment v6 -j DROP"}) {
		t.Fatalf("v6 chain = %q", got)
	}
	got, err := r.fw.Blocked(ctx)
	mustNil(t, "blocked", err)
	if want := []netip.Addr{addr2, addr3, addr6}; !slices.Equal(addrsIn(got), want) {
		t.Fatalf("Blocked = %v, want %v", got, want)
	}
	r.fw.cut.wait()
	if want := pfxs(addr2, addr2, addr3, addr6); !slices.Equal(r.flows.sorted(), want) {
		t.Fatalf("conntrack deletions = %v, want %v", r.flows.deleted, want)
	}

	mustNil(t, "unblock", r.fw.Unblock(ctx, pfx(addr2)))
	mustNil(t, "unblock missing", r.fw.Unblock(ctx, pfx(addr2)))
	mustNil(t, "unblock mapped", r.fw.Unblock(ctx, pfx(mapped)))
	mustNil(t, "unblock v6", r.fw.Unblock(ctx, pfx(addr6)))
	if got, _ := r.fw.Blocked(ctx); len(got) != 0 {
		t.Fatalf("Blocked after unblock = %v", got)
	}
}

func TestUnblockRemovesDuplicates(t *testing.T) {
	r := newRig(t, Options{})
	mustNil(t, "setup", r.fw.Setup(ctx))
	// Rules for the same address added by an older version, by hand, or
	// with a comment holding quotes as iptables prints them.
	mustNil(t, "a", r.v4.Append("filter", "ASTGUARD", dropSpec(pfx(addr2), "one")...))
	mustNil(t, "b", r.v4.Append("filter", "ASTGUARD", dropSpec(pfx(addr2), `two "quoted" \ x`)...))
	mustNil(t, "c", r.v4.Append("filter", "ASTGUARD", dropSpec(pfx(addr3), "keep")...))
	mustNil(t, "unblock", r.fw.Unblock(ctx, pfx(addr2)))
	if got := r.v4.rules("ASTGUARD"); !slices.Equal(got, []string{"-s 192.0.2.3/32 -m comment --comment keep -j DROP"}) {
		t.Fatalf("chain = %q", got)
	}
}

func TestUnblockWithoutChain(t *testing.T) {
	r := newRig(t, Options{})
	mustNil(t, "unblock before setup", r.fw.Unblock(ctx, pfx(addr2)))
}

func TestBlockRepairsDeletedChainAndJump(t *testing.T) {
	r := newRig(t, Options{})
	mustNil(t, "setup", r.fw.Setup(ctx))
	// Someone runs iptables -F INPUT; iptables -X ASTGUARD.
	mustNil(t, "delete jump", r.v4.Delete("filter", "INPUT", "-j", "ASTGUARD"))
	mustNil(t, "delete chain", r.v4.DeleteChain("filter", "ASTGUARD"))
	mustNil(t, "block", r.fw.Block(ctx, entry(addr2, "x")))
	if got := r.v4.rules("INPUT"); !slices.Equal(got, []string{"-j ASTGUARD"}) {
		t.Fatalf("INPUT = %q", got)
	}
	if got, _ := r.fw.Blocked(ctx); !slices.Equal(addrsIn(got), []netip.Addr{addr2}) {
		t.Fatalf("Blocked = %v", got)
	}
}

func TestBlockedDetectsFlushAndUnhook(t *testing.T) {
	r := newRig(t, Options{})
	mustNil(t, "setup", r.fw.Setup(ctx))
	mustNil(t, "block", r.fw.Block(ctx, entry(addr2, "x")))
	mustNil(t, "flush", r.v4.ClearChain("filter", "ASTGUARD")) // iptables -F ASTGUARD
	if got, _ := r.fw.Blocked(ctx); len(got) != 0 {
		t.Fatalf("Blocked after flush = %v", got)
	}
	mustNil(t, "block", r.fw.Block(ctx, entry(addr2, "x")))
	mustNil(t, "unhook", r.v4.Delete("filter", "INPUT", "-j", "ASTGUARD")) // iptables -F INPUT
	if got, _ := r.fw.Blocked(ctx); len(got) != 0 {
		t.Fatalf("Blocked without jump = %v, want none: the rules drop nothing", got)
	}
	mustNil(t, "block", r.fw.Block(ctx, entry(addr2, "x"))) // re-hooks
	if got, _ := r.fw.Blocked(ctx); !slices.Equal(addrsIn(got), []netip.Addr{addr2}) {
		t.Fatalf("Blocked = %v", got)
	}
}

// Rules lists what our chain holds, hooked into INPUT or not, and creates
// nothing: no chain, no jump.
func TestRulesListsWithoutChanging(t *testing.T) {
	r := newRig(t, Options{})
	if got, err := r.fw.Rules(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Rules without a chain = %v, %v; want none", got, err)
	}
	if r.v4.hasChain("ASTGUARD") || r.v6.hasChain("ASTGUARD") {
		t.Fatal("Rules created the chain")
	}
	mustNil(t, "new chain", r.v4.NewChain("filter", "ASTGUARD"))
	mustNil(t, "rule v4", r.v4.Append("filter", "ASTGUARD", dropSpec(pfx(addr2), "left by a previous run")...))
	mustNil(t, "new chain v6", r.v6.NewChain("filter", "ASTGUARD"))
	mustNil(t, "rule v6", r.v6.Append("filter", "ASTGUARD", dropSpec(pfx(addr6), "left by a previous run")...))
	n4, n6 := r.v4.callCount(), r.v6.callCount()
	got, err := r.fw.Rules(ctx)
	mustNil(t, "rules", err)
	if want := pfxs(addr2, addr6); !slices.Equal(got, want) {
		t.Fatalf("Rules of an unhooked chain = %v, want %v", got, want)
	}
	r.v4.mu.Lock()
	r.v6.mu.Lock()
	calls := append(slices.Clone(r.v4.calls[n4:]), r.v6.calls[n6:]...)
	r.v6.mu.Unlock()
	r.v4.mu.Unlock()
	if len(calls) == 0 {
		t.Fatal("Rules read nothing")
	}
	for _, c := range calls {
		if !strings.HasPrefix(c, "ChainExists ") && !strings.HasPrefix(c, "List ") {
			t.Fatalf("Rules changed the tables: %s", c)
		}
	}
	if got, _ := r.fw.Blocked(ctx); len(got) != 0 {
		t.Fatalf("Blocked of an unhooked chain = %v, want none", got)
	}
	if !r.fw.Real() || NewDryRun(zerolog.Nop()).Real() {
		t.Fatal("Real: iptables must be real, the dry run not")
	}
}

func TestTeardown(t *testing.T) {
	r := newRig(t, Options{})
	mustNil(t, "canary", r.v4.Append("filter", "INPUT", "-s", "198.51.100.1", "-j", "ACCEPT"))
	mustNil(t, "setup", r.fw.Setup(ctx))
	mustNil(t, "block", r.fw.Block(ctx, entry(addr2, "x")))
	mustNil(t, "extra jump", r.v4.Append("filter", "INPUT", "-j", "ASTGUARD"))
	mustNil(t, "teardown", r.fw.Teardown(ctx))
	mustNil(t, "teardown again", r.fw.Teardown(ctx))
	for _, tab := range []*fakeTable{r.v4, r.v6} {
		if tab.hasChain("ASTGUARD") {
			t.Fatal("chain left behind")
		}
		if n := countOf(tab.rules("INPUT"), "-j ASTGUARD"); n != 0 {
			t.Fatalf("jump left behind: %q", tab.rules("INPUT"))
		}
	}
	if got := r.v4.rules("INPUT"); !slices.Equal(got, []string{"-s 198.51.100.1/32 -j ACCEPT"}) {
		t.Fatalf("canary: %q", got)
	}
}

func TestInvalidAddressesArePermanentAndTouchNothing(t *testing.T) {
	r := newRig(t, Options{})
	before := r.v4.callCount() + r.v6.callCount()
	for _, a := range []netip.Addr{
		{},
		netip.MustParseAddr("fe80::1%eth0"),
		netip.MustParseAddr("0.0.0.0"),
		netip.MustParseAddr("::"),
		netip.MustParseAddr("224.0.0.1"),
		netip.MustParseAddr("ff02::1"),
		netip.MustParseAddr("fe80::1"),
		netip.MustParseAddr("255.255.255.255"),
	} {
		err := r.fw.Block(ctx, entry(a, "x"))
		if !errors.Is(err, ErrInvalidAddr) || !errors.Is(err, ErrPermanent) || IsTemporary(err) {
			t.Errorf("Block(%v) = %v, want permanent ErrInvalidAddr", a, err)
		}
		if err := r.fw.Unblock(ctx, pfx(a)); !errors.Is(err, ErrInvalidAddr) {
			t.Errorf("Unblock(%v) = %v, want ErrInvalidAddr", a, err)
		}
	}
	if after := r.v4.callCount() + r.v6.callCount(); after != before {
		t.Fatalf("invalid addresses reached iptables: %d calls", after-before)
	}
}

func TestInvalidChain(t *testing.T) {
	for _, c := range []string{"has space", "x;y", "A23456789012345678901234567890", "-j DROP"} {
		_, err := newIPTables(Options{Chain: c}, (&fakeOpener{v4: newFakeTable()}).open, nil)
		if !errors.Is(err, ErrInvalidChain) || !errors.Is(err, ErrPermanent) {
			t.Errorf("chain %q: err = %v, want permanent ErrInvalidChain", c, err)
		}
	}
}

func TestMissingBinary(t *testing.T) {
	notFound := &exec.Error{Name: "iptables", Err: exec.ErrNotFound}
	_, err := newIPTables(Options{}, (&fakeOpener{err4: notFound}).open, nil)
	if !errors.Is(err, ErrNotInstalled) || !errors.Is(err, ErrPermanent) {
		t.Fatalf("err = %v, want permanent ErrNotInstalled", err)
	}
	if !strings.Contains(err.Error(), "iptables not found: install the iptables package") {
		t.Fatalf("message %q does not say what to do", err)
	}
}

func TestMissingBinaryReal(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := NewIPTables(Options{})
	if !errors.Is(err, ErrNotInstalled) || IsTemporary(err) {
		t.Fatalf("err = %v, want permanent ErrNotInstalled", err)
	}
	t.Log(err)
}

func TestIPv6UnusableFallsBackToIPv4(t *testing.T) {
	v6broken := newFakeTable()
	v6broken.fail = func(string, []string) error {
		return &fakeErr{3, "ip6tables v1.8.9 (legacy): can't initialize ip6tables table `filter': Table does not exist (do you need to insmod?)\n"}
	}
	v4 := newFakeTable()
	fw, err := newIPTables(Options{Logger: zerolog.New(zerolog.NewTestWriter(t))},
		(&fakeOpener{v4: v4, v6: v6broken}).open, nil)
	mustNil(t, "new", err)
	mustNil(t, "setup", fw.Setup(ctx))
	mustNil(t, "block v4", fw.Block(ctx, entry(addr2, "x")))
	err = fw.Block(ctx, entry(addr6, "x"))
	if !errors.Is(err, ErrFamilyUnavailable) || !errors.Is(err, ErrPermanent) {
		t.Fatalf("Block v6 = %v, want permanent ErrFamilyUnavailable", err)
	}
	mustNil(t, "unblock v6", fw.Unblock(ctx, pfx(addr6)))
	mustNil(t, "teardown", fw.Teardown(ctx))

	// Missing ip6tables binary: the same.
	_, err = newIPTables(Options{}, (&fakeOpener{v4: newFakeTable(),
		err6: &exec.Error{Name: "ip6tables", Err: exec.ErrNotFound}}).open, nil)
	mustNil(t, "new without ip6tables", err)
}

func TestInitFailsWhenIptablesDoesNotWork(t *testing.T) {
	v4 := newFakeTable()
	v4.fail = func(string, []string) error { return errPerm }
	_, err := newIPTables(Options{}, (&fakeOpener{v4: v4}).open, nil)
	if err == nil || IsTemporary(err) || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("err = %v, want permanent permission error", err)
	}
}

func TestInjectedFailures(t *testing.T) {
	cases := []struct {
		name      string
		err       error
		temporary bool
	}{
		{"refused", &fakeErr{1, "iptables: Operation not permitted.\n"}, false},
		{"permission", errPerm, false},
		{"lock timeout", errLock, true},
		{"binary gone", &exec.Error{Name: "/usr/sbin/iptables", Err: exec.ErrNotFound}, false},
		{"fork failed", errors.New("fork/exec /usr/sbin/iptables: resource temporarily unavailable"), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, Options{})
			mustNil(t, "setup", r.fw.Setup(ctx))
			fail := func(string, []string) error { return c.err }
			r.v4.setFail(fail)
			r.v6.setFail(fail)

			check := func(op string, err error) {
				t.Helper()
				if err == nil {
					t.Fatalf("%s succeeded with every iptables call failing", op)
				}
				var fe *Error
				if !errors.As(err, &fe) {
					t.Fatalf("%s: %T is not *Error: %v", op, err, err)
				}
				if IsTemporary(err) != c.temporary || errors.Is(err, ErrTemporary) != c.temporary ||
					errors.Is(err, ErrPermanent) == c.temporary {
					t.Fatalf("%s: temporary = %v, want %v (%v)", op, IsTemporary(err), c.temporary, err)
				}
				if !errors.Is(err, c.err) {
					t.Fatalf("%s: cause lost: %v", op, err)
				}
			}
			err := r.fw.Block(ctx, entry(addr2, "x"))
			check("block", err)
			if want := "firewall block 192.0.2.2: check chain ASTGUARD (iptables): "; !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("message %q does not start with %q", err, want)
			}
			check("unblock", r.fw.Unblock(ctx, pfx(addr2)))
			_, err = r.fw.Blocked(ctx)
			check("blocked", err)
			check("setup", r.fw.Setup(ctx))
			check("teardown", r.fw.Teardown(ctx))
			if len(r.flows.deleted) != 0 {
				t.Fatal("conntrack entries deleted although the rule was not added")
			}
		})
	}
}

func TestFailureAtAppendNamesTheStep(t *testing.T) {
	r := newRig(t, Options{})
	mustNil(t, "setup", r.fw.Setup(ctx))
	r.v4.setFail(func(method string, _ []string) error {
		if method == "Append" {
			return errLock
		}
		return nil
	})
	err := r.fw.Block(ctx, entry(addr2, "x"))
	want := "firewall block 192.0.2.2: append DROP rule to ASTGUARD (iptables): exit status 4: Another app is currently holding the xtables lock."
	if err == nil || !strings.HasPrefix(err.Error(), want) || !IsTemporary(err) {
		t.Fatalf("err = %v\nwant prefix %q, temporary", err, want)
	}
}

// The conntrack entries are deleted after Block returned, one dump for
// the prefixes blocked meanwhile; a failure there is logged and leaves the
// block in place.
func TestConntrackFailureKeepsTheBlock(t *testing.T) {
	var logs bytes.Buffer
	r := newRig(t, Options{})
	r.fw.cut.log = zerolog.New(&logs)
	mustNil(t, "setup", r.fw.Setup(ctx))
	r.flows.mu.Lock()
	r.flows.err = errors.New("netlink: permission denied")
	r.flows.mu.Unlock()
	mustNil(t, "block", r.fw.Block(ctx, entry(addr2, "x")))
	r.fw.cut.wait()
	if !strings.Contains(logs.String(), `"message":"address blocked, established flows not cut"`) ||
		!strings.Contains(logs.String(), "netlink: permission denied") || !strings.Contains(logs.String(), `"ip":"192.0.2.2"`) {
		t.Fatalf("conntrack failure not logged with its cause: %s", logs.String())
	}
	if got, _ := r.fw.Blocked(ctx); !slices.Equal(addrsIn(got), []netip.Addr{addr2}) {
		t.Fatalf("block undone by conntrack failure: Blocked = %v", got)
	}
}

// Blocks made while a dump runs wait for the next: one dump for them all.
func TestConntrackOneDumpForABurst(t *testing.T) {
	r := newRig(t, Options{})
	mustNil(t, "setup", r.fw.Setup(ctx))
	gate, entered := make(chan struct{}), make(chan struct{}, 2)
	r.flows.mu.Lock()
	r.flows.gate, r.flows.entered = gate, entered
	r.flows.mu.Unlock()
	mustNil(t, "block", r.fw.Block(ctx, entry(addr2, "x")))
	<-entered // its dump runs, held at the gate
	for _, a := range []netip.Addr{addr3, addr6, netip.MustParseAddr("192.0.2.4")} {
		mustNil(t, "block", r.fw.Block(ctx, entry(a, "x")))
	}
	close(gate)
	r.fw.cut.wait()
	r.flows.mu.Lock()
	defer r.flows.mu.Unlock()
	if r.flows.dumps != 2 || len(r.flows.deleted) != 4 {
		t.Fatalf("%d dumps deleting %v, want 2 for the 4 prefixes", r.flows.dumps, r.flows.deleted)
	}
}

func TestConntrackDisabled(t *testing.T) {
	r := newRig(t, Options{DisableConntrack: true})
	mustNil(t, "setup", r.fw.Setup(ctx))
	mustNil(t, "block", r.fw.Block(ctx, entry(addr2, "x")))
	r.fw.cut.wait()
	if len(r.flows.deleted) != 0 {
		t.Fatal("conntrack used although disabled")
	}
}

func TestCanceledContext(t *testing.T) {
	r := newRig(t, Options{})
	c, cancel := context.WithCancel(ctx)
	cancel()
	before := r.v4.callCount()
	for name, err := range map[string]error{
		"setup":    r.fw.Setup(c),
		"block":    r.fw.Block(c, entry(addr2, "x")),
		"unblock":  r.fw.Unblock(c, pfx(addr2)),
		"teardown": r.fw.Teardown(c),
	} {
		if !errors.Is(err, context.Canceled) || IsTemporary(err) {
			t.Errorf("%s: err = %v, want context.Canceled", name, err)
		}
	}
	if r.v4.callCount() != before {
		t.Fatal("iptables called with a canceled context")
	}
}

func TestLockWaitDefault(t *testing.T) {
	o := &fakeOpener{v4: newFakeTable(), v6: newFakeTable()}
	_, err := newIPTables(Options{}, o.open, nil)
	mustNil(t, "new", err)
	if o.lockWaitSeen.Seconds() != 5 {
		t.Fatalf("lock wait = %v, want 5s", o.lockWaitSeen)
	}
}

func TestConcurrentBlocks(t *testing.T) {
	r := newRig(t, Options{})
	mustNil(t, "setup", r.fw.Setup(ctx))
	done := make(chan error)
	for i := range 20 {
		go func() {
			a := netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 5)})
			done <- r.fw.Block(ctx, entry(a, "x"))
		}()
	}
	for range 20 {
		mustNil(t, "block", <-done)
	}
	if got := r.v4.rules("ASTGUARD"); len(got) != 5 {
		t.Fatalf("chain = %q, want 5 rules (one per address)", got)
	}
}
