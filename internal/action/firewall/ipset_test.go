package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/astguard/astguard/internal/testenv"
)

// fakeSet is a set of fakeSets.
type fakeSet struct {
	typ     string
	family  uint8
	entries map[netip.Prefix]uint32 // prefix -> timeout in seconds
}

// fakeSets is an in-memory ipset with the kernel's answers as far as IPSet
// relies on them: ENOENT for a missing set, IPSET_ERR_EXIST for a missing
// entry.
type fakeSets struct {
	mu    sync.Mutex
	sets  map[string]*fakeSet
	calls []string
	fail  func(method, set string) error // nil: no failure
	proto error
	panic bool // every call panics, as the netlink library does on a reply it does not expect
}

var _ setTable = (*fakeSets)(nil)

func newFakeSets() *fakeSets { return &fakeSets{sets: map[string]*fakeSet{}} }

func (f *fakeSets) enter(method, set string) error {
	f.calls = append(f.calls, method+" "+set)
	if f.panic {
		panic("interface conversion: error is nl.errDumpInterrupted, not syscall.Errno")
	}
	if f.fail != nil {
		return f.fail(method, set)
	}
	return nil
}

func (f *fakeSets) IpsetProtocol() (uint8, uint8, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Protocol", ""); err != nil {
		return 0, 0, err
	}
	return 7, 6, f.proto
}

func (f *fakeSets) IpsetCreate(name, typ string, o netlink.IpsetCreateOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Create", name); err != nil {
		return err
	}
	if s, ok := f.sets[name]; ok {
		if s.typ != typ || s.family != o.Family || !o.Replace {
			return nl.IPSetError(nl.IPSET_ERR_EXIST)
		}
		return nil
	}
	if o.Timeout == nil || o.MaxElements != maxSetElements {
		return errors.New("fake: a set without timeout support or with the default size")
	}
	f.sets[name] = &fakeSet{typ: typ, family: o.Family, entries: map[netip.Prefix]uint32{}}
	return nil
}

func (f *fakeSets) IpsetDestroy(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Destroy", name); err != nil {
		return err
	}
	if _, ok := f.sets[name]; !ok {
		return syscall.ENOENT
	}
	delete(f.sets, name)
	return nil
}

func (f *fakeSets) IpsetFlush(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Flush", name); err != nil {
		return err
	}
	s, ok := f.sets[name]
	if !ok {
		return syscall.ENOENT
	}
	clear(s.entries)
	return nil
}

func (f *fakeSets) IpsetList(name string) (*netlink.IPSetResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("List", name); err != nil {
		return nil, err
	}
	s, ok := f.sets[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	res := &netlink.IPSetResult{SetName: name, TypeName: s.typ}
	for p, to := range s.entries {
		e := netlink.IPSetEntry{IP: net.IP(p.Addr().AsSlice()), Timeout: &to}
		if s.typ == "hash:net" {
			e.CIDR = uint8(p.Bits())
		}
		res.Entries = append(res.Entries, e)
	}
	return res, nil
}

func (f *fakeSets) key(name string, e *netlink.IPSetEntry) (*fakeSet, netip.Prefix, error) {
	s, ok := f.sets[name]
	if !ok {
		return nil, netip.Prefix{}, syscall.ENOENT
	}
	a, _ := netip.AddrFromSlice(e.IP)
	a = a.Unmap()
	bits := a.BitLen()
	if s.typ == "hash:net" {
		if e.CIDR == 0 {
			return nil, netip.Prefix{}, nl.IPSetError(nl.IPSET_ERR_INVALID_CIDR)
		}
		bits = int(e.CIDR)
	}
	if (s.family == syscall.AF_INET) != a.Is4() {
		return nil, netip.Prefix{}, nl.IPSetError(nl.IPSET_ERR_INVALID_FAMILY)
	}
	return s, netip.PrefixFrom(a, bits).Masked(), nil
}

func (f *fakeSets) IpsetAdd(name string, e *netlink.IPSetEntry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Add", name); err != nil {
		return err
	}
	s, p, err := f.key(name, e)
	if err != nil {
		return err
	}
	if _, ok := s.entries[p]; ok && !e.Replace {
		return nl.IPSetError(nl.IPSET_ERR_EXIST)
	}
	if e.Timeout == nil {
		return errors.New("fake: an entry without a timeout")
	}
	s.entries[p] = *e.Timeout
	return nil
}

func (f *fakeSets) IpsetAddMany(name string, entries []netlink.IPSetEntry) error {
	var first error
	for i := range entries {
		if err := f.IpsetAdd(name, &entries[i]); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (f *fakeSets) IpsetDel(name string, e *netlink.IPSetEntry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Del", name); err != nil {
		return err
	}
	s, p, err := f.key(name, e)
	if err != nil {
		return err
	}
	if _, ok := s.entries[p]; !ok {
		return nl.IPSetError(nl.IPSET_ERR_EXIST)
	}
	delete(s.entries, p)
	return nil
}

// entries returns the entries of set as prefix=timeout strings, sorted.
func (f *fakeSets) entries(set string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[set]
	if !ok {
		return nil
	}
	var out []string
	for p, to := range s.entries {
		out = append(out, fmt.Sprintf("%s=%ds", p, to))
	}
	slices.Sort(out)
	return out
}

func (f *fakeSets) setFail(fn func(method, set string) error) {
	f.mu.Lock()
	f.fail = fn
	f.mu.Unlock()
}

type setRig struct {
	fw     *IPSet
	v4, v6 *fakeTable
	sets   *fakeSets
	flows  *fakeFlows
}

func newSetRig(t *testing.T, opts Options) *setRig {
	t.Helper()
	r := &rig{v4: newFakeTable(), v6: newFakeTable(), flows: &fakeFlows{}}
	opts.Logger = zerolog.New(zerolog.NewTestWriter(t))
	ipt, err := newIPTables(opts, (&fakeOpener{v4: r.v4, v6: r.v6}).open, r.flows)
	if err != nil {
		t.Fatalf("newIPTables: %v", err)
	}
	ipt.restore = r.restore
	sets := newFakeSets()
	fw, err := newIPSet(opts, ipt, sets)
	if err != nil {
		t.Fatalf("newIPSet: %v", err)
	}
	t.Cleanup(fw.cut.wait) // the background conntrack cuts log to t
	return &setRig{fw: fw, v4: r.v4, v6: r.v6, sets: sets, flows: r.flows}
}

var net6 = netip.MustParsePrefix("2001:db8:1:2::/64")

func TestIPSetSetup(t *testing.T) {
	r := newSetRig(t, Options{KeepRulesOnSetup: true})
	canary := []string{"-s", "198.51.100.1", "-j", "ACCEPT"}
	mustNil(t, "canary", r.v4.Append("filter", "INPUT", canary...))
	mustNil(t, "setup", r.fw.Setup(ctx))
	mustNil(t, "setup again", r.fw.Setup(ctx))
	for name, want := range map[string]string{"ASTGUARD-a4": "hash:ip", "ASTGUARD-n4": "hash:net", "ASTGUARD-a6": "hash:ip", "ASTGUARD-n6": "hash:net"} {
		s := r.sets.sets[name]
		if s == nil || s.typ != want {
			t.Fatalf("set %s: %+v, want a %s", name, s, want)
		}
	}
	if s := r.sets.sets["ASTGUARD-a6"]; s.family != syscall.AF_INET6 {
		t.Fatalf("ASTGUARD-a6 family %d, want inet6", s.family)
	}
	for tab, sets := range map[*fakeTable][2]string{r.v4: {"ASTGUARD-a4", "ASTGUARD-n4"}, r.v6: {"ASTGUARD-a6", "ASTGUARD-n6"}} {
		want := []string{strings.Join(setSpec(sets[0]), " "), strings.Join(setSpec(sets[1]), " ")}
		if got := tab.rules("ASTGUARD"); !slices.Equal(got, want) {
			t.Fatalf("chain = %q, want %q", got, want)
		}
		if in := tab.rules("INPUT"); in[0] != "-j ASTGUARD" || countOf(in, "-j ASTGUARD") != 1 {
			t.Fatalf("INPUT = %q, want one jump first", in)
		}
	}
	if got := r.v4.rules("INPUT"); got[1] != "-s 198.51.100.1/32 -j ACCEPT" {
		t.Fatalf("canary lost: %q", got)
	}
}

// A single address goes into the family's hash:ip set, a network into its
// hash:net set, each with its timeout in whole seconds, rounded up and at
// most the kernel's; a permanent one gets the most. Blocking again renews
// the timeout. After Setup a Block is netlink messages only.
func TestIPSetBlockUnblock(t *testing.T) {
	r := newSetRig(t, Options{KeepRulesOnSetup: true})
	mustNil(t, "setup", r.fw.Setup(ctx))
	calls := r.v4.callCount() + r.v6.callCount()
	mustNil(t, "block", r.fw.Block(ctx,
		Entry{Prefix: pfx(addr2), Timeout: 90*time.Second + time.Millisecond},
		Entry{Prefix: pfx(netip.AddrFrom16(addr3.As16()))}, // mapped: IPv4
		Entry{Prefix: net6, Timeout: 40 * 24 * time.Hour},
		Entry{Prefix: pfx(addr6), Timeout: time.Hour},
		Entry{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Timeout: time.Minute},
	))
	if n := r.v4.callCount() + r.v6.callCount(); n != calls {
		t.Fatalf("Block ran iptables %d times after Setup, want none", n-calls)
	}
	for set, want := range map[string][]string{
		"ASTGUARD-a4": {"192.0.2.2/32=91s", "192.0.2.3/32=2147483s"},
		"ASTGUARD-n4": {"203.0.113.0/24=60s"},
		"ASTGUARD-a6": {"2001:db8::6/128=3600s"},
		"ASTGUARD-n6": {"2001:db8:1:2::/64=2147483s"},
	} {
		if got := r.sets.entries(set); !slices.Equal(got, want) {
			t.Errorf("%s = %q, want %q", set, got, want)
		}
	}
	r.fw.cut.wait()
	if want := []netip.Prefix{pfx(addr2), pfx(addr3), netip.MustParsePrefix("203.0.113.0/24"), pfx(addr6), net6}; !slices.Equal(r.flows.sorted(), want) {
		t.Fatalf("conntrack deletions = %v, want %v", r.flows.sorted(), want)
	}
	mustNil(t, "renew", r.fw.Block(ctx, Entry{Prefix: pfx(addr2), Timeout: time.Hour}))
	if got := r.sets.entries("ASTGUARD-a4"); got[0] != "192.0.2.2/32=3600s" {
		t.Fatalf("timeout not renewed: %q", got)
	}
	got, err := r.fw.Blocked(ctx)
	mustNil(t, "blocked", err)
	if len(got) != 5 || got[0].Prefix != pfx(addr2) || got[0].Timeout != time.Hour {
		t.Fatalf("Blocked = %v", got)
	}

	mustNil(t, "unblock", r.fw.Unblock(ctx, pfx(addr2), net6, pfx(addr6)))
	mustNil(t, "unblock again", r.fw.Unblock(ctx, pfx(addr2), net6))
	got, _ = r.fw.Blocked(ctx)
	if want := []netip.Prefix{pfx(addr3), netip.MustParsePrefix("203.0.113.0/24")}; !slices.Equal(prefixesIn(got), want) {
		t.Fatalf("Blocked after Unblock = %v, want %v", got, want)
	}
	// An address inside a blocked network is not the network.
	mustNil(t, "unblock inside", r.fw.Unblock(ctx, pfx(netip.MustParseAddr("203.0.113.9"))))
	if got := r.sets.entries("ASTGUARD-n4"); len(got) != 1 {
		t.Fatalf("n4 = %q", got)
	}
}

func prefixesIn(es []Entry) []netip.Prefix {
	out := make([]netip.Prefix, len(es))
	for i, e := range es {
		out[i] = e.Prefix
	}
	return out
}

// Someone flushes the chain, deletes a set's rule, unhooks the chain or
// destroys a set: Blocked shows what no longer drops, and the next Block
// repairs it.
func TestIPSetRepairs(t *testing.T) {
	r := newSetRig(t, Options{KeepRulesOnSetup: true})
	mustNil(t, "setup", r.fw.Setup(ctx))
	mustNil(t, "block", r.fw.Block(ctx, Entry{Prefix: pfx(addr2)}, Entry{Prefix: net6}))

	mustNil(t, "flush set", r.sets.IpsetFlush("ASTGUARD-a4")) // ipset flush
	if got, _ := r.fw.Blocked(ctx); !slices.Equal(prefixesIn(got), []netip.Prefix{net6}) {
		t.Fatalf("Blocked after ipset flush = %v", got)
	}
	mustNil(t, "block", r.fw.Block(ctx, Entry{Prefix: pfx(addr2)}))

	mustNil(t, "delete rule", r.v6.Delete("filter", "ASTGUARD", setSpec("ASTGUARD-n6")...))
	if got, _ := r.fw.Blocked(ctx); !slices.Equal(prefixesIn(got), []netip.Prefix{pfx(addr2)}) {
		t.Fatalf("Blocked without the n6 rule = %v, want the v6 network left out", got)
	}
	mustNil(t, "block", r.fw.Block(ctx, Entry{Prefix: net6}))
	if got, _ := r.fw.Blocked(ctx); len(got) != 2 {
		t.Fatalf("Blocked after the repair = %v", got)
	}

	mustNil(t, "unhook", r.v4.Delete("filter", "INPUT", "-j", "ASTGUARD"))
	mustNil(t, "flush chain", r.v4.ClearChain("filter", "ASTGUARD"))
	mustNil(t, "destroy set", r.sets.IpsetDestroy("ASTGUARD-a4"))
	if got, _ := r.fw.Blocked(ctx); !slices.Equal(prefixesIn(got), []netip.Prefix{net6}) {
		t.Fatalf("Blocked without chain, jump and set = %v", got)
	}
	mustNil(t, "block", r.fw.Block(ctx, Entry{Prefix: pfx(addr2)}))
	if got, _ := r.fw.Blocked(ctx); len(got) != 2 {
		t.Fatalf("Blocked after the repair = %v", got)
	}
	if in := r.v4.rules("INPUT"); countOf(in, "-j ASTGUARD") != 1 {
		t.Fatalf("jump not repaired: %q", in)
	}
}

// A guard that kept one rule per ban leaves them in the chain: Setup moves
// them into the sets and deletes them, without a moment they drop nothing.
func TestIPSetSetupMovesRulesIntoSets(t *testing.T) {
	r := newSetRig(t, Options{KeepRulesOnSetup: true})
	mustNil(t, "new chain", r.v4.NewChain("filter", "ASTGUARD"))
	mustNil(t, "rule", r.v4.Append("filter", "ASTGUARD", dropSpec(pfx(addr2), "old")...))
	mustNil(t, "rule", r.v4.Append("filter", "ASTGUARD", dropSpec(pfx(addr3), "old")...))
	mustNil(t, "setup", r.fw.Setup(ctx))
	if got := r.v4.rules("ASTGUARD"); len(got) != 2 || !strings.Contains(got[0], "--match-set ASTGUARD-a4") {
		t.Fatalf("chain = %q, want the set rules only", got)
	}
	if got := r.sets.entries("ASTGUARD-a4"); len(got) != 2 {
		t.Fatalf("a4 = %q, want the two addresses", got)
	}
	rules, err := r.fw.Rules(ctx)
	mustNil(t, "rules", err)
	if !slices.Equal(rules, pfxs(addr2, addr3)) {
		t.Fatalf("Rules = %v", rules)
	}
}

// Rules lists the sets and the chain's DROP rules and changes nothing.
func TestIPSetRulesChangeNothing(t *testing.T) {
	r := newSetRig(t, Options{KeepRulesOnSetup: true})
	got, err := r.fw.Rules(ctx)
	if err != nil || len(got) != 0 {
		t.Fatalf("Rules of nothing = %v, %v", got, err)
	}
	for _, c := range r.sets.calls {
		if !strings.HasPrefix(c, "Protocol") && !strings.HasPrefix(c, "List") {
			t.Fatalf("Rules changed the sets: %s", c)
		}
	}
	if r.v4.hasChain("ASTGUARD") || len(r.sets.sets) != 0 {
		t.Fatal("Rules created something")
	}
}

func TestIPSetTeardown(t *testing.T) {
	r := newSetRig(t, Options{KeepRulesOnSetup: true})
	mustNil(t, "setup", r.fw.Setup(ctx))
	mustNil(t, "block", r.fw.Block(ctx, Entry{Prefix: pfx(addr2)}))
	mustNil(t, "teardown", r.fw.Teardown(ctx))
	mustNil(t, "teardown again", r.fw.Teardown(ctx))
	if r.v4.hasChain("ASTGUARD") || r.v6.hasChain("ASTGUARD") || len(r.sets.sets) != 0 {
		t.Fatalf("left behind: chains %v %v, sets %v", r.v4.hasChain("ASTGUARD"), r.v6.hasChain("ASTGUARD"), r.sets.sets)
	}
}

func TestIPSetErrors(t *testing.T) {
	r := newSetRig(t, Options{KeepRulesOnSetup: true})
	mustNil(t, "setup", r.fw.Setup(ctx))
	for _, c := range []struct {
		name      string
		err       error
		temporary bool
	}{
		{"permission", syscall.EPERM, false},
		{"busy", syscall.EAGAIN, true},
		{"set full", nl.IPSetError(nl.IPSET_ERR_TYPE_SPECIFIC), false},
		{"wrong sender", errors.New("Wrong sender portid 1, expected 0"), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r.sets.setFail(func(string, string) error { return c.err })
			defer r.sets.setFail(nil)
			err := r.fw.Block(ctx, Entry{Prefix: pfx(addr2)})
			if !errors.Is(err, c.err) || IsTemporary(err) != c.temporary {
				t.Fatalf("Block = %v, temporary %v; want %v, temporary %v", err, IsTemporary(err), c.err, c.temporary)
			}
			if want := "firewall block 192.0.2.2: add to set ASTGUARD-a4: "; !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("message %q does not start with %q", err, want)
			}
			if err := r.fw.Unblock(ctx, pfx(addr2)); !errors.Is(err, c.err) {
				t.Fatalf("Unblock = %v", err)
			}
			if _, err := r.fw.Blocked(ctx); !errors.Is(err, c.err) {
				t.Fatalf("Blocked = %v", err)
			}
		})
	}
	// The netlink library panics on a reply it does not expect: an error.
	r.sets.mu.Lock()
	r.sets.panic = true
	r.sets.mu.Unlock()
	if err := r.fw.Block(ctx, Entry{Prefix: pfx(addr2)}); err == nil || !strings.Contains(err.Error(), "netlink ipset request failed") {
		t.Fatalf("Block with a panicking netlink = %v", err)
	}
	for _, p := range []string{"0.0.0.0/0", "::/0", "10.0.0.0/7", "fe80::/64"} {
		if err := r.fw.Block(ctx, Entry{Prefix: netip.MustParsePrefix(p)}); !errors.Is(err, ErrInvalidAddr) {
			t.Errorf("Block(%s) = %v, want ErrInvalidAddr", p, err)
		}
	}
}

// New: "rules" is IPTables, "ipset" IPSet or an error, "auto" IPSet where
// the kernel answers ipset requests, else IPTables.
func TestNewPicksTheMatch(t *testing.T) {
	ipt := func(Options) (*IPTables, error) {
		return newIPTables(Options{}, (&fakeOpener{v4: newFakeTable(), v6: newFakeTable()}).open, nil)
	}
	working := func() (setTable, error) { return newFakeSets(), nil }
	missing := func() (setTable, error) {
		s := newFakeSets()
		s.proto = syscall.EPROTONOSUPPORT
		return s, nil
	}
	for _, c := range []struct {
		match Match
		open  func() (setTable, error)
		want  string // "sets", "rules" or "error"
	}{
		{MatchAuto, working, "sets"},
		{"", working, "sets"},
		{MatchAuto, missing, "rules"},
		{MatchIPSet, working, "sets"},
		{MatchIPSet, missing, "error"},
		{MatchRules, working, "rules"},
		{"nft", working, "error"},
	} {
		fw, err := newFirewall(Options{Match: c.match, Logger: zerolog.New(zerolog.NewTestWriter(t))}, ipt, c.open)
		got := "error"
		switch fw.(type) {
		case *IPSet:
			got = "sets"
		case *IPTables:
			got = "rules"
		}
		if got != c.want {
			t.Errorf("match %q: %T, %v; want %s", c.match, fw, err, c.want)
		}
		if c.want == "error" && c.match == MatchIPSet && !errors.Is(err, ErrSetsUnavailable) {
			t.Errorf("match ipset without sets: %v, want ErrSetsUnavailable", err)
		}
	}
}

func TestSetTimeout(t *testing.T) {
	for d, want := range map[time.Duration]uint32{
		0:                           2147483,
		time.Nanosecond:             1,
		time.Second:                 1,
		time.Second + 1:             2,
		24 * time.Hour:              86400,
		MaxSetTimeout:               2147483,
		100 * 24 * time.Hour:        2147483,
		-time.Second:                2147483,
		MaxSetTimeout - time.Second: 2147482,
	} {
		if got := setTimeout(d); got != want {
			t.Errorf("setTimeout(%v) = %d, want %d", d, got, want)
		}
	}
}

// The kernel's batch of adds: more than a chunk of entries in a real set,
// in a private network namespace; one the kernel refuses (an IPv6 address
// in an IPv4 set) is named in the error and the others are added.
func TestNetnsIpsetAddMany(t *testing.T) {
	testenv.RequireCommand(t, "ipset")
	if !testenv.InNetns(t) {
		return
	}
	h, err := openSets()
	if err != nil {
		t.Fatal(err)
	}
	sets := safeSets{h}
	timeout := uint32(3600)
	if err := sets.IpsetCreate("AGTBATCH-a4", "hash:ip", netlink.IpsetCreateOptions{Family: syscall.AF_INET, Timeout: &timeout, MaxElements: maxSetElements}); err != nil {
		t.Fatal(err)
	}
	var entries []netlink.IPSetEntry
	for i := range 3*batchChunk + 7 {
		a := netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})
		entries = append(entries, netlink.IPSetEntry{IP: net.IP(a.AsSlice()), Timeout: &timeout, Replace: true})
	}
	bad := len(entries) / 2
	entries[bad].IP = net.ParseIP("2001:db8::1")
	err = sets.IpsetAddMany("AGTBATCH-a4", entries)
	if err == nil || !strings.Contains(err.Error(), "2001:db8::1") {
		t.Fatalf("IpsetAddMany with an IPv6 address in an IPv4 set = %v, want an error naming it", err)
	}
	res, err := sets.IpsetList("AGTBATCH-a4")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Entries) != len(entries)-1 {
		t.Fatalf("%d entries in the set, want %d", len(res.Entries), len(entries)-1)
	}
	// Again: renewed, no error, and the socket still in step.
	entries[bad].IP = net.IP(netip.MustParseAddr("100.64.255.255").AsSlice())
	if err := sets.IpsetAddMany("AGTBATCH-a4", entries); err != nil {
		t.Fatal(err)
	}
	if res, _ := sets.IpsetList("AGTBATCH-a4"); len(res.Entries) != len(entries) {
		t.Fatalf("%d entries after the second batch, want %d", len(res.Entries), len(entries))
	}
	if err := sets.IpsetAddMany("AGTNOSUCH-a4", entries[:3]); !isNoSet(err) {
		t.Fatalf("IpsetAddMany to a missing set = %v, want ENOENT", err)
	}
}
