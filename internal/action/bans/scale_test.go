package bans

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/testenv"
)

var (
	net6   = netip.MustParsePrefix("2001:db8:1:2::/64")
	inNet6 = netip.MustParseAddr("2001:db8:1:2::5")
)

// An IPv6 address is banned with its /64 (IPv6Prefix): a second address
// of it extends the same ban, and lifting any address of it lifts the
// network and says which.
func TestIPv6BannedByNetwork(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := e.opts()
	o.IPv6Prefix = 64
	m := e.start(o)
	b, err := ban(m, inNet6, time.Hour, "first", "")
	if err != nil || b.Prefix != net6 {
		t.Fatalf("Ban(%s) = %+v, %v; want the ban of %s", inNet6, b, err, net6)
	}
	e.clock.Add(time.Minute)
	if b, err := ban(m, netip.MustParseAddr("2001:db8:1:2::77"), time.Hour, "second", ""); err != nil || b.Prefix != net6 || !b.Until.Equal(t0.Add(61*time.Minute)) {
		t.Fatalf("second address of the /64: %+v, %v; want the same ban extended", b, err)
	}
	if _, err := ban(m, attack, time.Hour, "v4", ""); err != nil {
		t.Fatal(err)
	}
	if got := e.fw.prefixes(); !slices.Equal(got, []netip.Prefix{single(attack), net6}) {
		t.Fatalf("firewall = %v, want %s alone and the /64", got, attack)
	}
	if len(m.List()) != 2 {
		t.Fatalf("List = %+v", m.List())
	}
	lifted, err := m.Lift(ctx, netip.MustParseAddr("2001:db8:1:2::abcd"))
	if err != nil || len(lifted) != 1 || lifted[0].Prefix != net6 {
		t.Fatalf("Lift inside the /64 = %+v, %v; want its ban", lifted, err)
	}
	if got := e.fw.prefixes(); !slices.Equal(got, []netip.Prefix{single(attack)}) {
		t.Fatalf("firewall after the lift = %v", got)
	}
	if n := len(e.log.lines("ban lifted: the network holding the address")); n != 1 {
		t.Fatalf("%d lines saying a network's ban was lifted, want 1", n)
	}
	if err := m.Unban(ctx, inNet6); !errors.Is(err, ErrNotBanned) {
		t.Fatalf("Unban after the lift = %v, want ErrNotBanned", err)
	}
	if st := mustState(t, e.path); len(st) != 1 || st[0].Prefix != single(attack) {
		t.Fatalf("state = %+v", st)
	}
}

// A /64 holding a never-blocked address is not banned whole: the address
// alone is, and the log says why; the never-blocked one is refused.
func TestNetworkHoldingNeverBlockedNotBannedWhole(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := e.opts()
	o.IPv6Prefix = 64
	o.Never = []netip.Prefix{netip.MustParsePrefix("2001:db8:1:2::1/128")}
	m := e.start(o)
	b, err := ban(m, inNet6, time.Hour, "x", "")
	if err != nil || b.Prefix != single(inNet6) {
		t.Fatalf("Ban(%s) = %+v, %v; want the address alone", inNet6, b, err)
	}
	lines := e.log.lines("prefix not banned whole: it holds a never-blocked address; the address alone is banned")
	if len(lines) != 1 || lines[0]["prefix"] != net6.String() || lines[0]["never"] != "2001:db8:1:2::1/128" || lines[0]["ip"] != inNet6.String() {
		t.Fatalf("lines saying why the /64 was not banned: %v", lines)
	}
	if _, err := ban(m, netip.MustParseAddr("2001:db8:1:2::1"), time.Hour, "x", ""); !errors.Is(err, ErrProtected) {
		t.Fatalf("Ban of the never-blocked address = %v, want ErrProtected", err)
	}
	if got := e.fw.prefixes(); !slices.Equal(got, []netip.Prefix{single(inNet6)}) {
		t.Fatalf("firewall = %v", got)
	}
}

// Request.Prefix bans a network (or an address) as it is, Request.Origin
// names who decided; a ban of this guard stays this guard's.
func TestRequestPrefixAndOrigin(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := e.opts()
	o.IPv6Prefix = 64
	o.Never = []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32")}
	m := e.start(o)
	range4 := netip.MustParsePrefix("198.51.100.0/24")
	b, err := m.Ban(ctx, Request{Prefix: range4, TTL: time.Hour, Reason: "crowdsec decision", Origin: OriginCrowdSec})
	if err != nil || b.Prefix != range4 || b.Origin != OriginCrowdSec || b.Target() != "198.51.100.0/24" {
		t.Fatalf("Ban of a range = %+v, %v", b, err)
	}
	if b, err := m.Ban(ctx, Request{Prefix: single(third), TTL: time.Hour, Origin: "crowdsec"}); err != nil || b.Prefix != single(third) {
		t.Fatalf("Ban of a single IPv6 address by Prefix = %+v, %v; want it not widened", b, err)
	}
	for _, p := range []string{"192.0.2.0/24", "0.0.0.0/0", "::/0", "10.0.0.0/7"} {
		if _, err := m.Ban(ctx, Request{Prefix: netip.MustParsePrefix(p), TTL: time.Hour, Origin: "crowdsec"}); err == nil {
			t.Errorf("Ban of %s accepted", p)
		}
	}
	if _, err := m.Ban(ctx, Request{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Origin: "crowdsec"}); !errors.Is(err, ErrProtected) {
		t.Errorf("a range holding a never-blocked address: %v, want ErrProtected", err)
	}
	// Origins: this guard's ban stays this guard's (only its Until grows)
	// when another source bans it, and takes over another source's ban.
	own, err := ban(m, attack, time.Hour, "guard", "")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := m.Ban(ctx, Request{Addr: attack, TTL: 2 * time.Hour, Reason: "decision", Origin: OriginCrowdSec}); b.Origin != OriginAstguard ||
		b.Reason != own.Reason || !b.Until.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("re-ban by crowdsec of the guard's ban: %+v", b)
	}
	if err := m.UnbanOrigin(ctx, single(attack), OriginCrowdSec); !errors.Is(err, ErrNotBanned) {
		t.Fatalf("UnbanOrigin(crowdsec) of the guard's ban = %v, want ErrNotBanned", err)
	}
	if b, _ := m.Ban(ctx, Request{Prefix: range4, TTL: time.Hour, Reason: "guard"}); b.Origin != OriginAstguard || b.Reason != "guard" {
		t.Fatalf("re-ban by the guard of crowdsec's ban: %+v", b)
	}
	if err := m.UnbanOrigin(ctx, range4, OriginCrowdSec); !errors.Is(err, ErrNotBanned) {
		t.Fatalf("UnbanOrigin(crowdsec) after the guard took the ban over = %v, want ErrNotBanned", err)
	}
	// Another source's IPv6 address is banned as it is, not widened.
	v6 := netip.MustParseAddr("2001:db8:7::5")
	if b, err := m.Ban(ctx, Request{Addr: v6, TTL: time.Hour, Origin: OriginCrowdSec}); err != nil || b.Prefix != single(v6) {
		t.Fatalf("crowdsec's IPv6 address: %+v, %v; want it alone", b, err)
	}
	if got := e.fw.prefixes(); !slices.Equal(got, []netip.Prefix{range4, single(attack), single(third), single(v6)}) {
		t.Fatalf("firewall = %v", got)
	}
	if err := m.UnbanOrigin(ctx, single(v6), OriginCrowdSec); err != nil {
		t.Fatalf("UnbanOrigin = %v", err)
	}
	if _, err := m.Ban(ctx, Request{Prefix: range4, TTL: time.Hour, Origin: OriginCrowdSec}); err != nil {
		t.Fatal(err)
	}
	if err := m.Unban(ctx, netip.MustParseAddr("198.51.100.1")); err != nil { // lifts the range holding it
		t.Fatal(err)
	}
	if _, err := m.Ban(ctx, Request{Prefix: range4, TTL: time.Hour, Origin: OriginCrowdSec}); err != nil {
		t.Fatal(err)
	}
	// An address inside a range is not the range.
	if err := m.UnbanOrigin(ctx, single(netip.MustParseAddr("198.51.100.9")), OriginCrowdSec); !errors.Is(err, ErrNotBanned) {
		t.Fatalf("UnbanOrigin of an address in a range = %v, want ErrNotBanned", err)
	}
	if err := m.UnbanOrigin(ctx, range4, OriginCrowdSec); err != nil {
		t.Fatalf("UnbanOrigin of the range = %v", err)
	}
	if got := e.fw.prefixes(); slices.Contains(got, range4) {
		t.Fatalf("the range's entry stayed: %v", got)
	}
}

// countWrites counts the writes of the state (journal appends and state
// files) until the test ends.
func countWrites(t *testing.T) *atomic.Int32 {
	var n atomic.Int32
	hook := func() error { n.Add(1); return nil }
	rename := func(string) error { n.Add(1); return nil }
	testHookBeforeAppend.Store(&hook)
	testHookBeforeRename.Store(&rename)
	t.Cleanup(func() { testHookBeforeAppend.Store(nil); testHookBeforeRename.Store(nil) })
	return &n
}

// BanMany: one write and one firewall batch for all of its requests, each
// with its own outcome.
func TestBanManyOneWriteOneBatch(t *testing.T) {
	e := newEnv(t)
	o := e.opts()
	o.Never = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	m := e.start(o)
	writes := countWrites(t)
	reqs := make([]Request, 1000)
	for i := range reqs {
		reqs[i] = Request{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), TTL: time.Hour, Reason: "flood"}
	}
	reqs[500].Addr = netip.MustParseAddr("10.1.2.3")
	res := m.BanMany(ctx, reqs)
	for i, r := range res {
		if i == 500 {
			if !errors.Is(r.Err, ErrProtected) {
				t.Fatalf("request 500 (protected): %v", r.Err)
			}
			continue
		}
		if r.Err != nil || r.Ban.Prefix != single(reqs[i].Addr) {
			t.Fatalf("request %d: %+v", i, r)
		}
	}
	if n := writes.Load(); n != 1 {
		t.Fatalf("%d writes for one BanMany, want 1", n)
	}
	if !slices.Equal(e.fw.batches, []int{999}) {
		t.Fatalf("firewall batches %v, want one of 999", e.fw.batches)
	}
	if n := len(mustState(t, e.path)); n != 999 {
		t.Fatalf("%d bans in the state, want 999", n)
	}
	if lines := e.log.lines("bans recorded"); len(lines) != 1 || lines[0]["recorded"] != float64(999) || lines[0]["refused"] != float64(1) {
		t.Fatalf("summary lines: %v", lines)
	}
}

// Bans made while a write is in flight share the next write: a burst
// costs one write, not one each. Each outcome comes after its write.
func TestGroupCommit(t *testing.T) {
	e := newEnv(t)
	m := e.start(e.opts())
	var appends atomic.Int32
	release := make(chan struct{})
	hook := func() error {
		if appends.Add(1) == 1 {
			<-release // the first write is in flight until the others wait
		}
		return nil
	}
	testHookBeforeAppend.Store(&hook)
	t.Cleanup(func() { testHookBeforeAppend.Store(nil) })

	const n = 50
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a := netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})
			if _, err := ban(m, a, time.Hour, "burst", ""); err != nil {
				t.Error(err)
			}
			if !slices.Contains(addrsOf(mustState(t, e.path)), a) {
				t.Errorf("Ban(%s) returned before its ban was written", a)
			}
		})
	}
	testenv.WaitFor(t, "one write in flight and the other bans waiting", 10*time.Second, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return appends.Load() == 1 && len(m.pending) == n-1
	})
	close(release)
	wg.Wait()
	if got := appends.Load(); got != 2 {
		t.Fatalf("%d writes for a burst of %d bans, want 2 (the first, then all the others)", got, n)
	}
	if len(mustState(t, e.path)) != n {
		t.Fatal("bans missing from the state")
	}
}

// A ban longer than the kernel keeps a set entry (or permanent) has its
// entry renewed by the periodic check once the kernel's timeout runs short
// of what the ban needs; a short ban's is left alone.
func TestRenewLongBans(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	if _, err := ban(m, attack, 0, "permanent", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := ban(m, other, time.Hour, "short", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := ban(m, third, 60*24*time.Hour, "sixty days", ""); err != nil {
		t.Fatal(err)
	}
	// The kernel's entries, some time later: what a set firewall reports.
	e.fw.set(func(f *fakeFW) {
		f.rules[single(attack)] = firewall.Entry{Prefix: single(attack), Timeout: 20 * 24 * time.Hour}
		f.rules[single(other)] = firewall.Entry{Prefix: single(other), Timeout: 59 * time.Minute}
		f.rules[single(third)] = firewall.Entry{Prefix: single(third), Timeout: firewall.MaxSetTimeout - time.Hour}
	})
	before := e.fw.countCalls("block")
	if !m.sync(ctx) {
		t.Fatal("sync reported a problem")
	}
	if got := e.fw.countCalls("block") - before; got != 1 || e.fw.countCalls("block "+attack.String()) != 2 {
		t.Fatalf("%d entries renewed, want the permanent ban's only; calls %v", got, e.fw.calls)
	}
	if n := len(e.log.lines("kernel timeouts of long bans renewed")); n != 1 {
		t.Fatalf("%d renewal lines, want 1", n)
	}
	// What a ban asks of the firewall: the time it has left, 0 for good.
	for _, c := range []struct {
		b    Ban
		want time.Duration
	}{
		{Ban{Prefix: single(attack), Since: t0}, 0},
		{Ban{Prefix: single(attack), Since: t0, Until: t0.Add(90 * time.Minute)}, 90 * time.Minute},
		{Ban{Prefix: single(attack), Since: t0, Until: t0.Add(time.Millisecond)}, time.Second},
	} {
		if got := c.b.entry(t0).Timeout; got != c.want {
			t.Errorf("entry of %+v: timeout %v, want %v", c.b, got, c.want)
		}
	}
}

// The journal: a record a crash cut short is ignored, a damaged record
// makes the state corrupt, and once the journal has grown past the state
// file the next write folds it in.
func TestJournal(t *testing.T) {
	e := newEnv(t)
	m := e.start(e.opts())
	if _, err := ban(m, attack, time.Hour, "x", ""); err != nil {
		t.Fatal(err)
	}
	j := JournalName(e.path)
	good, err := os.ReadFile(j)
	if err != nil || bytes.Count(good, []byte("\n")) != 1 {
		t.Fatalf("journal after one ban: %q, %v", good, err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(j); err != nil || fi.Size() != 0 {
		t.Fatalf("journal after a clean stop: %v, %v; want empty, folded into the state file", fi, err)
	}
	for _, c := range []struct {
		name, journal string
		want          []netip.Addr
		corrupt       bool
	}{
		{"cut short", string(good) + `{"ban":{"prefix":"203.0.113.8/32","since":"2026-03`, []netip.Addr{attack}, false},
		{"a lift", string(good) + `{"lift":"203.0.113.7/32"}` + "\n", nil, false},
		{"damaged", `{"ban":{"prefix":"203.0.113.8/32"}}` + "\n" + string(good), nil, true},
		{"unknown field", `{"ban":{"prefix":"203.0.113.8/32","since":"2026-03-01T12:00:00Z","reason":"","dry_run":false,"origin":"astguard","x":1}}` + "\n", nil, true},
		{"two kinds", `{"ban":{"prefix":"203.0.113.8/32","since":"2026-03-01T12:00:00Z","reason":"","dry_run":false,"origin":"astguard"},"lift":"203.0.113.8/32"}` + "\n", nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			mustWrite(t, j, []byte(c.journal), 0o600)
			st, err := ReadState(e.path)
			if c.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("ReadState = %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil || !slices.Equal(addrsOf(st.Bans), c.want) {
				t.Fatalf("ReadState = %v, %v; want %v", addrsOf(st.Bans), err, c.want)
			}
		})
	}

	// Growth: the journal grows past 1 MiB; the next write folds it into
	// the state file.
	if err := os.Remove(j); err != nil {
		t.Fatal(err)
	}
	m = e.start(e.opts())
	reqs := make([]Request, 6000)
	for i := range reqs {
		reqs[i] = Request{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), TTL: time.Hour, Reason: strings.Repeat("r", 100)}
	}
	var sizes []int64
	const round = 999
	for c := range slices.Chunk(reqs, round) {
		m.BanMany(ctx, c)
		fi, err := os.Stat(j)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, fi.Size())
	}
	grown := slices.IndexFunc(sizes, func(n int64) bool { return n >= compactAt })
	if grown < 0 || grown+1 >= len(sizes) || sizes[grown+1] != 0 {
		t.Fatalf("journal sizes after each round: %v; want one past %d, then empty", sizes, compactAt)
	}
	if snap, err := readSnapshot(e.path); err != nil || len(snap.Bans) != 1+(grown+2)*round {
		t.Fatalf("state file after the fold: %d bans, %v; want %d (and the ban of %s)", len(snap.Bans), err, 1+(grown+2)*round, attack)
	}
	// A crash between the fold's rename and the journal's emptying leaves
	// the whole journal next to the new state file: replayed over it, it
	// gives that state again.
	if err := m.Close(ctx); err != nil { // everything in the state file
		t.Fatal(err)
	}
	before := mustState(t, e.path)
	mustWrite(t, j, good, 0o600) // the ban of attack, an hour from t0, as journaled before
	if got := mustState(t, e.path); len(got) != len(before) || !slices.Equal(addrsOf(got), addrsOf(before)) {
		t.Fatalf("replay over the newer state file changed it: %d bans, want %d", len(got), len(before))
	}
}

// A corrupt journal is moved aside with its state file.
func TestCorruptJournalMovedAside(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustWrite(t, e.path, []byte(`{"version":2,"bans":[]}`), 0o600)
	mustWrite(t, JournalName(e.path), []byte("not json\n"), 0o600)
	m := e.start(e.opts())
	if _, err := ban(m, attack, time.Hour, "x", ""); err != nil {
		t.Fatal(err)
	}
	moved := e.log.lines("corrupt bans state file moved aside: the guard goes on without its bans and writes a new one; the old one is kept for you to read")
	if len(moved) != 1 {
		t.Fatalf("moved-aside lines: %v", moved)
	}
	dst := moved[0]["moved_to"].(string)
	if got, err := os.ReadFile(JournalName(dst)); err != nil || string(got) != "not json\n" {
		t.Fatalf("the corrupt journal kept at %s: %q, %v", JournalName(dst), got, err)
	}
	if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{attack}) {
		t.Fatalf("state after the move = %v", got)
	}
}

// UnbanOffline of an address in a banned /64 lifts the network's ban, in
// the journal, and says so.
func TestUnbanOfflineLiftsNetwork(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := e.opts()
	o.IPv6Prefix = 64
	m := e.start(o)
	if _, err := ban(m, inNet6, time.Hour, "x", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := ban(m, attack, time.Hour, "x", ""); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	lifted, err := UnbanOffline(ctx, e.path, e.fw, netip.MustParseAddr("2001:db8:1:2::99"))
	if err != nil || len(lifted) != 1 || lifted[0].Prefix != net6 {
		t.Fatalf("UnbanOffline inside the /64 = %+v, %v", lifted, err)
	}
	if got := e.fw.prefixes(); !slices.Equal(got, []netip.Prefix{single(attack)}) {
		t.Fatalf("firewall = %v", got)
	}
	if raw, _ := os.ReadFile(JournalName(e.path)); !strings.Contains(string(raw), fmt.Sprintf(`{"lift":"%s"}`, net6)) {
		t.Fatalf("journal = %q, want the lift", raw)
	}
	if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{attack}) {
		t.Fatalf("state = %v", got)
	}
}

// Run folds a journal grown past the state file into it soon after the
// write that grew it, without waiting for the next ban.
func TestRunFoldsTheJournal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	stop := runInBackground(t, m)
	defer stop()
	reqs := make([]Request, 5000)
	for i := range reqs {
		reqs[i] = Request{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), TTL: time.Hour, Reason: strings.Repeat("r", 200)}
	}
	m.BanMany(ctx, reqs) // over 1 MiB of journal
	testenv.WaitFor(t, "Run to fold the journal into the state file", 10*time.Second, func() bool {
		fi, err := os.Stat(JournalName(e.path))
		return err == nil && fi.Size() == 0
	})
	if snap, err := readSnapshot(e.path); err != nil || len(snap.Bans) != len(reqs) {
		t.Fatalf("state file after the fold: %d bans, %v", len(snap.Bans), err)
	}
}
