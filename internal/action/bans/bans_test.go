package bans

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/fsafe"
	"github.com/astguard/astguard/internal/testenv"
)

var (
	ctx    = context.Background()
	attack = netip.MustParseAddr("203.0.113.7")
	other  = netip.MustParseAddr("203.0.113.8")
	third  = netip.MustParseAddr("2001:db8::9")
	t0     = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

// clock is a settable clock for tests that do not run Run.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type env struct {
	t     *testing.T
	path  string
	fw    *fakeFW
	clock *clock
	log   *logBuf
}

func newEnv(t *testing.T) *env {
	lb := &logBuf{t: t}
	return &env{t: t, path: filepath.Join(t.TempDir(), "bans.json"), fw: newFakeFW(), clock: &clock{now: t0}, log: lb}
}

func (e *env) opts() Options {
	return Options{
		Firewall:  e.fw,
		StatePath: e.path,
		Clock:     e.clock.Now,
		Logger:    zerolog.New(e.log),
	}
}

// start builds and starts a Manager; Close runs at cleanup.
func (e *env) start(o Options) *Manager {
	e.t.Helper()
	m, err := New(o)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	if err := m.Start(ctx); err != nil {
		e.t.Fatalf("Start: %v", err)
	}
	e.t.Cleanup(func() { _ = m.Close(ctx) })
	return m
}

// crash abandons m like SIGKILL would: nothing saved, nothing torn down,
// the kernel drops the lock.
func crash(m *Manager) {
	m.mu.Lock()
	m.closed = true
	m.lock.release()
	m.mu.Unlock()
}

// mustMode0600 fails t unless path is a file of mode 0600.
func mustMode0600(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: mode %v, want 0600", path, fi.Mode().Perm())
	}
}

func mustState(t *testing.T, path string) []Ban {
	t.Helper()
	st, err := ReadState(path)
	if err != nil {
		t.Fatalf("ReadState: %v", err)
	}
	if st.Version != StateVersion {
		t.Fatalf("state file version %d, want %d", st.Version, StateVersion)
	}
	return st.Bans
}

// ban bans a through m, as the guard's block_ip does.
func ban(m *Manager, a netip.Addr, ttl time.Duration, reason, ext string) (Ban, error) {
	return m.Ban(ctx, Request{Addr: a, TTL: ttl, Reason: reason, Extension: ext})
}

func addrsOf(bs []Ban) []netip.Addr {
	out := make([]netip.Addr, len(bs))
	for i, b := range bs {
		out[i] = b.Prefix.Addr()
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

func TestBanRecordsAndApplies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	b, err := m.Ban(ctx, Request{Addr: attack, TTL: time.Hour, Reason: "auth_failures critical: 5 failed authentications in 1m",
		Rule: "auth_failures", Extension: "SIP/200"})
	if err != nil {
		t.Fatal(err)
	}
	want := Ban{Prefix: netip.PrefixFrom(attack, 32), Since: t0, Until: t0.Add(time.Hour), Reason: "auth_failures critical: 5 failed authentications in 1m",
		Rule: "auth_failures", Extension: "SIP/200", Origin: OriginAstguard}
	if b != want {
		t.Fatalf("Ban = %+v\nwant %+v", b, want)
	}
	if got := m.List(); len(got) != 1 || got[0] != want {
		t.Fatalf("List = %+v", got)
	}
	st := mustState(t, e.path)
	if len(st) != 1 || !st[0].Until.Equal(want.Until) || st[0].Prefix != want.Prefix || st[0].Extension != "SIP/200" ||
		st[0].Rule != "auth_failures" || st[0].DryRun || st[0].Origin != OriginAstguard {
		t.Fatalf("state = %+v", st)
	}
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{attack}) {
		t.Fatalf("firewall = %v", got)
	}
	if c := e.fw.comment(attack); c != "astguard: auth_failures critical: 5 failed authentications in 1m (SIP/200)" {
		t.Fatalf("comment = %q", c)
	}
	mustMode0600(t, JournalName(e.path))
	if e.log.count("address banned") != 1 {
		t.Fatalf("no alert line: %s", e.log)
	}
}

func TestNeverBlocked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := e.opts()
	o.Never = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),              // allow-listed office network
		netip.MustParsePrefix("192.0.2.10/32"),           // AMI server
		netip.MustParsePrefix("::ffff:198.51.100.0/120"), // given in mapped form
		netip.MustParsePrefix("127.0.0.0/8"),             // loopback
		netip.MustParsePrefix("2001:db8:aaaa::/48"),      // IPv6 allow-list
	}
	m := e.start(o)
	for _, s := range []string{
		"10.1.2.3", "::ffff:10.1.2.3",
		"192.0.2.10", "::ffff:192.0.2.10",
		"198.51.100.7", "::ffff:198.51.100.7",
		"127.0.0.1", "::ffff:127.0.0.1",
		"2001:db8:aaaa::1",
	} {
		_, err := ban(m, netip.MustParseAddr(s), time.Hour, "test", "")
		if !errors.Is(err, ErrProtected) {
			t.Errorf("Ban(%s) = %v, want ErrProtected", s, err)
		}
	}
	if _, err := os.Stat(e.path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused bans changed the state file: %v", err)
	}
	if n := e.fw.countCalls("block"); n != 0 {
		t.Fatalf("firewall called %d times for protected addresses", n)
	}
	if len(m.List()) != 0 {
		t.Fatal("protected address listed")
	}
	if _, err := ban(m, netip.MustParseAddr("192.0.2.11"), time.Hour, "test", ""); err != nil {
		t.Fatalf("neighbour of the AMI host refused: %v", err)
	}
}

func TestMappedAddressIsStoredUnmapped(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	mapped := netip.AddrFrom16(attack.As16())
	b, err := ban(m, mapped, time.Hour, "x", "")
	if err != nil || b.Prefix.Addr() != attack {
		t.Fatalf("Ban = %+v, %v", b, err)
	}
	if err := m.Unban(ctx, mapped); err != nil {
		t.Fatal(err)
	}
	if _, err := ban(m, netip.Addr{}, time.Hour, "x", ""); err == nil {
		t.Fatal("zero address banned")
	}
}

func TestPersistBeforeApply(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	seen := false
	e.fw.set(func(f *fakeFW) {
		f.onBlock = func(a netip.Addr) {
			st, err := ReadState(e.path)
			seen = err == nil && slices.Contains(addrsOf(st.Bans), a)
		}
		f.blockErr = errors.New("iptables: refused")
	})
	_, err := ban(m, attack, time.Hour, "x", "")
	if err == nil || !strings.Contains(err.Error(), "recorded but not applied yet: iptables: refused") {
		t.Fatalf("Ban = %v, want the firewall error", err)
	}
	if !seen {
		t.Fatal("the firewall was asked before the ban was in the state file")
	}
	if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{attack}) {
		t.Fatalf("state after failed apply = %v", got)
	}
	if len(m.List()) != 1 {
		t.Fatal("ban forgotten after firewall failure")
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// Restart with a working firewall: the ban is applied.
	e.fw = newFakeFW()
	e.start(e.opts())
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{attack}) {
		t.Fatalf("firewall after restart = %v", got)
	}
}

func TestRebanExtends(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	if _, err := ban(m, attack, time.Hour, "first", "SIP/200"); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(30 * time.Minute)
	b, err := ban(m, attack, time.Hour, "second", "")
	if err != nil {
		t.Fatal(err)
	}
	if !b.Since.Equal(t0) || !b.Until.Equal(t0.Add(90*time.Minute)) || b.Reason != "second" || b.Extension != "SIP/200" {
		t.Fatalf("re-ban = %+v", b)
	}
	b, _ = ban(m, attack, time.Minute, "short", "")
	if !b.Until.Equal(t0.Add(90 * time.Minute)) {
		t.Fatalf("shorter re-ban shortened Until: %v", b.Until)
	}
	b, _ = ban(m, attack, 0, "permanent", "")
	if !b.Permanent() {
		t.Fatal("ttl 0 not permanent")
	}
	b, _ = ban(m, attack, time.Hour, "timed again", "")
	if !b.Permanent() {
		t.Fatal("permanent ban became timed")
	}
	if n := len(mustState(t, e.path)); n != 1 {
		t.Fatalf("state holds %d bans, want 1", n)
	}
}

func TestUnban(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	if _, err := ban(m, attack, time.Hour, "x", ""); err != nil {
		t.Fatal(err)
	}
	if err := m.Unban(ctx, attack); err != nil {
		t.Fatal(err)
	}
	if len(m.List()) != 0 || len(mustState(t, e.path)) != 0 || len(e.fw.addrs()) != 0 {
		t.Fatal("ban left somewhere after Unban")
	}
	if err := m.Unban(ctx, attack); !errors.Is(err, ErrNotBanned) {
		t.Fatalf("second Unban = %v, want ErrNotBanned", err)
	}
}

func TestNotStartedAndClosed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m, err := New(e.opts())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ban(m, attack, time.Hour, "x", ""); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Ban before Start = %v", err)
	}
	if err := m.Run(ctx); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Run before Start = %v", err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ban(m, attack, time.Hour, "x", ""); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ban after Close = %v", err)
	}
	if _, err := New(Options{StatePath: "x"}); err == nil {
		t.Fatal("New without firewall accepted")
	}
	if _, err := New(Options{Firewall: e.fw}); err == nil {
		t.Fatal("New without state path accepted")
	}
}

func TestCloseLeavesRulesUnlessTeardown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	ban(m, attack, time.Hour, "x", "")
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(e.fw.addrs()) != 1 || e.fw.teardowns != 0 {
		t.Fatal("Close removed the rules")
	}
	o := e.opts()
	o.TeardownOnClose = true
	m = e.start(o)
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if e.fw.teardowns != 1 || len(e.fw.addrs()) != 0 {
		t.Fatal("TeardownOnClose did not tear down")
	}
	if len(mustState(t, e.path)) != 1 {
		t.Fatal("teardown dropped the recorded ban")
	}
}

func TestStartDropsExpiredAndRemovesTheirRules(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	ban(m, attack, time.Hour, "x", "")
	ban(m, other, 3*time.Hour, "y", "")
	ban(m, third, 0, "permanent", "")
	crash(m)

	// Restart two hours later; the kernel kept the rules (KeepRulesOnSetup).
	e.clock.Add(2 * time.Hour)
	m2 := e.start(e.opts())
	if got := addrsOf(m2.List()); !slices.Equal(got, []netip.Addr{other, third}) {
		t.Fatalf("List after restart = %v", got)
	}
	if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{other, third}) {
		t.Fatalf("state after restart = %v", got)
	}
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{other, third}) {
		t.Fatalf("firewall after restart = %v (expired rule must go)", got)
	}
}

func TestRestartAfterFlushingSetupReappliesAll(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	ban(m, attack, time.Hour, "x", "")
	ban(m, third, time.Hour, "y", "")
	crash(m)
	e.fw.flushSetup = true
	e.start(e.opts())
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{attack, third}) {
		t.Fatalf("firewall after restart = %v", got)
	}
	if n := e.log.count("firewall rules missing, re-applied"); n != 0 {
		t.Fatalf("start-up re-apply reported as an incident %d times", n)
	}
}

func TestLockedWhileRunning(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(e.opts())
	m2, _ := New(e.opts())
	if err := m2.Start(ctx); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Start = %v, want ErrLocked", err)
	}
	if _, err := UnbanOffline(ctx, e.path, e.fw, attack); !errors.Is(err, ErrLocked) {
		t.Fatalf("UnbanOffline while running = %v, want ErrLocked", err)
	}
}

// logLines returns the JSON log lines with message msg, decoded.
func (l *logBuf) lines(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// A corrupt state file does not stop the guard: it is moved aside, kept
// for a person to read, the manager starts without its bans, and the DROP
// rules in the chain (the only record left of real bans) are kept as bans.
func TestCorruptStateMovedAside(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bad := []byte(`{"version":2,"bans":[{"prefix":"203.0.113.7/32","since":`)
	if err := os.WriteFile(e.path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	// UnbanOffline only reports it.
	if _, err := UnbanOffline(ctx, e.path, e.fw, attack); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("UnbanOffline on a corrupt file = %v, want ErrCorrupt", err)
	}
	if got, _ := os.ReadFile(e.path); string(got) != string(bad) {
		t.Fatal("UnbanOffline changed the corrupt file")
	}
	e.fw.put(other, "astguard: left by the run before") // a real ban's rule
	o := e.opts()
	o.RecoverFor = 3 * time.Hour
	m := e.start(o)

	aside := e.path + ".corrupt-20260301T120000Z"
	if got, err := os.ReadFile(aside); err != nil || string(got) != string(bad) {
		t.Fatalf("corrupt file not kept at %s: %q, %v", aside, got, err)
	}
	lines := e.log.lines("corrupt bans state file moved aside: the guard goes on without its bans and writes a new one; the old one is kept for you to read")
	if len(lines) != 1 || lines[0]["level"] != "error" || lines[0]["state"] != e.path || lines[0]["moved_to"] != aside {
		t.Fatalf("no error line naming both paths: %v", lines)
	}
	want := Ban{Prefix: netip.PrefixFrom(other, 32), Since: t0, Until: t0.Add(3 * time.Hour), Reason: recoveredReason, Origin: OriginAstguard}
	if got := m.List(); len(got) != 1 || got[0] != want {
		t.Fatalf("List = %+v, want the rule kept as %+v", got, want)
	}
	if got := mustState(t, e.path); len(got) != 1 || got[0].Prefix != want.Prefix || got[0].DryRun {
		t.Fatalf("new state file = %+v", got)
	}
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{other}) {
		t.Fatalf("firewall = %v: the rule of a real ban was lost", got)
	}
	if _, err := ban(m, attack, time.Hour, "x", ""); err != nil {
		t.Fatalf("Ban after a corrupt state: %v", err)
	}
	if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{attack, other}) {
		t.Fatalf("state = %v", got)
	}
}

// When the chain cannot be read at start, the rules are kept as bans at
// the first sync that can read it, not removed as strays.
func TestCorruptStateRulesKeptWhenChainReadableLater(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustWrite(t, e.path, []byte(`{"version":2,"bans":[`), 0o600)
	e.fw.put(other, "astguard: left by the run before")
	e.fw.blockedErr = errors.New("xtables lock")
	m := e.start(e.opts())
	if len(m.List()) != 0 {
		t.Fatalf("List = %v before the chain could be read", m.List())
	}
	e.fw.set(func(f *fakeFW) { f.blockedErr = nil })
	if !m.sync(ctx) {
		t.Fatal("sync failed")
	}
	if got := addrsOf(m.List()); !slices.Equal(got, []netip.Addr{other}) {
		t.Fatalf("List = %v, want the chain's rule kept as a ban", got)
	}
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{other}) {
		t.Fatalf("firewall = %v: the rule of a real ban was removed", got)
	}
}

// What counts as corrupt: anything but a well-formed version 1 or 2
// document.
func TestReadStateRejectsCorrupt(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "bans.json")
	for _, s := range []string{
		``,
		`{"version":3,"bans":[]}`,
		`{"version":"2","bans":[]}`,
		`{"version":2}`,
		`{"version":2,"bans":{}}`,
		`{"version":2,"bans":[{"prefix":7,"since":"2026-03-01T12:00:00Z","reason":"","dry_run":false,"origin":"astguard"}]}`,
		`{"version":2,"bans":[{"prefix":"203.0.113.7/24","since":"2026-03-01T12:00:00Z","reason":"","dry_run":false,"origin":"astguard"}]}`,
		`{"version":2,"bans":[{"prefix":"203.0.113.7/32","since":"2026-03-01T12:00:00Z","reason":"","dry_run":false}]}`,
		`{"version":2,"bans":[{"prefix":"203.0.113.7/32","reason":"","dry_run":false,"origin":"astguard"}]}`,
		`{"version":2,"bans":[{"prefix":"203.0.113.7/32","since":"2026-03-01T12:00:00Z","reason":"","dry_run":"no","origin":"astguard"}]}`,
		`{"version":2,"bans":[{"addr":"203.0.113.7","since":"2026-03-01T12:00:00Z","reason":""}]}`,
		`{"version":1,"bans":[{"addr":""}]}`,
		`{"version":1,"bans":[],"x":1}`,
		`{"version":1,"bans":[]} {}`,
	} {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadState(path); !errors.Is(err, ErrCorrupt) {
			t.Errorf("ReadState(%q) = %v, want ErrCorrupt", s, err)
		}
	}
	ok := `{"version":2,"bans":[{"prefix":"2001:db8::/64","since":"2026-03-01T12:00:00Z","reason":"r","dry_run":true,"origin":"crowdsec","incident":"i-1"}]}`
	if err := os.WriteFile(path, []byte(ok), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := ReadState(path)
	want := Ban{Prefix: netip.MustParsePrefix("2001:db8::/64"), Since: t0, Reason: "r", DryRun: true, Origin: "crowdsec", Incident: "i-1"}
	if err != nil || st.Version != 2 || len(st.Bans) != 1 || st.Bans[0] != want || !st.Bans[0].Permanent() {
		t.Fatalf("ReadState(%s) = %+v, %v", ok, st, err)
	}
}

// A state file or lock file that is not a private regular file is refused
// loudly and stops Start: the guard cannot know its bans and must not act
// on a file someone else controls. What the symlink points to is never
// read, written or moved.
func TestUnsafeStateRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	content := []byte(`{"version":2,"bans":[]}`)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"symlinked state file", func(t *testing.T, path string) {
			mustWrite(t, target, content, 0o600)
			mustSymlink(t, target, path)
		}},
		{"symlinked lock file", func(t *testing.T, path string) {
			mustWrite(t, target, content, 0o600)
			mustSymlink(t, target, path+".lock")
		}},
		{"state file readable by others", func(t *testing.T, path string) {
			mustWrite(t, path, content, 0o644)
		}},
		{"state file of another user", func(t *testing.T, path string) {
			testenv.RequireRoot(t, "give the file to another user")
			mustWrite(t, path, content, 0o600)
			if err := os.Chown(path, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}},
		{"state file is a directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_ = os.Remove(target)
			e := newEnv(t)
			tc.setup(t, e.path)
			before, _ := os.Lstat(e.path)
			m, err := New(e.opts())
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Start(ctx); !errors.Is(err, fsafe.ErrUnsafe) {
				t.Fatalf("Start = %v, want an error wrapping fsafe.ErrUnsafe", err)
			}
			if e.fw.setups != 0 || len(e.fw.calls) != 0 {
				t.Fatalf("firewall touched: %v", e.fw.calls)
			}
			if _, err := ban(m, attack, time.Hour, "x", ""); !errors.Is(err, ErrNotStarted) {
				t.Fatalf("Ban after refused Start = %v", err)
			}
			if _, err := UnbanOffline(ctx, e.path, e.fw, attack); !errors.Is(err, fsafe.ErrUnsafe) {
				t.Fatalf("UnbanOffline = %v, want an error wrapping fsafe.ErrUnsafe", err)
			}
			if after, _ := os.Lstat(e.path); before != nil && (after == nil || after.Mode() != before.Mode() || !after.ModTime().Equal(before.ModTime())) {
				t.Fatal("the refused path was changed")
			}
			if got, err := os.ReadFile(target); err == nil && string(got) != string(content) {
				t.Fatalf("the symlink's target was changed: %q", got)
			}
			if fi, err := os.Stat(target); err == nil && fi.Mode().Perm() != 0o600 {
				t.Fatalf("the symlink's target mode changed to %v", fi.Mode().Perm())
			}
			if matches, _ := filepath.Glob(e.path + ".corrupt-*"); len(matches) != 0 {
				t.Fatalf("an unsafe file was moved aside as corrupt: %v", matches)
			}
		})
	}
}

// A missing state directory is created private (0700), the state and lock
// files in it 0600.
func TestStateDirectoryCreatedPrivate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "var", "lib", "astguard")
	e.path = filepath.Join(dir, "bans.json")
	m := e.start(e.opts())
	if _, err := ban(m, attack, time.Hour, "x", ""); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(ctx); err != nil { // writes the state file
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: os.ModeDir | 0o700, e.path: 0o600, JournalName(e.path): 0o600, e.path + ".lock": 0o600} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
		} else if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}
}

func mustWrite(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func TestAtomicWrite(t *testing.T) {
	e := newEnv(t)
	m := e.start(e.opts())

	// A reader racing with writers always sees a complete document.
	stop := make(chan struct{})
	readerDone := make(chan error)
	go func() {
		reads := 0
		for {
			select {
			case <-stop:
				if reads == 0 {
					readerDone <- errors.New("reader never ran")
				}
				readerDone <- nil
				return
			default:
			}
			if _, err := ReadState(e.path); err != nil {
				readerDone <- err
				return
			}
			reads++
		}
	}()
	for i := range 200 {
		a := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
		if i == 0 {
			a = netip.MustParseAddr("203.0.113.200")
		}
		if _, err := ban(m, a, time.Hour, "x", ""); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	if err := <-readerDone; err != nil {
		t.Fatalf("reader saw a partial file: %v", err)
	}
	mustMode0600(t, JournalName(e.path))

	// A write that fails leaves the state file and its journal whole and
	// no temporary file behind; the ban is still applied and kept.
	before, _ := os.ReadFile(e.path)
	beforeJournal, _ := os.ReadFile(JournalName(e.path))
	setRenameHook(func(tmp string) error { return errors.New("disk full") })
	_, err := ban(m, other, time.Hour, "x", "")
	setRenameHook(nil)
	if err == nil || !strings.Contains(err.Error(), "applied but not saved yet") {
		t.Fatalf("Ban with failing write = %v", err)
	}
	after, _ := os.ReadFile(e.path)
	afterJournal, _ := os.ReadFile(JournalName(e.path))
	if string(after) != string(before) || string(afterJournal) != string(beforeJournal) {
		t.Fatal("failed write changed the state file or its journal")
	}
	ents, _ := os.ReadDir(filepath.Dir(e.path))
	for _, en := range ents {
		if strings.Contains(en.Name(), ".tmp-") {
			t.Fatalf("temporary file left behind: %s", en.Name())
		}
	}
	if !slices.Contains(e.fw.addrs(), other) {
		t.Fatal("ban not applied when the state write failed")
	}
	// Close retries the pending write.
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(addrsOf(mustState(t, e.path)), other) {
		t.Fatal("pending ban not saved at Close")
	}
}

func TestUnbanOffline(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	ban(m, attack, time.Hour, "x", "")
	ban(m, other, time.Hour, "y", "")
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := UnbanOffline(ctx, e.path, e.fw, netip.AddrFrom16(attack.As16())); err != nil {
		t.Fatal(err)
	}
	if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{other}) {
		t.Fatalf("state = %v", got)
	}
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{other}) {
		t.Fatalf("firewall = %v", got)
	}
	fi, _ := os.Stat(e.path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v", fi.Mode().Perm())
	}
	if _, err := UnbanOffline(ctx, e.path, e.fw, attack); !errors.Is(err, ErrNotBanned) {
		t.Fatalf("second UnbanOffline = %v, want ErrNotBanned", err)
	}
	if _, err := UnbanOffline(ctx, filepath.Join(t.TempDir(), "none.json"), e.fw, attack); !errors.Is(err, ErrNotBanned) {
		t.Fatalf("UnbanOffline without state file = %v", err)
	}
}

func TestSetNeverLiftsBans(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	ban(m, attack, time.Hour, "x", "")
	ban(m, other, time.Hour, "y", "")
	m.SetNever([]netip.Prefix{netip.MustParsePrefix("::ffff:203.0.113.7/128"), {}})
	if got := addrsOf(m.List()); !slices.Equal(got, []netip.Addr{other}) {
		t.Fatalf("List = %v", got)
	}
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{other}) {
		t.Fatalf("firewall = %v: a protected address stayed blocked", got)
	}
	if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{other}) {
		t.Fatalf("state = %v", got)
	}
	if e.log.count("ban lifted: address is now protected") != 1 {
		t.Fatalf("lift not logged: %s", e.log)
	}
	if _, err := ban(m, attack, time.Hour, "x", ""); !errors.Is(err, ErrProtected) {
		t.Fatalf("Ban after SetNever = %v", err)
	}
}

func TestStartLiftsBansOfNowProtected(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	ban(m, attack, time.Hour, "x", "")
	m.Close(ctx)
	o := e.opts()
	o.Never = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	m = e.start(o)
	if len(m.List()) != 0 || len(e.fw.addrs()) != 0 || len(mustState(t, e.path)) != 0 {
		t.Fatal("ban of a protected address survived Start")
	}
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	runCtx, cancel := context.WithCancel(ctx)
	runDone := make(chan error)
	go func() { runDone <- m.Run(runCtx) }()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				a := netip.AddrFrom4([4]byte{198, 18, byte(g), byte(i)})
				if _, err := ban(m, a, time.Hour, "x", ""); err != nil {
					t.Error(err)
				}
				_ = m.List()
				if i%3 == 0 {
					if err := m.Unban(ctx, a); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	want := addrsOf(m.List())
	if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, want) {
		t.Fatalf("state and memory differ: %d vs %d", len(got), len(want))
	}
	if got := e.fw.addrs(); !slices.Equal(got, want) {
		t.Fatalf("firewall and memory differ: %d vs %d", len(got), len(want))
	}
	if len(want) != 8*16 {
		t.Fatalf("%d bans, want %d", len(want), 8*16)
	}
}

// --- Run, in a synctest bubble: time.Now and timers are fake. ---

func synctestEnv(t *testing.T) (*env, Options) {
	e := newEnv(t)
	o := e.opts()
	o.Clock = nil // time.Now, fake inside the bubble
	o.ReapplyEvery = 30 * time.Second
	return e, o
}

func runInBackground(t *testing.T, m *Manager) (stop func()) {
	c, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- m.Run(c) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}
}

func TestRunExpiresOnTime(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		e, o := synctestEnv(t)
		m := e.start(o)
		stop := runInBackground(t, m)
		defer stop()

		start := time.Now()
		ban(m, attack, 10*time.Minute, "x", "")
		ban(m, other, 20*time.Minute, "y", "")
		ban(m, third, 0, "permanent", "")

		time.Sleep(10*time.Minute - time.Nanosecond)
		synctest.Wait()
		if len(m.List()) != 3 {
			t.Fatal("ban expired early")
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if got := addrsOf(m.List()); !slices.Equal(got, []netip.Addr{other, third}) {
			t.Fatalf("at Until: List = %v", got)
		}
		if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{other, third}) {
			t.Fatalf("at Until: firewall = %v", got)
		}
		if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{other, third}) {
			t.Fatalf("at Until: state = %v", got)
		}
		if time.Since(start) != 10*time.Minute {
			t.Fatalf("expired after %v", time.Since(start))
		}

		// A re-ban extends; the timer follows the new Until.
		ban(m, other, 30*time.Minute, "again", "")
		time.Sleep(20 * time.Minute)
		synctest.Wait()
		if !slices.Contains(addrsOf(m.List()), other) {
			t.Fatal("extended ban expired at its old Until")
		}
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if got := addrsOf(m.List()); !slices.Equal(got, []netip.Addr{third}) {
			t.Fatalf("List = %v", got)
		}
		if n := e.log.count("ban expired"); n != 2 {
			t.Fatalf("%d expiry lines, want 2", n)
		}
	})
}

func TestRunReappliesAfterFlush(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		e, o := synctestEnv(t)
		m := e.start(o)
		stop := runInBackground(t, m)
		defer stop()

		ban(m, attack, time.Hour, "x", "")
		ban(m, third, time.Hour, "y", "")
		e.fw.flush() // iptables -F ASTGUARD
		e.fw.put(other, "stray")

		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{attack, third}) {
			t.Fatalf("firewall after re-apply = %v", got)
		}
		if n := e.log.count("firewall rules missing, re-applied"); n != 1 {
			t.Fatalf("%d re-apply lines, want 1", n)
		}
		if n := e.log.count("firewall rules without a ban, removed"); n != 1 {
			t.Fatalf("%d stray lines, want 1", n)
		}
		// Nothing changed: nothing logged.
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		if n := e.log.count("firewall rules missing, re-applied"); n != 1 {
			t.Fatalf("%d re-apply lines after quiet period, want 1", n)
		}
		// Flushed again: a new change, logged again.
		e.fw.flush()
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if n := e.log.count("firewall rules missing, re-applied"); n != 2 {
			t.Fatalf("%d re-apply lines, want 2", n)
		}
	})
}

func TestRunRetriesFailedApplyWithBackoffAndLogsOnce(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		e, o := synctestEnv(t)
		m := e.start(o)
		stop := runInBackground(t, m)
		defer stop()

		lock := &firewall.Error{Op: "block", Step: "append", Err: errors.New("xtables lock")}
		e.fw.set(func(f *fakeFW) { f.blockErr = lock })
		if _, err := ban(m, attack, time.Hour, "x", ""); err == nil {
			t.Fatal("Ban succeeded with a failing firewall")
		}
		// Retries at 1s, 2s, 4s, 8s, 16s, 30s, 30s... all fail: one log line.
		time.Sleep(3 * time.Minute)
		synctest.Wait()
		if n := e.log.count("firewall out of step with bans, retrying"); n != 1 {
			t.Fatalf("%d problem lines, want 1", n)
		}
		blocks := e.fw.countCalls("block")
		if blocks < 8 || blocks > 12 {
			t.Fatalf("%d Block calls in 3 minutes, want backoff (about 10)", blocks)
		}
		// The firewall recovers: the next retry applies the ban.
		e.fw.set(func(f *fakeFW) { f.blockErr = nil })
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{attack}) {
			t.Fatalf("firewall = %v", got)
		}
		if n := e.log.count("firewall in step with bans again"); n != 1 {
			t.Fatalf("%d recovery lines, want 1", n)
		}
		// Recovered quickly after a failed Ban: within the first second.
		e.fw.set(func(f *fakeFW) { f.blockErr = lock })
		ban(m, other, time.Hour, "y", "")
		e.fw.set(func(f *fakeFW) { f.blockErr = nil })
		time.Sleep(time.Second)
		synctest.Wait()
		if !slices.Contains(e.fw.addrs(), other) {
			t.Fatal("failed ban not re-applied within 1s")
		}
	})
}

func TestRunRetriesStateWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, o := synctestEnv(t)
		m := e.start(o)
		stop := runInBackground(t, m)
		defer stop()
		setRenameHook(func(string) error { return errors.New("disk full") })
		_, err := ban(m, attack, time.Hour, "x", "")
		setRenameHook(nil)
		if err == nil {
			t.Fatal("write failure not reported")
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{attack}) {
			t.Fatalf("state after retry = %v", got)
		}
	})
}

func TestCloseStopsRun(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		e, o := synctestEnv(t)
		m := e.start(o)
		done := make(chan error)
		go func() { done <- m.Run(ctx) }()
		synctest.Wait()
		if err := m.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// setRenameHook makes every write of the state fail with what fn returns
// (nil: none): the state file's before its rename, the journal's before
// its append.
func setRenameHook(fn func(tmp string) error) {
	if fn == nil {
		testHookBeforeRename.Store(nil)
		testHookBeforeAppend.Store(nil)
		return
	}
	appendHook := func() error { return fn("") }
	testHookBeforeRename.Store(&fn)
	testHookBeforeAppend.Store(&appendHook)
}

func TestStartMergesDuplicateAddresses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	doc := `{"version":1,"bans":[
  {"addr":"::ffff:203.0.113.7","since":"2026-03-01T11:00:00Z","until":"0001-01-01T00:00:00Z","reason":"permanent"},
  {"addr":"203.0.113.7","since":"2026-03-01T11:30:00Z","until":"2026-03-01T13:00:00Z","reason":"timed"}
]}`
	if err := os.WriteFile(e.path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	m := e.start(e.opts())
	got := m.List()
	if len(got) != 1 || got[0].Prefix.Addr() != attack || !got[0].Permanent() {
		t.Fatalf("List = %+v, want one permanent ban of %s", got, attack)
	}
}
