package bans

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// A ban from a CrowdSec decision is recorded with its origin; its
// decision's deletion (UnbanOrigin) lifts it, and never a ban this guard
// decided itself, which also stays its own when a decision bans the same
// address, and takes over a decision's ban when the guard bans it.
func TestOrigins(t *testing.T) {
	e := newEnv(t)
	m := e.start(e.opts())

	// A decision's ban, then its deletion.
	b, err := m.Ban(ctx, Request{Addr: attack, TTL: time.Hour, Reason: "CrowdSec decision 1", Origin: OriginCrowdSec})
	if err != nil || b.Origin != OriginCrowdSec {
		t.Fatalf("decision's ban %+v, %v", b, err)
	}
	if got := mustState(t, e.path); len(got) != 1 || got[0].Origin != OriginCrowdSec {
		t.Fatalf("state %+v, want the ban with origin crowdsec", got)
	}
	if err := m.UnbanOrigin(ctx, single(attack), OriginAstguard); !errors.Is(err, ErrNotBanned) {
		t.Errorf("UnbanOrigin of another origin: %v, want ErrNotBanned", err)
	}
	if err := m.UnbanOrigin(ctx, single(attack), OriginCrowdSec); err != nil {
		t.Fatal(err)
	}
	if len(m.List()) != 0 || slices.Contains(e.fw.addrs(), attack) {
		t.Errorf("after UnbanOrigin: bans %+v, rule %v", m.List(), slices.Contains(e.fw.addrs(), attack))
	}

	// The guard's own ban stays its own under a decision for it: only
	// its Until may grow, and the deletion does not lift it.
	own, err := m.Ban(ctx, Request{Addr: other, TTL: time.Hour, Reason: "auth_failures critical", Rule: "auth_failures"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Ban(ctx, Request{Addr: other, TTL: 2 * time.Hour, Reason: "CrowdSec decision 2", Origin: OriginCrowdSec})
	if err != nil || got.Origin != OriginAstguard || got.Reason != own.Reason || got.Rule != "auth_failures" || !got.Until.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("own ban after a decision for it: %+v, %v; want it own, extended", got, err)
	}
	if err := m.UnbanOrigin(ctx, single(other), OriginCrowdSec); !errors.Is(err, ErrNotBanned) {
		t.Errorf("UnbanOrigin(crowdsec) of an own ban: %v, want ErrNotBanned", err)
	}
	if !slices.Contains(e.fw.addrs(), other) {
		t.Error("the own ban's rule went")
	}

	// The guard banning what a decision banned makes the ban its own.
	if _, err := m.Ban(ctx, Request{Addr: attack, TTL: time.Hour, Reason: "CrowdSec decision 3", Origin: OriginCrowdSec}); err != nil {
		t.Fatal(err)
	}
	got, err = m.Ban(ctx, Request{Addr: attack, TTL: time.Hour, Reason: "failed_probes critical", Rule: "failed_probes"})
	if err != nil || got.Origin != OriginAstguard || got.Reason != "failed_probes critical" {
		t.Errorf("decision's ban after the guard's own: %+v, %v", got, err)
	}
}

// A range (a CrowdSec Range decision) is banned and applied as the range;
// a range that holds a protected address is refused; the decision's
// deletion lifts it from the firewall too.
func TestBanPrefix(t *testing.T) {
	e := newEnv(t)
	o := e.opts()
	o.Never = []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32")}
	m := e.start(o)
	p := netip.MustParsePrefix("198.51.100.77/24")
	b, err := m.Ban(ctx, Request{Prefix: p, TTL: time.Hour, Reason: "range", Origin: OriginCrowdSec})
	if err != nil || b.Prefix != p.Masked() || b.Target() != "198.51.100.0/24" {
		t.Fatalf("range ban %+v, %v", b, err)
	}
	if got := e.fw.prefixes(); !slices.Equal(got, []netip.Prefix{p.Masked()}) {
		t.Errorf("the firewall drops %v, want the range %v", got, p.Masked())
	}
	if _, err := m.Ban(ctx, Request{Prefix: netip.MustParsePrefix("192.0.2.0/24"), TTL: time.Hour, Origin: OriginCrowdSec}); !errors.Is(err, ErrProtected) {
		t.Errorf("a range holding a protected address: %v, want ErrProtected", err)
	}
	if err := m.UnbanOrigin(ctx, p, OriginCrowdSec); err != nil || len(m.List()) != 0 {
		t.Errorf("UnbanOrigin of the range: %v, bans %+v", err, m.List())
	}
	if got := e.fw.prefixes(); len(got) != 0 {
		t.Errorf("the firewall still drops %v after the decision's deletion", got)
	}
}
