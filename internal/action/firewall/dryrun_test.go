package firewall

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestDryRun(t *testing.T) {
	var buf bytes.Buffer
	d := NewDryRun(zerolog.New(&buf))
	mustNil(t, "setup", d.Setup(ctx))
	mustNil(t, "block", d.Block(ctx, entry(addr2, "x")))
	mustNil(t, "block mapped", d.Block(ctx, entry(netip.AddrFrom16(addr3.As16()), "y")))
	got, _ := d.Blocked(ctx)
	if !slices.Equal(addrsIn(got), []netip.Addr{addr2, addr3}) {
		t.Fatalf("Blocked = %v", got)
	}
	mustNil(t, "unblock", d.Unblock(ctx, pfx(addr2)))
	got, _ = d.Blocked(ctx)
	if !slices.Equal(addrsIn(got), []netip.Addr{addr3}) {
		t.Fatalf("Blocked = %v", got)
	}
	if err := d.Block(ctx, entry(netip.Addr{}, "x")); err == nil {
		t.Fatal("invalid address accepted")
	}
	mustNil(t, "teardown", d.Teardown(ctx))
	if got, _ := d.Blocked(ctx); len(got) != 0 {
		t.Fatalf("Blocked after teardown = %v", got)
	}
	if !strings.Contains(buf.String(), `"message":"would block address"`) ||
		!strings.Contains(buf.String(), `"component":"firewall"`) {
		t.Fatalf("log: %s", buf.String())
	}
}
