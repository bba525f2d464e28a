package firewall

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/rs/zerolog"
)

// A firewall that cannot be built (iptables missing) fails each use with an
// init error, and is built at the first use after that works.
func TestLazyBuildsOnUseUntilItWorks(t *testing.T) {
	ctx := context.Background()
	builds := 0
	missing := true
	l := NewLazy(func() (Firewall, error) {
		builds++
		if missing {
			return nil, ErrNotInstalled
		}
		return NewDryRun(zerolog.Nop()), nil
	}, true)
	if builds != 0 {
		t.Fatalf("built at NewLazy: %d", builds)
	}
	if !l.Real() {
		t.Fatal("Real before the build: want what the configuration says (true)")
	}
	if err := l.Teardown(ctx); err != nil || builds != 0 {
		t.Fatalf("Teardown of a firewall never built: err %v, builds %d", err, builds)
	}
	addr := netip.MustParseAddr("192.0.2.7")
	err := l.Block(ctx, entry(addr, "test"))
	var fe *Error
	if !errors.As(err, &fe) || fe.Op != "init" || !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Block without iptables: %v, want an init *Error wrapping ErrNotInstalled", err)
	}
	missing = false
	if err := l.Block(ctx, entry(addr, "test")); err != nil {
		t.Fatalf("Block once it can be built: %v", err)
	}
	if _, err := l.Blocked(ctx); err != nil {
		t.Fatal(err)
	}
	if builds != 2 {
		t.Fatalf("builds = %d, want 2 (one failed, one kept)", builds)
	}
	if l.Real() {
		t.Fatal("Real after the build: want the built firewall's answer (a dry run: false)")
	}
}
