package bans

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// A ban recorded through a dry-run firewall is a dry-run ban: the dry run
// logs it, and a real firewall started later over the same state file
// never applies it, though it is kept, listed and expires on time.
func TestDryRunBansNeverAppliedByRealFirewall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dry := newFakeFW()
	dry.dryRun = true
	o := e.opts()
	o.Firewall = dry
	m := e.start(o)
	b, err := ban(m, attack, 24*time.Hour, "auth_failures critical: 5 failed authentications in 1m", "")
	if err != nil {
		t.Fatal(err)
	}
	if !b.DryRun || m.Real() {
		t.Fatalf("ban through a dry-run firewall = %+v, Real %v; want a dry-run ban", b, m.Real())
	}
	if got := dry.addrs(); !slices.Equal(got, []netip.Addr{attack}) {
		t.Fatalf("dry-run firewall = %v: it should log the ban", got)
	}
	if st := mustState(t, e.path); len(st) != 1 || !st[0].DryRun {
		t.Fatalf("state = %+v, want the ban marked dry_run", st)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// The trial is over: the guard now runs with the real firewall.
	m = e.start(e.opts())
	if got := e.fw.addrs(); len(got) != 0 {
		t.Fatalf("real firewall = %v: a dry-run ban became real", got)
	}
	if n := e.fw.countCalls("block"); n != 0 {
		t.Fatalf("Block called %d times for a dry-run ban", n)
	}
	if got := m.List(); len(got) != 1 || !got[0].DryRun {
		t.Fatalf("List = %+v, want the dry-run ban kept", got)
	}
	// Its re-apply check leaves it out too.
	if !m.sync(ctx) || len(e.fw.addrs()) != 0 {
		t.Fatalf("sync applied a dry-run ban: %v", e.fw.addrs())
	}
	// A real attack from the same address now gets a real ban.
	e.clock.Add(time.Hour)
	b, err = ban(m, attack, time.Hour, "call_rate critical", "SIP/200")
	if err != nil {
		t.Fatal(err)
	}
	if b.DryRun || !b.Since.Equal(t0.Add(time.Hour)) || !b.Until.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("real ban over a dry-run one = %+v, want a new real ban", b)
	}
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{attack}) {
		t.Fatalf("real firewall = %v", got)
	}
}

// A dry run never changes a real ban: not its end, not its kind.
func TestDryRunLeavesRealBanAlone(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	real, err := ban(m, attack, time.Hour, "real", "")
	if err != nil {
		t.Fatal(err)
	}
	m.Close(ctx)
	dry := newFakeFW()
	dry.dryRun = true
	o := e.opts()
	o.Firewall = dry
	m = e.start(o)
	b, err := ban(m, attack, 48*time.Hour, "trial", "")
	if err != nil || b != real {
		t.Fatalf("dry-run Ban over a real ban = %+v, %v; want the real ban unchanged %+v", b, err, real)
	}
	if st := mustState(t, e.path); len(st) != 1 || st[0].DryRun || !st[0].Until.Equal(real.Until) {
		t.Fatalf("state = %+v", st)
	}
	if n := dry.countCalls("block"); n != 0 {
		t.Fatalf("the dry-run firewall was handed a real ban %d times", n)
	}
}

// Observe mode changes nothing: no firewall call, no state written, no ban
// taken; the state is read and listed. Enforce then sets the firewall up,
// applies the real bans, and writes what changed.
func TestObserveChangesNothingUntilEnforce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	doc := `{"version":2,"bans":[
  {"prefix":"203.0.113.7/32","since":"2026-03-01T11:00:00Z","until":"2026-03-01T14:00:00Z","reason":"real","dry_run":false,"origin":"astguard"},
  {"prefix":"203.0.113.8/32","since":"2026-03-01T11:00:00Z","until":"2026-03-01T14:00:00Z","reason":"trial","dry_run":true,"origin":"astguard"},
  {"prefix":"2001:db8::9/128","since":"2026-03-01T10:00:00Z","until":"2026-03-01T11:00:00Z","reason":"over","dry_run":false,"origin":"astguard"}
]}`
	mustWrite(t, e.path, []byte(doc), 0o600)
	before, _ := os.Stat(e.path)
	o := e.opts()
	o.Observe = true
	o.Never = []netip.Prefix{netip.MustParsePrefix("203.0.113.8/32")}
	m := e.start(o)

	if got := addrsOf(m.List()); !slices.Equal(got, []netip.Addr{attack, other}) {
		t.Fatalf("List in observe mode = %v, want the live bans", got)
	}
	if _, err := ban(m, third, time.Hour, "x", ""); !errors.Is(err, ErrObserving) {
		t.Fatalf("Ban in observe mode = %v, want ErrObserving", err)
	}
	m.SetNever([]netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")})
	if !m.sync(ctx) {
		t.Fatal("sync in observe mode reported a problem")
	}
	m.expire(ctx)
	if len(e.fw.calls) != 0 {
		t.Fatalf("observe mode called the firewall: %v", e.fw.calls)
	}
	if after, _ := os.Stat(e.path); !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Fatal("observe mode wrote the state file")
	}
	if _, err := os.Stat(JournalName(e.path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("observe mode wrote a journal: %v", err)
	}
	if got := e.log.lines("address is protected but its ban stays: observe mode lifts nothing; it is lifted when the guard enforces, or now with guard unblock"); len(got) != 1 {
		t.Fatalf("%d warnings that a protected address stays banned, want 1", len(got))
	}

	m.SetNever(nil)
	if err := m.Enforce(ctx); err != nil {
		t.Fatal(err)
	}
	if e.fw.setups != 1 {
		t.Fatalf("Enforce: %d Setups, want 1", e.fw.setups)
	}
	if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{attack}) {
		t.Fatalf("firewall after Enforce = %v, want the real ban only", got)
	}
	if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{attack, other}) {
		t.Fatalf("state after Enforce = %v, want the expired ban gone", got)
	}
	if _, err := ban(m, third, time.Hour, "x", ""); err != nil {
		t.Fatalf("Ban after Enforce: %v", err)
	}
}

// From enforce to observe, the applied bans stay, even past their end:
// observe mode lifts nothing. Back to enforce, the expired ones go.
func TestObserveKeepsAppliedBans(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		e, o := synctestEnv(t)
		m := e.start(o)
		stop := runInBackground(t, m)
		defer stop()
		if _, err := ban(m, attack, 10*time.Minute, "x", ""); err != nil {
			t.Fatal(err)
		}
		m.Observe()
		if len(e.log.lines("observe mode: the bans already applied stay in the firewall; nothing is applied, re-applied, expired or lifted until the guard enforces again (guard unblock still lifts a ban)")) != 1 {
			t.Fatal("no log line saying the applied bans stay")
		}
		e.fw.put(other, "stray")
		calls := e.fw.countCalls("")
		time.Sleep(time.Hour) // the bubble's fake clock: an hour passes at once
		synctest.Wait()
		if got := e.fw.addrs(); !slices.Equal(got, []netip.Addr{attack, other}) {
			t.Fatalf("firewall in observe mode = %v: something was lifted", got)
		}
		if n := e.fw.countCalls(""); n != calls {
			t.Fatalf("observe mode called the firewall %d times", n-calls)
		}
		if got := addrsOf(mustState(t, e.path)); !slices.Equal(got, []netip.Addr{attack}) {
			t.Fatalf("state in observe mode = %v", got)
		}
		if err := m.Enforce(ctx); err != nil {
			t.Fatal(err)
		}
		if got := e.fw.addrs(); len(got) != 0 {
			t.Fatalf("firewall after Enforce = %v, want the expired ban and the stray rule gone", got)
		}
		if got := mustState(t, e.path); len(got) != 0 {
			t.Fatalf("state after Enforce = %v", got)
		}
	})
}

// Unban is the administrator's request: it works in observe mode too.
func TestUnbanInObserveMode(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	ban(m, attack, time.Hour, "x", "")
	m.Observe()
	if err := m.Unban(ctx, attack); err != nil {
		t.Fatal(err)
	}
	if len(e.fw.addrs()) != 0 || len(mustState(t, e.path)) != 0 {
		t.Fatal("Unban in observe mode left the ban")
	}
}
