package bans

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// A version 1 state file, as a guard before version 2 wrote it: after a
// dry-run trial, or after real bans. The same JSON either way.
const v1Doc = `{
  "version": 1,
  "bans": [
    {"addr": "203.0.113.7", "since": "2026-03-01T11:00:00Z", "until": "2026-03-02T11:00:00Z", "reason": "auth_failures critical: 5 failed authentications in 1m"},
    {"addr": "203.0.113.8", "since": "2026-03-01T11:30:00Z", "until": "2026-03-02T11:30:00Z", "reason": "call_rate critical: 5 calls started in 1s", "extension": "SIP/200"},
    {"addr": "2001:db8::9", "since": "2026-03-01T11:40:00Z", "until": "0001-01-01T00:00:00Z", "reason": "permanent"},
    {"addr": "198.51.100.1", "since": "2026-02-01T11:00:00Z", "until": "2026-02-02T11:00:00Z", "reason": "long over"}
  ]
}`

// A version 1 ban is real only when the guard's chain holds its rule:
// proof a real firewall applied it. The others are kept as dry-run bans and
// never applied; the file is rewritten as version 2, nothing lost.
func TestV1MigrationRealOnlyWithRuleInChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustWrite(t, e.path, []byte(v1Doc), 0o600)
	e.fw.put(attack, "astguard: auth_failures critical: 5 failed authentications in 1m")
	m := e.start(e.opts())

	kinds := map[netip.Addr]bool{}
	for _, b := range m.List() {
		kinds[b.Prefix.Addr()] = b.DryRun
		if b.Origin != OriginAstguard {
			t.Errorf("migrated ban %s has origin %q", b.Target(), b.Origin)
		}
	}
	if want := map[netip.Addr]bool{attack: false, other: true, third: true}; !mapsEqual(kinds, want) {
		t.Fatalf("dry_run after migration = %v, want %v", kinds, want)
	}
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{attack}) {
		t.Fatalf("firewall = %v, want only the proven ban", got)
	}
	if n := e.fw.countCalls("block"); n != 0 {
		t.Fatalf("Block called %d times: the proven ban's rule was there, the others must not be applied", n)
	}
	st := mustState(t, e.path) // version 2 now
	if len(st) != 3 {
		t.Fatalf("state after migration = %+v, want the 3 live bans", st)
	}
	for _, b := range st {
		if b.Prefix.Addr() == other && (b.Extension != "SIP/200" || !b.Until.Equal(time.Date(2026, 3, 2, 11, 30, 0, 0, time.UTC)) || !b.DryRun) {
			t.Errorf("migrated ban lost details: %+v", b)
		}
		if b.Prefix.Addr() == third && !b.Permanent() {
			t.Errorf("permanent ban became timed: %+v", b)
		}
	}
	lines := e.log.lines("version 1 bans state migrated: version 1 did not record whether a ban was real; a ban counts as real only when the guard's chain holds its DROP rule, the others are kept as dry-run bans and never applied")
	if len(lines) != 1 || lines[0]["level"] != "warn" || lines[0]["real"] != 1.0 || lines[0]["dry_run"] != 3.0 {
		t.Fatalf("migration line = %v, want one warning with the counts", lines)
	}
}

func mapsEqual(a, b map[netip.Addr]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Through a dry-run firewall nothing proves a version 1 ban real.
func TestV1MigrationWithDryRunFirewall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustWrite(t, e.path, []byte(v1Doc), 0o600)
	dry := newFakeFW()
	dry.dryRun = true
	dry.put(attack, "remembered by a dry run")
	o := e.opts()
	o.Firewall = dry
	m := e.start(o)
	for _, b := range m.List() {
		if !b.DryRun {
			t.Fatalf("a dry-run firewall proved %s real", b.Target())
		}
	}
}

// Observe mode migrates in memory only: the version 1 file stays as it
// is. When the chain cannot be read, Start fails and changes nothing.
func TestV1MigrationObserveAndUnreadableChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustWrite(t, e.path, []byte(v1Doc), 0o600)
	e.fw.put(attack, "x")
	o := e.opts()
	o.Observe = true
	m := e.start(o)
	if got := m.List(); len(got) != 3 || got[0].DryRun {
		t.Fatalf("List = %+v", got)
	}
	if got, _ := os.ReadFile(e.path); string(got) != v1Doc {
		t.Fatal("observe mode rewrote the version 1 file")
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}

	e.fw.set(func(f *fakeFW) { f.blockedErr = errors.New("xtables lock") })
	m, _ = New(e.opts())
	if err := m.Start(ctx); err == nil || !strings.Contains(err.Error(), "cannot tell which bans of the version 1 state file were applied") {
		t.Fatalf("Start with an unreadable chain = %v", err)
	}
	if got, _ := os.ReadFile(e.path); string(got) != v1Doc {
		t.Fatal("the version 1 file was changed although the migration failed")
	}
	if e.fw.setups != 0 {
		t.Fatal("firewall set up although the migration failed")
	}
}

// guard unblock with no guard running migrates a version 1 file too.
func TestUnbanOfflineMigratesV1(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustWrite(t, e.path, []byte(v1Doc), 0o600)
	e.fw.put(attack, "x")
	if _, err := UnbanOffline(ctx, e.path, e.fw, other); err != nil {
		t.Fatal(err)
	}
	st := mustState(t, e.path)
	if got := addrsOf(st); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("198.51.100.1"), attack, third}) {
		t.Fatalf("state = %v", got)
	}
	for _, b := range st {
		if b.DryRun != (b.Prefix.Addr() != attack) {
			t.Errorf("%s: dry_run %v", b.Target(), b.DryRun)
		}
	}
}
